"""What a Windows backend cannot enforce exactly, as reasons: any of them means the run must not
happen (fail closed), and `check()` and `explain` say which."""

from __future__ import annotations

from ...plan import Plan
from .model import Backend
from .paths import is_drive_root

RESTRICTED_READS = (
    "the restricted-token backend cannot enforce read denials: its token is write-restricted (the "
    "workspace SIDs are consulted for writes only) and reads are judged by your own account, so "
)


def refusals(plan: Plan, backend: Backend, ports: tuple[int, ...]) -> list[str]:
    """The reasons `plan` cannot be enforced by `backend`; empty when it can."""
    out = []
    if any(r.kind == "scratch" for r in plan.rules):
        out.append(
            "the Plan's private tmp (no writable tmp directory granted) has no Windows equivalent; "
            "grant a tmp directory (':tmpdir' = 'write')"
        )
    if plan.limits.items():
        names = ", ".join(k for k, _ in plan.limits.items())
        out.append(f"limits ({names}): resource limits are not enforced by the Windows backend yet")
    if plan.network == "proxy" and not ports:
        out.append("network = proxy, but no proxy port was given")
    if backend == "elevated":
        return out
    if plan.network != "on":
        out.append(
            f"network = {plan.network}: the restricted-token backend runs as your own account, and "
            "Windows Firewall selects traffic by account, so it cannot take the network away from this "
            "command alone; use the elevated backend (an offline sandbox account)"
        )
    denied = [(r.lexical, r.reason) for r in plan.rules if r.access == "deny"]
    denied += [(g.pattern, g.reason) for g in plan.globs if g.access == "deny"]
    if denied:
        where, reason = denied[0]
        out.append(
            RESTRICTED_READS + f"{len(denied)} deny entries (e.g. {where}, from {reason}) would stay "
            "readable; use the elevated backend"
        )
    if not any(is_drive_root(r.path) and r.access != "deny" for r in plan.rules):
        out.append(
            RESTRICTED_READS + "paths under no entry of this Plan (it grants no drive root) would stay "
            "readable; use the elevated backend"
        )
    return out
