"""The ACE engine of the renderer: ACEs added shallow to deep, each only where inheritance does
not already give the answer, and Windows' own evaluation of what has been added so far.

Windows evaluates explicit ACEs (deny, then allow), then those inherited from the parent, then
the grandparent's, first match per right; so an ACE on the nearest entry decides, as the Plan's
nearest entry does. Delete is granted when the object allows DELETE *or* its parent allows
DELETE_CHILD, so `pin()` keeps a protected path in place by denying DELETE_CHILD (object-only)
on each writable directory above it up to its writable entry, and DELETE on those in between:
files there keep their inherited DELETE, so replace and cleanup still work, but a protected
name cannot be removed, renamed, or moved away with its directory.
"""

from __future__ import annotations

import functools
from typing import Any

from .model import ALL_RIGHTS, READ_RIGHTS, SUBTREE, WRITE_RIGHTS, Ace, Inherit, Right
from .paths import ancestors, parent, path_key

_IO, SUBTREE_FLAGS = Inherit.IO.value, SUBTREE.value
WRITE, DELETE, DC = Right.WRITE.value, Right.DELETE.value, Right.DELETE_CHILD.value
ALL, READS, WRITES = ALL_RIGHTS.value, READ_RIGHTS.value, WRITE_RIGHTS.value
_right = functools.cache(Right)  # enum construction is slow; a plan holds few distinct values
_inherit = functools.cache(Inherit)


class AclBuilder:
    """ACEs by path and principal, with rights as plain ints (enum arithmetic is slow)."""

    def __init__(self) -> None:
        # path key -> principal -> [principal, kind, inherit, rights, path, reason], in emission order
        self.at: dict[str, dict[str, list[list[Any]]]] = {}
        self.granted: set[str] = set()  # principals with at least one ACE so far
        self.pinned: set[tuple[str, str]] = set()  # (principal, directory) whose chain up is pinned
        self.memo: dict[str, dict[str, dict[bool, tuple[int, int]]]] = {}  # effective(): principal -> key

    def effective(self, principal: str, key: str, object_aces: bool = True) -> tuple[int, int]:
        """What Windows decides for `principal` at `key` from the ACEs emitted so far (first match
        per right: explicit deny, explicit allow, then each ancestor's inheritable ones), as
        (allowed bits, denied bits); `object_aces` False leaves out the object-only ACEs."""
        if principal not in self.granted:
            return (0, 0)
        memo = self.memo.setdefault(principal, {}).setdefault(key, {})
        cached = memo.get(object_aces)
        if cached is not None:
            return cached
        allowed = denied = 0
        for level in (key, *ancestors(key)):
            by_principal = self.at.get(level)
            records = by_principal.get(principal) if by_principal else None
            if not records:
                continue
            own = level is key
            for kind in ("deny", "allow"):
                for _, what, flags, bits, _, _ in records:
                    if what == kind and (
                        (not flags & _IO and (object_aces or flags & SUBTREE_FLAGS))
                        if own
                        else flags & SUBTREE_FLAGS
                    ):
                        new = bits & ~(allowed | denied)  # first match per right
                        if kind == "deny":
                            denied |= new
                        else:
                            allowed |= new
            if allowed | denied == ALL:
                break
        memo[object_aces] = (allowed, denied)
        return allowed, denied

    def add(self, principal: str, path: str, kind: str, bits: int, flags: int, reason: str) -> None:
        """One ACE per (principal, kind, inheritance) and path: rights added later are merged in."""
        key = path_key(path)
        records = self.at.setdefault(key, {}).setdefault(principal, [])
        for record in records:
            if record[1] == kind and record[2] == flags:
                if record[3] | bits == record[3]:
                    return  # nothing new
                record[3] |= bits
                break
        else:
            records.append([principal, kind, flags, bits, path, reason])
        self.granted.add(principal)
        # What this ACE can change: its own path and, when inheritable, everything below it.
        below = key.rstrip("\\") + "\\" if flags & SUBTREE_FLAGS else None
        memo = self.memo.get(principal, {})  # only this principal's view can change
        for stale in [k for k in memo if k == key or (below and k.startswith(below))]:
            del memo[stale]

    def ensure(self, principal: str, path: str, allow: int, deny: int, reason: str) -> None:
        """Add what is missing for `principal` at `path` to allow `allow` and deny `deny` (subtree)."""
        allowed, denied = self.effective(principal, path_key(path))
        for kind, need in (("deny", deny & ~denied), ("allow", allow & ~allowed)):
            if need:
                self.add(principal, path, kind, need, SUBTREE_FLAGS, reason)

    def pin(self, path: str, reason: str, principals: list[str]) -> None:
        """Deny DELETE_CHILD on each writable directory above `path` up to its writable entry, and
        DELETE on those in between: `path` can then be neither removed nor moved away."""
        why = f"{reason} (pins {path})"
        for p in principals:
            x = path
            while True:
                up = parent(x)
                up_key = path_key(up)
                if up_key == path_key(x) or not self.effective(p, up_key, object_aces=False)[0] & DC:
                    break
                self.add(p, up, "deny", DC, 0, why)
                if x != path:
                    self.add(p, x, "deny", DELETE, 0, why)
                if (p, up_key) in self.pinned:
                    break  # the rest of the way up is done already
                self.pinned.add((p, up_key))
                x = up

    def aces(self) -> tuple[Ace, ...]:
        """Everything added, parents before children."""
        return tuple(
            Ace(who, path, kind, _right(bits), _inherit(flags), reason)
            for key in sorted(self.at, key=lambda k: (k.count("\\"), k))
            for records in self.at[key].values()
            for who, kind, flags, bits, path, reason in records
        )
