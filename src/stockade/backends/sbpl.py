"""SBPL text for the Seatbelt backend: string literals and POSIX regexes for paths and globs.

A Seatbelt profile is Scheme source. Inside a string literal only `"` and `\\` are special, so
escaping exactly those two keeps any path (parentheses, `;`, newlines, non-ASCII) inside its
string. Regex filters are POSIX extended regexes; we only emit constructs that mean the same
there and in Python's `re` (so the tests can check them with `re`): metacharacters escaped with
`\\`, groups, `|`, `?`, `*`, and bracket expressions without ranges, `\\` or `[` inside them.
The one difference left is `$` (end of string in POSIX; also before a final newline in Python):
`python_regex` writes it as `\\Z`.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .. import globs

STARSTAR = "**"
ERE_SPECIAL = frozenset(".[()*+?{|^$\\")  # outside brackets; `]` and `}` are ordinary in both dialects
ASCII = frozenset(map(chr, range(128)))
ONE = "[^/]+"  # one whole path component


class GlobProblem(ValueError):
    """A glob that no regex we can write in both dialects states exactly."""


def string(text: str) -> str:
    """An SBPL string literal holding exactly `text`."""
    if "\0" in text:
        raise ValueError(f"{text!r}: a NUL cannot be in a path")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def literal(text: str) -> str:
    """A regex matching exactly `text`."""
    return "".join("\\" + ch if ch in ERE_SPECIAL else ch for ch in text)


def has_magic(part: str) -> bool:
    return any(ch in part for ch in "*?[")


def _bracket_body(chars: set[str]) -> str:
    """Members of a bracket expression, ordered so no character is taken as syntax."""
    rest = "".join(sorted(chars - {"]", "^", "-"}))
    body = ("]" if "]" in chars else "") + rest + ("^" if "^" in chars else "")
    body += "-" if "-" in chars else ""
    return body if not body.startswith("^") else body[::-1]  # only "^" and "-": "-^"


def _bracket(text: str, *, deny: bool) -> str | None:
    """One fnmatch `[...]` as a regex; None when it matches nothing. Its members are read off
    fnmatch itself, so the quirks (`[]a]`, `[!]`, reversed ranges) are fnmatch's own."""
    if not text.isascii():
        raise GlobProblem(f"non-ASCII inside {text}: Seatbelt may compare bytes, not characters")
    rx = re.compile(fnmatch.translate(text))
    members = {ch for ch in ASCII if rx.match(ch)} - {"/"}
    if rx.match("\u00e9"):  # negated: everything but some ASCII characters
        if deny:
            raise GlobProblem(f"{text} in a deny glob: Seatbelt may match one byte of a multi-byte name")
        excluded = (ASCII - members) | {"/"}
        if excluded & {"\\", "["}:
            raise GlobProblem(f"{text}: excluding \\ or [ cannot be written the same in POSIX and Python")
        return "[^" + _bracket_body(excluded) + "]"
    if not members:
        return None
    odd = sorted(members & {"\\", "["})  # cannot sit inside brackets in both dialects
    plain = members - set(odd)
    alts = [literal(ch) for ch in odd]
    if len(plain) == 1:
        alts.insert(0, literal(next(iter(plain))))
    elif plain:
        alts.insert(0, "[" + _bracket_body(plain) + "]")
    return alts[0] if len(alts) == 1 else "(" + "|".join(alts) + ")"


def component(part: str, *, deny: bool = False) -> str | None:
    """One path component of a glob (fnmatch syntax) as a regex that stays inside it; None when
    it matches nothing. `deny`: refuse what a byte-wise engine could match more narrowly."""
    out: list[str] = []
    i, n = 0, len(part)
    while i < n:
        ch = part[i]
        i += 1
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            if deny:
                raise GlobProblem("? in a deny glob: Seatbelt may match one byte of a multi-byte name")
            out.append("[^/]")
        elif ch == "[":
            j = i + (part[i : i + 1] == "!")
            j += part[j : j + 1] == "]"
            end = part.find("]", j)
            if end == -1:
                out.append(literal("["))  # no closing bracket: a literal `[`, as fnmatch
                continue
            cls = _bracket(part[i - 1 : end + 1], deny=deny)
            if cls is None:
                return None
            out.append(cls)
            i = end + 1
        else:
            out.append(literal(ch))
    return "".join(out)


def _optional(n: int) -> str:
    """Zero to `n` components (nested groups: no `{m,n}`, whose support we cannot check here)."""
    out = ""
    for _ in range(n):
        out = f"(/{ONE}{out})?"
    return out


