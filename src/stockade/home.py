"""`:home`: the home directory's children, never the directory itself, minus what is sensitive.

Granting the home directory whole would cover `~/.ssh` and every key the SSH configuration
names (and on ACL backends stamp grants onto them, which makes OpenSSH reject its own keys).
So a home grant is expanded into grants that never cover a sensitive path: the children of
home, and where a child holds a sensitive path deeper down (`~/.config/gh`), that child's own
children instead, recursively along the sensitive paths only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import NamedTuple

from .policy.builtin import SECRET_HOME_PATHS

# Sensitive whatever the profile says: the credentials the `workspace` profile denies, and
# stockade's own state (hidden by every backend anyway).
SENSITIVE = (
    *(key[2:] for key, access in SECRET_HOME_PATHS.items() if access == "deny" and key.startswith("~/")),
    ".local/state/stockade",
)


def sensitive_paths(home: str, extra: Iterable[str]) -> set[str]:
    """Absolute sensitive paths (literal: a glob's caller passes its fixed prefix), lexical and
    canonical."""
    out: set[str] = set()
    for path in [*(os.path.join(home, p) for p in SENSITIVE), *extra]:
        path = os.path.normpath(path)
        out.add(path)
        out.add(os.path.realpath(path))
    return out


class HomeGrants(NamedTuple):
    grants: list[str]  # paths that together grant home minus what is sensitive
    withheld: list[str]  # children (and grandchildren) left out as sensitive: backends keep off them
    notes: list[str]


def home_grants(home: str, sensitive: set[str]) -> HomeGrants:
    """Expand a grant of `home` into grants that never cover `sensitive`. Fails closed on errors."""
    grants: list[str] = []
    notes: list[str] = []
    withheld: list[str] = []
    if not _expand(home, sensitive, grants, notes, withheld, top=True):
        return HomeGrants([], withheld, notes)
    if withheld:
        names = ", ".join(os.path.relpath(p, home) for p in withheld)
        notes.append(f"not granted (sensitive): {names}")
    return HomeGrants(grants, withheld, notes)


def _covers(path: str, sensitive: set[str]) -> tuple[bool, bool]:
    """(path is sensitive or inside a sensitive path, path holds a sensitive path below it)."""
    inside = any(path == s or path.startswith(s.rstrip(os.sep) + os.sep) for s in sensitive)
    holds = any(s.startswith(path.rstrip(os.sep) + os.sep) for s in sensitive)
    return inside, holds


def _expand(
    directory: str, sensitive: set[str], grants: list[str], notes: list[str], withheld: list[str], top: bool
) -> bool:
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        what = "the home directory" if top else directory
        notes.append(f":home: cannot list {what} ({exc.strerror}); nothing under it is granted")
        return not top
    for entry in entries:
        inside, holds = _covers(entry.path, sensitive)
        if not inside and entry.is_symlink():
            # An alias is granted by its target: it must not lead into something sensitive.
            target = os.path.realpath(entry.path)
            t_inside, t_holds = _covers(target, sensitive)
            inside, holds = inside or t_inside or t_holds, holds
        if inside:
            withheld.append(entry.path)
            continue
        if holds:
            if entry.is_dir(follow_symlinks=False):
                _expand(entry.path, sensitive, grants, notes, withheld, top=False)
            continue
        grants.append(entry.path)
    return True
