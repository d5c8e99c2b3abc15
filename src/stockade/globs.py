"""Glob expansion before launch: one walk per base directory for all patterns together.

Patterns are compiled to a small automaton over path components; the walk carries the set of
live states, so a directory no pattern can match below is never listed (pruning by fixed
prefixes falls out of this), `**` is bounded by the profile's `glob_scan_max_depth`, and
symlinks are never followed (no loops, never leaving the base).

Results are cached per directory and revalidated by the directory's stat (mtime, ctime,
inode, device): a repeated expansion over an unchanged tree costs one stat per directory.
ctime cannot be set from user space, so a tree cannot be edited to look unchanged. A
directory changed within the last two seconds is not cached (timestamps are coarse).
"""

from __future__ import annotations

import fnmatch
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

STARSTAR = "**"
RACY_NS = 2_000_000_000
MAX_CACHED_DIRS = 500_000
MAX_WALKED_DIRS = 200_000  # per expansion: past this a pattern is too broad to be checked
SEP = os.sep
WINDOWS = os.name == "nt"
# Kernel views, not files anyone keeps secrets in.
VIRTUAL = frozenset() if WINDOWS else frozenset({"/proc", "/sys", "/dev"})
# NTFS names are case-insensitive: a tool that opens `.env` gets `.ENV`, so a deny matches both.
CASELESS = WINDOWS
# A directory's stat revalidates its cached names only where ctime is the inode's change time,
# which user space cannot set; Windows reports the creation time there, so nothing is cached.
TRUSTED_STAMPS = not WINDOWS


class TooBroad(Exception):
    """A walk listed more directories than MAX_WALKED_DIRS; `pattern` is one that kept it going."""

    def __init__(self, pattern: str) -> None:
        super().__init__(pattern)
        self.pattern = pattern


_ESCAPED = re.compile(r"(?:[^*?[]|\[[*?[]\])*\Z")
_ESCAPE = re.compile(r"\[([*?[])\]")


def components(path: str) -> list[str]:
    """The components of a path or pattern (Windows takes `/` and `\\` alike)."""
    return (path.replace("/", SEP) if WINDOWS else path).split(SEP)


def _root(base: str) -> str:
    """`/` for an empty prefix; `C:\\` for a bare drive."""
    return base + SEP if not base or (WINDOWS and base.endswith(":")) else base


def at_root(pattern: str) -> bool:
    """Whether the walk for `pattern` would start at a filesystem root (never done)."""
    base = split(pattern)[0]
    return os.path.dirname(base) == base


def has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def escape(path: str) -> str:
    """A literal path as a pattern matching only itself: a directory called `p[1]` is no glob."""
    return re.sub(r"([*?[])", r"[\1]", path)


def literal(part: str) -> str | None:
    """The one name a pattern component matches when all its magic is escaped (`[[]`, `[*]`,
    `[?]`); None when it is a real wildcard."""
    if not has_magic(part):
        return part
    return unescape(part) if _ESCAPED.match(part) else None


def is_pattern(path: str) -> bool:
    """Whether `path` matches more than one name: it has magic that is not escaped."""
    return has_magic(path) and any(literal(part) is None for part in components(path))


def unescape(path: str) -> str:
    """The path a pattern without real wildcards (`is_pattern` is false) stands for."""
    return _ESCAPE.sub(r"\1", path)


def split(pattern: str) -> tuple[str, str]:
    """(fixed directory prefix as a real path, the rest as a pattern): the walk starts at the prefix."""
    parts = components(pattern)
    names = [literal(part) for part in parts]
    fixed = next((i for i, name in enumerate(names) if name is None), len(parts))
    return _root(SEP.join(names[:fixed])), SEP.join(parts[fixed:])  # type: ignore[arg-type]


def normalize(pattern: str) -> str:
    """`dir/**` means the directory itself (which covers everything below, even files made later)."""
    while pattern.endswith(("/**", SEP + STARSTAR)):
        pattern = pattern[:-3]
    return pattern or SEP


# --- the automaton ---------------------------------------------------------------------------
# A state is (pattern id, index of the next segment). Patterns are interned globally so that
# state sets, and therefore cache entries, are shared by every expansion in the process.

