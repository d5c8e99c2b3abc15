"""Placeholders: protected or denied paths that do not exist yet are created before launch (so
the command cannot create them) and removed afterwards, so the user's tree is left as it was.

Concurrent runs share placeholders: every run holds a shared lock while it runs, and only a run
that can take the lock exclusively (no other run alive) removes them. A run killed with SIGKILL
leaves its journal behind; the next run to hold the lock alone cleans it up. The lock is flock(2)
on POSIX and LockFileEx on Windows (`filelock`). Each run writes a journal of its own: runs
append at the same time, and Windows emulates O_APPEND with a seek and a write, which two
processes can interleave.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import secrets
from collections.abc import Iterable
from types import TracebackType
from typing import IO

from . import filelock
from .errors import StockadeError
from .filelock import FileLock
from .plan import Placeholder
from .state import state_dir

CONTENT = {"dir": None, "file": b"", "commondir": b".\n"}
O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: os.open's default text mode writes ".\r\n"


class Placeholders:
    def __init__(self, items: Iterable[Placeholder]) -> None:
        self.items = list(items)
        self.lock: FileLock | None = None

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
        if filelock.UNSUPPORTED is not None:
            raise StockadeError(
                "this Plan needs placeholders (missing protected paths created before launch), and "
                f"sharing them between runs needs a file lock, but {filelock.UNSUPPORTED}; nothing was run"
            )
        base = state_dir()
        self.base = base
        self.journal = os.path.join(base, f"placeholders.{os.getpid()}-{secrets.token_hex(4)}.journal")
        self.lock = FileLock(os.path.join(base, "placeholders.lock"))
        if self.lock.try_exclusive():
            self._sweep()  # leftovers of a run that was killed
        # Exclusive -> shared is not atomic (Windows unlocks then locks; flock(2) on Linux drops
        # the old lock first as well), so another run may take the lock alone in between and
        # sweep. That is harmless: it sweeps only what the journal lists, and we have journaled
        # and created nothing yet. Everything below happens under the shared lock, which no
        # sweeper can hold at the same time, so our placeholders live until we let go of it.
        self.lock.shared()
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
        if self.lock is None:
            return
        try:
            # Shared -> exclusive lets go of the shared lock first (on Windows, and in flock(2)):
            # our command has ended, so whoever sweeps in between removes nothing still in use.
            if self.lock.try_exclusive():
                self._sweep()
        finally:
            self.lock.close()
            self.lock = None

    def _sweep(self) -> None:
        """Remove what every journal lists (no run is alive: we hold the lock alone), deepest
        first: one run's placeholder may sit in a directory another run created."""
        journals = glob.glob(os.path.join(glob.escape(self.base), "placeholders*.journal"))
        entries: set[tuple[str, str]] = set()
        for journal in journals:
            with contextlib.suppress(OSError), open(journal, encoding="utf-8") as fh:
                for line in fh.read().splitlines():
                    kind, _, path = line.partition("\t")
                    entries.add((kind, path))
        for kind, path in sorted(entries, key=lambda e: (-e[1].count(os.sep), e[1])):
            _remove(kind, path)
        for journal in journals:
            with contextlib.suppress(OSError):
                os.unlink(journal)


def _create(item: Placeholder, journal: IO[str]) -> None:
    """Create the placeholder (and missing parents), journaling every path before it exists."""
    parent = os.path.dirname(item.path)
    missing = []
    while not os.path.lexists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    if os.path.normcase(os.path.realpath(parent)) != os.path.normcase(parent):  # Windows: any case
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
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_BINARY, 0o644)
            os.write(fd, content)
            os.close(fd)


def _remove(kind: str, path: str) -> None:
    """Remove a placeholder only if it is still exactly what stockade created."""
    try:
        if kind == "dir":
            os.rmdir(path)  # fails, and is kept, if anything was put inside
            return
        with open(path, "rb") as fh:
            ours = fh.read(3) == (CONTENT.get(kind) or b"")
        if ours:
            os.unlink(path)  # once closed: Windows cannot delete a file that is open
    except OSError:
        pass
