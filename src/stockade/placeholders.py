"""Placeholders: protected or denied paths that do not exist yet are created before launch (so
the command cannot create them) and removed afterwards, so the user's tree is left as it was.

Concurrent runs share placeholders: every run holds a shared lock while it runs, and only a run
that can take the lock exclusively (no other run alive) removes them. A run killed with SIGKILL
leaves its journal behind; the next run to hold the lock alone cleans it up.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from types import TracebackType
from typing import IO

from .errors import StockadeError
from .plan import Placeholder
from .state import state_dir

try:
    import fcntl as _fcntl
except ImportError:  # Windows: `import stockade` must work there; a Plan with placeholders is refused
    _fcntl = None  # type: ignore[assignment]
LOCK_EX = getattr(_fcntl, "LOCK_EX", 0)

CONTENT = {"dir": None, "file": b"", "commondir": b".\n"}


class Placeholders:
    def __init__(self, items: Iterable[Placeholder]) -> None:
        self.items = list(items)
        self.lock_fd: int | None = None

    def __enter__(self) -> Placeholders:
        if not self.items:
            return self
        try:
            self._enter()
        except OSError as exc:
            self.__exit__(None, None, None)
            raise StockadeError(
                f"cannot create the placeholders that protect {exc.filename or 'a protected path'}: "
                f"{exc.strerror}; nothing was run"
            ) from None
        return self

    def _enter(self) -> None:
        if _fcntl is None:
            raise StockadeError(
                "this Plan needs placeholders (missing protected paths created before launch), and "
                "sharing them between runs needs flock(2), which this system lacks; nothing was run"
            )
        base = state_dir()
        self.journal = os.path.join(base, "placeholders.journal")
        self.lock_fd = os.open(os.path.join(base, "placeholders.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        if _try_lock(self.lock_fd, LOCK_EX):
            self._sweep()  # leftovers of a run that was killed
        _fcntl.flock(self.lock_fd, _fcntl.LOCK_SH)
        missing = [item for item in self.items if not os.path.lexists(item.path)]
        if missing:
            with open(self.journal, "a", encoding="utf-8") as journal:
                for item in missing:
                    if not os.path.lexists(item.path):  # the same path may be listed twice
                        _create(item, journal)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.lock_fd is None:
            return
        try:
            if _try_lock(self.lock_fd, LOCK_EX):
                self._sweep()
        finally:
            os.close(self.lock_fd)
            self.lock_fd = None

    def _sweep(self) -> None:
        try:
            with open(self.journal, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            return
        for line in reversed(lines):  # deepest (created last) first
            kind, _, path = line.partition("\t")
            _remove(kind, path)
        os.truncate(self.journal, 0)


def _try_lock(fd: int, how: int) -> bool:
    try:
        _fcntl.flock(fd, how | _fcntl.LOCK_NB)  # type: ignore[union-attr]
        return True
    except BlockingIOError:
        return False


def _create(item: Placeholder, journal: IO[str]) -> None:
    """Create the placeholder (and missing parents), journaling every path before it exists."""
    parent = os.path.dirname(item.path)
    missing = []
    while not os.path.lexists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    if os.path.realpath(parent) != parent:
        # A symlink planted in the tree must not make us create files somewhere else.
        raise OSError(errno.ELOOP, "a parent directory is a symlink", parent)
    steps = [*(("dir", d) for d in reversed(missing)), (item.kind, item.path)]
    journal.write("".join(f"{kind}\t{path}\n" for kind, path in steps))
    journal.flush()
    for kind, path in steps:
        content = CONTENT[kind]
        if content is None:
            os.mkdir(path, 0o755)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, content)
            os.close(fd)


def _remove(kind: str, path: str) -> None:
    """Remove a placeholder only if it is still exactly what stockade created."""
    try:
        if kind == "dir":
            os.rmdir(path)  # fails, and is kept, if anything was put inside
            return
        with open(path, "rb") as fh:
            if fh.read(3) == (CONTENT.get(kind) or b""):
                os.unlink(path)
    except OSError:
        pass
