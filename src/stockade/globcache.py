"""The glob cache on disk, so that a new `stockade run` process starts where the last one ended.

One file per walk base (a workspace root, usually) in stockade's state directory, which every
sandbox hides, so a command cannot plant entries; and every entry is still revalidated by its
directory's stat before use, so a stale file costs a re-read, never a missed match. Losing it
(or failing to write it) only costs time: errors are ignored. The format is marshal, tagged
with the Python version that wrote it.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import sys
import zlib

from . import globs
from .state import find_state_dir

TAG = ("stockade-globs", 3, sys.version_info[:2])
MAX_SAVED_DIRS = 200_000
MAX_FILES = 64  # bases remembered; the least recently used beyond this are removed


class DiskStore:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.loaded: set[str] = set()

    def _file(self, base: str) -> str:
        raw = base.encode("utf-8", "surrogateescape")  # the file records its base: no collision risk
        digest = f"{zlib.crc32(raw):08x}{zlib.adler32(raw):08x}"
        return os.path.join(self.directory, f"globs-{digest}.cache")

    def load(self, base: str) -> None:
        """Merge what was saved for `base` into this process's cache, once per process."""
        if base in self.loaded:
            return
        self.loaded.add(base)
        path = self._file(base)
        try:
            with open(path, "rb") as fh:
                tag, saved_base, patterns, state_sets, entries = marshal.loads(fh.read())  # one read
            os.utime(path)  # recently used: kept when old files are pruned
        except (OSError, ValueError, EOFError, TypeError):
            return
        if tag != TAG or saved_base != base:
            return
        pids = [globs._intern(tuple(parts), limit) for parts, limit in patterns]
        sets = [frozenset((pids[p], i) for p, i in states) for states in state_sets]
        cache = globs._cache
        for directory, (stamp, states, depth, matches, subdirs) in entries.items():
            if directory not in cache:
                cache[directory] = (
                    tuple(stamp),
                    sets[states],
                    depth,
                    [(m, tuple(pids[p] for p in ids)) for m, ids in matches],
                    [(d, sets[s], depth + 1) for d, s in subdirs],
                )

    def save(self, base: str) -> None:
        """Write every cached directory under `base`, atomically (a reader sees old or new)."""
        prefix = base.rstrip(os.sep) + os.sep
        mine = {d: e for d, e in globs._cache.items() if d == base or d.startswith(prefix)}
        if len(mine) > MAX_SAVED_DIRS:
            return
        used: dict[int, int] = {}  # this process's pattern id -> index in the file
        set_index: dict[frozenset[globs.State], int] = {}

        def pid(p: int) -> int:
            return used.setdefault(p, len(used))

        def index(states: frozenset[globs.State]) -> int:
            return set_index.setdefault(states, len(set_index))

        entries = {
            d: (
                stamp,
                index(states),
                depth,
                [(m, [pid(p) for p in ids]) for m, ids in matches],
                [(sub, index(s)) for sub, s, _ in subdirs],
            )
            for d, (stamp, states, depth, matches, subdirs) in mine.items()
        }
        state_sets = [sorted((pid(p), i) for p, i in states) for states in set_index]
        patterns: list[tuple[list[str], int]] = [([], 0)] * len(used)
        for local, slot in used.items():
            parts, limit = globs._keys[local]
            patterns[slot] = (list(parts), limit)
        path = self._file(base)
        tmp = f"{path}.{os.getpid()}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(marshal.dumps((TAG, base, patterns, state_sets, entries)))
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._prune()

    def _prune(self) -> None:
        with contextlib.suppress(OSError):
            files = [e for e in os.scandir(self.directory) if e.name.startswith("globs-")]
            if len(files) > MAX_FILES:
                files.sort(key=lambda e: e.stat().st_mtime_ns)
                for old in files[: len(files) - MAX_FILES]:
                    os.unlink(old.path)


_store: DiskStore | None = None


def store() -> DiskStore | None:
    """The per-user store, or None when stockade has no state directory (then: memory only)."""
    global _store
    if not globs.TRUSTED_STAMPS:  # nothing is cached where a stat cannot revalidate it (Windows)
        return None
    if _store is None:
        directory = find_state_dir()
        if directory is None:
            return None
        _store = DiskStore(directory)
    return _store
