"""What the sandbox refused, and which rule of the Plan it was: for the hint on stderr, the
span's events and the audit line.

Seen: calls the Landlock guard refused (writes to protected or read-only entries inside writable
directories, denied entries, metadata changes outside writable ones) and the proxy's refusals.
Not seen: what bubblewrap's mounts refuse (the kernel answers EACCES/EROFS with nobody asked)
and what Landlock or seccomp refuse by themselves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..plan import PathRule, Plan

MAX_KEPT = 64  # a command that retries in a loop must not grow stockade's memory


@dataclass(frozen=True)
class Denial:
    what: str  # "open /repo/.git/config", "connect evil.example:443"
    rule: str  # the Plan entry or proxy rule that decided it
    reason: str  # where that entry came from (profile key, built-in rule)

    def hint(self, profile: str) -> str:
        from ..telemetry.audit import stderr_hint  # escapes control characters in paths and names

        return stderr_hint(self.what, self.rule, self.reason, profile)


def rule_for(plan: Plan, path: str) -> PathRule | None:
    """The entry that decides `path`: the most specific one at or above it."""
    best: PathRule | None = None
    for rule in plan.rules:
        if (path == rule.path or path.startswith(rule.path.rstrip(os.sep) + os.sep)) and (
            best is None or len(rule.path) > len(best.path)
        ):
            best = rule
    return best


def read_reports(fd: int, plan: Plan) -> list[Denial]:
    """Drain the guard's report pipe (after the command ended) into Denials, once per path."""
    chunks = []
    try:
        while data := os.read(fd, 65536):
            chunks.append(data)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
    found: dict[tuple[str, str], Denial] = {}
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        op, _, paths = line.partition("\t")
        for path in filter(None, paths.split("\t")):
            rule = rule_for(plan, os.path.normpath(path))
            if rule is None or (rule.access == "write" and not rule.pinned):
                continue  # the other path of a rename or link: not what was refused
            access = {"read": "read-only", "write": "pinned (no rename or removal)"}.get(rule.access, "deny")
            found.setdefault((op, path), Denial(f"{op} {path}", f"{rule.path} = {access}", rule.reason))
        if len(found) >= MAX_KEPT:
            break
    return list(found.values())


def from_event(host: str, port: int, rule: str) -> Denial:
    """A request the proxy refused."""
    return Denial(f"connect {host}:{port}", rule, "network proxy")
