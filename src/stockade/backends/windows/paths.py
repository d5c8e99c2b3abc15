"""Windows path logic, runnable anywhere: keys compared as NTFS does, and a view of the filesystem.

Everything goes through `ntpath`, so a Plan holding `C:\\Users\\alice\\repo` renders the same on
Linux as on Windows. The filesystem is reached only through an `FsView` (listing, link target,
kind), so tests drive the renderer with a dict instead of a disk.
"""

from __future__ import annotations

import fnmatch
import functools
import ntpath
import os
from typing import Literal, Protocol

FsKind = Literal["dir", "file", "link", "missing"]
MAX_LISTED = 200_000  # directories one glob may list before it is refused as too broad


@functools.lru_cache(maxsize=1 << 16)
def path_key(path: str) -> str:
    """The form two paths are compared in: normalized, `\\` separators, case-folded (NTFS is
    case-insensitive), no `\\\\?\\` prefix, no trailing separator except at a drive root."""
    if path.startswith(("\\\\?\\", "//?/")):
        path = path[4:]
    key = ntpath.normcase(ntpath.normpath(path)).casefold()
    if len(key) > 1 and key.endswith("\\") and ntpath.dirname(key) != key:
        key = key.rstrip("\\")
    return key


@functools.lru_cache(maxsize=1 << 14)
def parent(path: str) -> str:
    """The directory holding `path` (itself at a drive root)."""
    head = ntpath.dirname(path.rstrip("\\/") or path)
    return head or path


def join(directory: str, name: str) -> str:
    """`directory\\name`, keeping the separator style the path already uses (Linux Plans too)."""
    sep = "/" if directory.startswith("/") and "\\" not in directory else "\\"
    return directory.rstrip("\\/") + sep + name if directory.rstrip("\\/") else directory + name


def depth(path: str) -> int:
    return len([p for p in path_key(path).split("\\") if p])


@functools.lru_cache(maxsize=1 << 14)
def ancestors(key: str) -> tuple[str, ...]:
    """The keys strictly above `key`, nearest first."""
    out = []
    while True:
        up = ntpath.dirname(key)
        if up == key or not up:
            return tuple(out)
        out.append(up)
        key = up


def under(path: str, top: str) -> bool:
    """`path` is `top` or inside it."""
    p, t = path_key(path), path_key(top)
    return p == t or p.startswith(t.rstrip("\\") + "\\")


def is_drive_root(path: str) -> bool:
    key = path_key(path)
    return ntpath.dirname(key) == key


class FsView(Protocol):
    """What the renderer may ask of the filesystem (injected: the host's, or a test's dict)."""

    def kind(self, path: str) -> FsKind:
        """dir, file, link (a symlink or junction, never followed) or missing."""

    def realpath(self, path: str) -> str:
        """The canonical target (links resolved)."""

    def listdir(self, path: str) -> list[str] | None:
        """Names in a directory, or None if it cannot be listed."""


class HostFs:
    """The real filesystem (on Windows: junctions count as links and are not followed)."""

    def kind(self, path: str) -> FsKind:
        if os.path.islink(path) or (hasattr(os.path, "isjunction") and os.path.isjunction(path)):
            return "link"
        if os.path.isdir(path):
            return "dir"
        return "file" if os.path.exists(path) else "missing"

    def realpath(self, path: str) -> str:
        return os.path.realpath(path)

    def listdir(self, path: str) -> list[str] | None:
        try:
            return sorted(os.listdir(path))
        except OSError:
            return None


class TooBroad(Exception):
    """A glob would list more than MAX_LISTED directories."""


def _has_magic(part: str) -> bool:
    return any(ch in part for ch in "*?[")


def glob_matches(fs: FsView, pattern: str, max_depth: int) -> list[str]:
    """Existing paths an absolute glob matches, case-insensitively; `**` spans at most
    `max_depth` directories; links are matched but never walked into."""
    drive, rest = ntpath.splitdrive(pattern)
    parts = [p for p in rest.replace("/", "\\").split("\\") if p]
    while len(parts) > 1 and parts[-1] == "**":
        parts.pop()  # `dir/**` means `dir` (and so everything below it), as in the Plan
    fixed = next((i for i, p in enumerate(parts) if _has_magic(p)), len(parts))
    base = drive + ("\\" if rest[:1] in "\\/" else "")
    base = base if not parts[:fixed] else base + "\\".join(parts[:fixed])
    if pattern.startswith("/") and not drive:
        base = "/" + "/".join(parts[:fixed])  # a POSIX-looking Plan (explain on Linux)
    found: dict[str, str] = {}
    seen: set[tuple[str, int, int]] = set()
    listed = [0]

    def walk(path: str, i: int, used: int) -> None:
        if (path_key(path), i, used) in seen:
            return
        seen.add((path_key(path), i, used))
        if i == len(parts):
            found.setdefault(path_key(path), path)
            return
        part = parts[i]
        if part == "**":
            walk(path, i + 1, used)  # zero components
            if used >= max_depth:
                return
        if fs.kind(path) != "dir":
            return
        listed[0] += 1
        if listed[0] > MAX_LISTED:
            raise TooBroad(pattern)
        for name in fs.listdir(path) or ():
            child = join(path, name)
            if part == "**":
                if fs.kind(child) == "dir":
                    walk(child, i, used + 1)
                continue
            if fnmatch.fnmatchcase(name.casefold(), part.casefold()):
                walk(child, i + 1, used)

    if fs.kind(base) != "missing":
        walk(base, fixed, 0)
    return sorted(found.values(), key=path_key)
