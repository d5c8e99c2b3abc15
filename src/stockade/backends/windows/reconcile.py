"""Persistent ACEs, reconciled per sandbox principal.

ACEs stay on disk between runs (setting inheritable ACEs on a large tree is slow, and a
workspace's own SID isolates it anyway). So before a run, the explicit ACEs stockade finds for
the principals of the new plan are compared with the plan: what the plan wants and is missing
is added; what an older plan of the *same* principals left behind is removed. ACEs of any other
principal (the user, Administrators, another workspace's SID) are never touched.
"""

from __future__ import annotations

from collections.abc import Iterable

from .model import Ace, WindowsPlan
from .paths import path_key


def reconcile(
    present: Iterable[Ace], plan: WindowsPlan, scope: Iterable[str] | None = None
) -> tuple[list[Ace], list[Ace]]:
    """(add, remove). `present`: the explicit (not inherited) ACEs found on the paths stockade
    manages; `scope`: the principals this run owns (default: the plan's own)."""
    owned = {p.upper() for p in (plan.principals() if scope is None else scope)}
    wanted = {a.identity(): a for a in plan.aces}
    found: dict[tuple[str, str, str, int, int], Ace] = {}
    for ace in present:
        if ace.principal.upper() in owned:
            found.setdefault(ace.identity(), ace)
    add = [a for key, a in wanted.items() if key not in found]
    remove = [a for key, a in found.items() if key not in wanted]
    return sorted(add, key=_order), sorted(remove, key=_order)


def _order(ace: Ace) -> tuple[int, str, str, str]:
    key = path_key(ace.path)
    return (key.count("\\"), key, ace.principal, ace.kind)


def paths_touched(add: Iterable[Ace], remove: Iterable[Ace]) -> list[str]:
    """Each path whose ACL changes, once, parents before children (the applier's order)."""
    paths = {path_key(a.path): a.path for a in [*add, *remove]}
    return [paths[k] for k in sorted(paths, key=lambda k: (k.count("\\"), k))]


def desired_at(plan: WindowsPlan, path: str) -> list[Ace]:
    """The plan's ACEs on one path: what the applier writes there for the plan's principals."""
    key = path_key(path)
    return [a for a in plan.aces if path_key(a.path) == key]