Segment = str | re.Pattern[str]  # "**", a literal name, or a compiled one-component pattern
State = tuple[int, int]


@dataclass(frozen=True)
class _Pattern:
    segments: tuple[Segment, ...]
    limit: int  # deepest component (counted from the walk base) this pattern may match


_patterns: list[_Pattern] = []
_raw: list[tuple[str, ...]] = []  # each pattern's components as written (after `**` folding)
_keys: list[tuple[tuple[str, ...], int]] = []  # what each pattern was interned from
_pattern_ids: dict[tuple[tuple[str, ...], int], int] = {}


def _intern(parts: tuple[str, ...], limit: int) -> int:
    key = (parts, limit)
    pid = _pattern_ids.get(key)
    if pid is None:
        segments: list[Segment] = []
        raw: list[str] = []
        for part in parts:
            if part == STARSTAR:
                if not segments or segments[-1] != STARSTAR:
                    segments.append(STARSTAR)
                    raw.append(part)
                continue
            while "**" in part:
                part = part.replace("**", "*")
            raw.append(part)
            # `*` and `?` match a leading dot too: a deny pattern errs towards hiding more.
            name = literal(part)
            if name is None:
                segments.append(re.compile(fnmatch.translate(part), re.IGNORECASE if CASELESS else 0))
            else:
                segments.append(name.casefold() if CASELESS else name)
        pid = _pattern_ids[key] = len(_patterns)
        _patterns.append(_Pattern(tuple(segments), limit))
        _raw.append(tuple(raw))
        _keys.append(key)
    return pid


def _closure(states: Iterable[State]) -> frozenset[State]:
    out: set[State] = set()
    todo = list(states)
    while todo:
        pid, i = todo.pop()
        if (pid, i) in out:
            continue
        out.add((pid, i))
        segs = _patterns[pid].segments
        if i < len(segs) and segs[i] == STARSTAR:
            todo.append((pid, i + 1))  # `**` may match zero components
    return frozenset(out)


class _Step:
    """Transitions out of one state set for the entries of one directory at a given depth.

    Most names hit no pattern segment and go to `star` (the `**` states that persist); the
    cheap `endswith` and anchored-regex screen sends only candidates to `slow`.
    """

    def __init__(self, states: frozenset[State], depth: int) -> None:
        live = [(pid, i) for pid, i in states if _patterns[pid].limit >= depth]
        self.star: frozenset[State] = _closure((pid, i) for pid, i in live if _segment(pid, i) == STARSTAR)
        literal: dict[str, set[State]] = {}
        self.wild: list[tuple[re.Pattern[str], State]] = []
        suffixes: list[str] = []
        others: list[str] = []
        for pid, i in live:
            seg = _segment(pid, i)
            if isinstance(seg, re.Pattern):
                self.wild.append((seg, (pid, i + 1)))
                raw = _raw[pid][i]
                if raw.startswith("*") and not has_magic(raw[1:]):
                    suffixes.append(raw[1:].casefold() if CASELESS else raw[1:])
                elif raw.endswith("*") and not has_magic(raw[:-1]):
                    others.append(re.escape(raw[:-1]))  # a prefix: the anchored match fails fast
                else:
                    others.append(seg.pattern)
            elif seg is not None and seg != STARSTAR:
                literal.setdefault(seg, set()).add((pid, i + 1))
        self.literal = {name: _closure(self.star | s) for name, s in literal.items()}
        self.suffixes = tuple(suffixes) or None
        flags = re.IGNORECASE if CASELESS else 0
        self.others = re.compile("|".join(f"(?:{p})" for p in others), flags).match if others else None
        self.star_verdict = _verdict(self.star, depth)
        # Every name that can leave `star`, as one regex: a leaf directory is screened with it
        # by filter() in C, without a Python step per name.
        every = [re.escape(name) + r"\Z" for name in literal] + others
        if suffixes:
            every.append(f"(?s:.*(?:{'|'.join(map(re.escape, suffixes))}))\\Z")
        self.candidate = re.compile("|".join(f"(?:{p})" for p in every), flags).match if every else None

    def slow(self, name: str) -> frozenset[State]:
        """States after `name` (case-folded where names are case-insensitive)."""
        found = set(self.literal.get(name, self.star))
        found.update(state for rx, state in self.wild if rx.match(name))
        return _closure(found)


