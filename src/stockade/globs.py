"""Glob expansion before launch: one bounded walk, never following symlinks, never leaving its base."""

from __future__ import annotations

import os
import re
from functools import cache


def has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    """Translate a path glob: `*` and `?` stay inside one component, `**/` spans any depth."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                out.append(re.escape("["))
                i += 1
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def split(pattern: str) -> tuple[str, str]:
    """(fixed directory prefix, the rest): the walk starts at the prefix."""
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        if has_magic(part):
            return "/".join(parts[:i]) or "/", "/".join(parts[i:])
    return pattern, ""


def expand(pattern: str, max_depth: int) -> list[str]:
    """Existing paths matching an absolute glob, walking at most `max_depth` levels below its prefix."""
    base, rest = split(pattern)
    if not rest:
        return [pattern] if os.path.lexists(pattern) else []
    regex = _regex(rest)
    unbounded = "**" in rest
    depth_needed = rest.count("/") + 1
    limit = max_depth if unbounded else min(max_depth, depth_needed)
    matches: list[str] = []
    stack = [(base, "", 1)]
    while stack:
        directory, rel, depth = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            sub = f"{rel}{entry.name}"
            if regex.match(sub):
                matches.append(entry.path)
            if depth < limit and entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, sub + "/", depth + 1))
    return sorted(matches)