def _tail(segments: list[str], budget: int) -> str | None:
    """Segments (component regexes or `**`) spanning at most `budget` components in all."""
    fixed = sum(s != STARSTAR for s in segments)
    if fixed > budget:
        return None
    if not segments:
        return ""
    head, rest = segments[0], segments[1:]
    if head != STARSTAR:
        more = _tail(rest, budget - 1)
        return None if more is None else "/" + head + more
    if STARSTAR not in rest:
        return _optional(budget - fixed) + "".join("/" + s for s in rest)
    # Several `**` share one budget: one alternative per span of this one.
    alts = [
        f"/{ONE}" * span + more
        for span in range(budget - fixed + 1)
        if (more := _tail(rest, budget - span)) is not None
    ]
    return "(" + "|".join(alts) + ")" if len(alts) > 1 else alts[0]


@dataclass(frozen=True)
class _Glob:
    prefix: tuple[str, ...]  # the fixed components, where the Plan's walk starts
    raw: tuple[str, ...]  # the rest as written (`**` folded), matched with fnmatch
    rx: tuple[str, ...]  # the same as regexes
    budget: int  # components the rest may span in all


@functools.lru_cache(maxsize=1024)
def _parse(pattern: str, depth: int, deny: bool) -> _Glob | None:
    if not pattern.startswith("/"):
        raise GlobProblem(f"{pattern}: not an absolute pattern")
    while pattern.endswith("/" + STARSTAR):  # `dir/**` means dir (and so everything below it)
        pattern = pattern[: -len(STARSTAR) - 1]
    parts = [p for p in pattern.split("/") if p]
    # Escaped components (a root called `p[1]` is `p[[]1]`) are names: the walk starts below them.
    names = [globs.literal(p) for p in parts]
    first = next((i for i, name in enumerate(names) if name is None), len(parts))
    raw: list[str] = []
    segments: list[str] = []
    for part in parts[first:]:
        if part == STARSTAR:
            if not raw or raw[-1] != STARSTAR:
                raw.append(STARSTAR)
                segments.append(STARSTAR)
            continue
        part = part.replace(STARSTAR, "*")  # as the Plan's walk reads `a**b`
        rx = component(part, deny=deny)
        if rx is None:
            return None
        raw.append(part)
        segments.append(rx)
    budget = depth if STARSTAR in raw else len(raw)
    return _Glob(tuple(names[:first]), tuple(raw), tuple(segments), budget)  # type: ignore[arg-type]


def _path_rx(parts: Iterable[str]) -> str:
    return "".join("/" + literal(p) for p in parts)


def glob_regex(
    pattern: str, depth: int, *, below: bool = True, deny: bool = False, eos: str = "$"
) -> str | None:
    """An absolute glob as an anchored regex: what the Plan's walk matches (`**` and the rest
    together at most `depth` components below the fixed prefix, as `globs.expand_all` bounds
    it) and, with `below`, everything under a match. None: it can match nothing."""
    g = _parse(pattern, depth, deny)
    tail = None if g is None else _tail(list(g.rx), g.budget)
    if g is None or tail is None:
        return None
    body = _path_rx(g.prefix) + tail
    if not body:  # the whole filesystem
        return "^/" if below else "^/" + eos
    return "^" + body + (f"({eos}|/)" if below else eos)


def below_regex(pattern: str, depth: int, path: str) -> str | None:
    """Paths under a match of the glob that lies strictly below `path` (and everything under
    such a match); None if there can be none. The glob's automaton is run over `path`'s
    components, and what is left of it is written after `path`."""
    g = _parse(pattern, depth, False)
    if g is None:
        return None
    k = len(g.prefix)
    states = {(0, 0)}  # (position in prefix + rest, components of the rest used)
    for name in (p for p in path.split("/") if p):
        states |= {
            (pos + 1, used)
            for pos, used in states
            if pos >= k and g.raw[pos - k : pos - k + 1] == (STARSTAR,)
        }
        nxt = set()
        for pos, used in states:
            if pos < k:
                if g.prefix[pos] == name:
                    nxt.add((pos + 1, used))
            elif pos - k < len(g.raw) and used < g.budget:
                seg = g.raw[pos - k]
                if seg == STARSTAR:
                    nxt.add((pos, used + 1))
                elif fnmatch.fnmatchcase(name, seg):
                    nxt.add((pos + 1, used + 1))
        states = nxt
    alts: list[str] = []
    for pos, used in sorted(states):
        rest = _path_rx(g.prefix[pos:]) if pos < k else ""
        tail = _tail(list(g.rx[max(pos - k, 0) :]), g.budget - used)
        if tail is not None and rest + tail and rest + tail not in alts:  # something deeper is left
            alts.append(rest + tail)
    if not alts:
        return None
    return (
        "^"
        + literal(path.rstrip("/"))
        + (alts[0] if len(alts) == 1 else "(" + "|".join(alts) + ")")
        + "($|/)"
    )


@functools.lru_cache(maxsize=1024)
def python_regex(pattern: str, depth: int, *, below: bool = True) -> re.Pattern[str] | None:
    """The same regex for Python's `re` (`$` as `\\Z`), to decide things at render time."""
    rx = glob_regex(pattern, depth, below=below, eos="\\Z")
    return None if rx is None else re.compile(rx)