def _segment(pid: int, i: int) -> Segment | None:
    segs = _patterns[pid].segments
    return segs[i] if i < len(segs) else None


_steps: dict[tuple[frozenset[State], int], _Step] = {}
_verdicts: dict[tuple[frozenset[State], int], tuple[tuple[int, ...], bool]] = {}


def _step(states: frozenset[State], depth: int) -> _Step:
    step = _steps.get((states, depth))
    if step is None:
        step = _steps[(states, depth)] = _Step(states, depth)
    return step


def _verdict(states: frozenset[State], depth: int) -> tuple[tuple[int, ...], bool]:
    """(patterns an entry in these states matches, whether a directory here is worth entering)."""
    key = (states, depth)
    got = _verdicts.get(key)
    if got is None:
        matched, alive = [], False
        for pid, i in states:
            pattern = _patterns[pid]
            if i == len(pattern.segments):
                matched.append(pid)
            elif pattern.limit > depth:
                alive = True
        got = _verdicts[key] = (tuple(sorted(set(matched))), alive)
    return got


# --- the walk --------------------------------------------------------------------------------


Matches = list[tuple[str, tuple[int, ...]]]  # (path, ids of the patterns it matches)
Subdirs = list[tuple[str, frozenset[State], int]]  # (directory to enter, its state set, depth)
# directory -> (stat stamp, state set, depth, matches, subdirs): what it contributed, valid
# while the directory's stat is unchanged.
_cache: dict[str, tuple[tuple[int, int, int, int], frozenset[State], int, Matches, Subdirs]] = {}
_changed: list[str] = []  # directories the current walk (re)cached: the Store saves only then


def _scan_leaf(directory: str, step: _Step, depth: int, matches: Matches) -> None:
    """A directory with no subdirectory (its link count says so): only names can match."""
    if step.candidate is None:
        return
    for name in filter(step.candidate, os.listdir(directory)):  # screened in C
        matched, _ = _verdict(step.slow(name.casefold() if CASELESS else name), depth + 1)
        if matched:
            matches.append((os.path.join(directory, name), matched))


def _scan(
    directory: str,
    step: _Step,
    depth: int,
    matches: Matches,
    subdirs: Subdirs,
) -> None:
    literal, star, (star_matched, star_alive) = step.literal, step.star, step.star_verdict
    suffixes, others, fold = step.suffixes, step.others, CASELESS
    with os.scandir(directory) as it:
        for entry in it:  # the hot loop: keep it to a lookup and a screen per name
            name = entry.name.casefold() if fold else entry.name
            if (suffixes is not None and name.endswith(suffixes)) or (others is not None and others(name)):
                nxt = step.slow(name)
            else:
                nxt = literal.get(name)
                if nxt is None:
                    if star_alive and entry.is_dir(follow_symlinks=False):
                        subdirs.append((entry.path, star, depth + 1))
                    if star_matched:
                        matches.append((entry.path, star_matched))
                    continue
            if not nxt:
                continue
            matched, alive = _verdict(nxt, depth + 1)
            if matched:
                matches.append((entry.path, matched))
            if alive and entry.is_dir(follow_symlinks=False):
                subdirs.append((entry.path, nxt, depth + 1))


# A directory's link count is 2 + its subdirectories on these filesystems (2 means a leaf);
# elsewhere (btrfs, overlayfs, network filesystems) it is not trusted and every entry is typed.
NLINK_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "tmpfs"})
_nlink_devs: dict[int, bool] = {}


def _nlink_counts_subdirs(dev: int) -> bool:
    known = _nlink_devs.get(dev)
    if known is None and not hasattr(os, "major"):  # no mountinfo to ask (Windows)
        known = _nlink_devs[dev] = False
    if known is None:
        known = False
        wanted = f"{os.major(dev)}:{os.minor(dev)}"
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    fields = line.split()
                    if len(fields) > 3 and fields[2] == wanted and " - " in line:
                        fstype = line.split(" - ", 1)[1].split()[0]
                        known = fstype in NLINK_FILESYSTEMS
                        break
        except OSError:
            pass
        _nlink_devs[dev] = known
    return known


class Store(Protocol):
    """Keeps the cache of one walk base between processes (globcache.py)."""

    def load(self, base: str) -> None: ...
    def save(self, base: str) -> None: ...


def expand_all(patterns: Iterable[str], max_depth: int, store: Store | None = None) -> dict[str, list[str]]:
    """Existing paths matching each absolute glob; `**` spans at most `max_depth` components.

    Patterns whose fixed prefixes nest are walked together from the outermost prefix.
    """
    wanted = {p: normalize(p) for p in patterns}
    bases: dict[str, list[tuple[str, str]]] = {}
    for original, pattern in wanted.items():
        base, rest = split(pattern)
        bases.setdefault(base, []).append((original, rest))
    # Fold every base that lies under another base into the outer walk.
    walks: dict[str, list[tuple[str, tuple[str, ...], int]]] = {}
    for base in sorted(bases, key=len):
        outer = next((w for w in walks if base == w or base.startswith(w.rstrip(SEP) + SEP)), base)
        prefix = tuple(escape(p) for p in components(base[len(outer) :]) if p)
        for original, rest in bases[base]:
            parts = tuple(p for p in components(rest) if p)
            limit = len(prefix) + (max_depth if STARSTAR in parts else len(parts))
            walks.setdefault(outer, []).append((original, prefix + parts, limit))
    out: dict[str, list[str]] = {p: [] for p in wanted}
    now = time.time_ns()
    for base, items in walks.items():
        ids: dict[int, list[str]] = {}
        for original, parts, limit in items:
            if not parts:  # no magic at all: the path itself
                if os.path.lexists(base):
                    out[original].append(base)
                continue
            ids.setdefault(_intern(parts, limit), []).append(original)
        if ids:
            if store is not None:
                store.load(base)
            _changed.clear()
            _walk(base, _closure((pid, 0) for pid in ids), ids, out, now)
            if store is not None and _changed:
                store.save(base)
    return {p: sorted(set(m)) for p, m in out.items()}


def _walk(
    base: str, start: frozenset[State], ids: dict[int, list[str]], out: dict[str, list[str]], now: int
) -> None:
    """Depth-first over the live directories; kept flat, it runs once per directory of the tree."""
    stack = [(base, start, 0)]
    walked = 0
    cache, steps, nlink_devs, stat = _cache, _steps, _nlink_devs, os.stat
    while stack:
        directory, states, depth = stack.pop()
        walked += 1
        if walked > MAX_WALKED_DIRS:
            raise TooBroad(next(p for pid, _ in states for p in ids.get(pid, ())))
        if directory in VIRTUAL:
            continue
        try:
            st = stat(directory)
        except OSError:
            continue
        stamp = (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
        hit = cache.get(directory)
        if hit is not None and hit[0] == stamp and hit[2] == depth and (hit[1] is states or hit[1] == states):
            matches, subdirs = hit[3], hit[4]
        else:
            step = steps.get((states, depth + 1)) or _step(states, depth + 1)
            matches, subdirs = [], []
            leaf = st.st_nlink == 2 and not step.star_verdict[0]
            try:
                if leaf and (nlink_devs.get(st.st_dev) or _nlink_counts_subdirs(st.st_dev)):
                    _scan_leaf(directory, step, depth, matches)
                else:
                    _scan(directory, step, depth, matches, subdirs)
            except OSError:
                continue
            if TRUSTED_STAMPS and max(st.st_mtime_ns, st.st_ctime_ns) < now - RACY_NS:
                if len(cache) >= MAX_CACHED_DIRS:
                    cache.clear()
                cache[directory] = (stamp, states, depth, matches, subdirs)
                _changed.append(directory)
        if matches:
            for path, matched in matches:
                for pid in matched:
                    for original in ids.get(pid, ()):
                        out[original].append(path)
        stack.extend(subdirs)


def expand(pattern: str, max_depth: int) -> list[str]:
    return expand_all([pattern], max_depth)[pattern]
