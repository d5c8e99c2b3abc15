"""macOS: a Plan rendered as a Seatbelt (SBPL) profile for `sandbox-exec -p` (experimental).

Seatbelt evaluates every rule of a profile and the last one that matches decides. So the
profile starts from `(deny default)` and states each Plan entry in full (read: allow reading,
deny writing; write: allow both; deny: deny both, and exec) from the shortest path to the
longest: the most specific entry is stated last and wins, which is exactly the Plan's rule
(`/repo = write`, `/repo/a = deny`, `/repo/a/b = write` leaves `/repo/a/b` writable).

Unlike bubblewrap's mounts, Seatbelt judges paths when they are used, so an entry covers a
file created later and a missing protected path needs no placeholder. Globs reach this backend
already expanded by the Plan (as on Linux): a file created later that a glob would match is not
covered; rendering the patterns as anchored regexes is the next step (not done).

Nothing here has run on a Mac in this project yet; `doctor` and the README say so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from ..errors import UnsupportedPolicy
from ..plan import PathRule, Plan
from .base import LaunchSpec, ProxyEndpoint

SANDBOX_EXEC = "/usr/bin/sandbox-exec"
# `:minimal` on macOS: what dyld and a program need to start (the Linux list means nothing there).
MINIMAL = ("/System", "/usr", "/bin", "/sbin", "/Library/Frameworks", "/private/etc", "/private/var/db/dyld")
DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/dtracehelper")
# Services nearly every program asks for (name lookup, logging, time zone, user records).
MACH_SERVICES = (
    "com.apple.system.logger",
    "com.apple.system.notification_center",
    "com.apple.system.opendirectoryd.libinfo",
    "com.apple.trustd.agent",
    "com.apple.logd",
)


def quote(text: str) -> str:
    """An SBPL string literal. Control characters cannot be written safely: check() refuses them."""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise UnsupportedPolicy(f"{text!r}: a path with control characters cannot go into a Seatbelt profile")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_minimal(rule: PathRule) -> bool:
    return rule.reason.endswith("':minimal'")


def _entries(plan: Plan) -> list[PathRule]:
    """The Plan's entries for macOS: `:minimal` swapped for the macOS start-up set, each path
    once, shortest first (Seatbelt's last match wins, so the most specific comes last)."""
    rules = [r for r in plan.rules if not _is_minimal(r) and r.kind != "scratch"]
    if len(rules) != len(plan.rules) and any(_is_minimal(r) for r in plan.rules):
        taken = {r.path for r in rules}
        reason = "':minimal' (macOS)"
        rules += [
            PathRule(p, "read", "dir", reason, p) for p in (*MINIMAL, *_interpreter()) if p not in taken
        ]
    scratch = [r for r in plan.rules if r.kind == "scratch"]
    if scratch:  # no private tmpfs on macOS: a scratch /tmp is read-only there
        rules += [PathRule(r.path, "read", "dir", r.reason, r.lexical) for r in scratch]
    return sorted({r.path: r for r in rules}.values(), key=lambda r: (r.path.count("/"), r.path))


def _interpreter() -> list[str]:
    return sorted({sys.base_prefix, sys.prefix} - set(MINIMAL))


def _filter(rule: PathRule) -> str:
    return f"(subpath {quote(rule.path)})" if rule.path != "/" else '(subpath "/")'


def render(plan: Plan, *, proxy_port: int | None = None) -> str:
    """The SBPL profile for `plan` (raises UnsupportedPolicy for what Seatbelt cannot hold)."""
    check(plan)
    out = [
        "(version 1)",
        "(deny default)",
        ";; stockade: profile " + quote(plan.profile),
        "(allow process-fork)",
        "(allow signal (target same-sandbox))",
        "(allow sysctl-read)",
        "(allow mach-lookup " + " ".join(f"(global-name {quote(s)})" for s in MACH_SERVICES) + ")",
        "(allow file-read-metadata)",  # stat() of any path: programs walk up to find their files
    ]
    for rule in _entries(plan):
        where = _filter(rule)
        if rule.access == "write":
            out.append(f"(allow file-read* file-write* process-exec {where})")
        elif rule.access == "read":
            out.append(f"(allow file-read* process-exec {where})")
            out.append(f"(deny file-write* {where})")
        else:
            out.append(f"(deny file-read* file-write* process-exec {where})")
        if rule.pinned:  # its own name cannot be renamed or removed (the `.git` directory)
            out.append(f"(deny file-write-unlink (literal {quote(rule.path)}))")
    # The usual devices, always (as on Linux), after the entries so that none takes them away.
    devices = " ".join(f"(literal {quote(d)})" for d in DEVICES)
    out.append(f"(allow file-read* file-write-data {devices})")
    if plan.network == "on":
        out.append("(allow network*)")
    elif plan.network == "proxy":
        if proxy_port is None:
            raise UnsupportedPolicy("network = proxy, but no proxy port was given")
        out.append(f'(allow network-outbound (remote ip "localhost:{int(proxy_port)}"))')
    return "\n".join(out) + "\n"


def check(plan: Plan) -> None:
    """Refuse what a Seatbelt profile cannot say exactly."""
    for rule in plan.rules:
        quote(rule.path)
    if plan.limits.processes is not None:
        raise UnsupportedPolicy(
            "limits.processes: macOS has no per-sandbox process count (RLIMIT_NPROC is per user)"
        )


class SeatbeltBackend:
    """`sandbox-exec -p PROFILE COMMAND` (macOS only; experimental)."""

    name = "seatbelt"

    def describe(self) -> str:
        return f"seatbelt via {SANDBOX_EXEC} (experimental: not yet verified on a Mac by this project)"

    def check(self, plan: Plan) -> None:
        if sys.platform != "darwin" or not os.path.exists(SANDBOX_EXEC):
            raise UnsupportedPolicy("the Seatbelt backend runs on macOS only (sandbox-exec)")
        check(plan)

    def launch(
        self, plan: Plan, argv: list[str], endpoint: ProxyEndpoint | None = None, *, tty: bool = False
    ) -> LaunchSpec:
        port = endpoint.PORT if endpoint is not None else None
        profile = render(plan, proxy_port=port)
        spec = LaunchSpec(argv=[SANDBOX_EXEC, "-p", profile, *argv], env=plan.env, cwd=plan.cwd)
        spec.preexec = os.setsid  # a group of its own, so the whole tree can be ended
        return spec

    def finish(self, spec: LaunchSpec, returncode: int) -> int | None:
        return 128 - returncode if returncode < 0 else returncode

    def kill(self, spec: LaunchSpec, pid: int) -> None:
        self.cleanup(spec, pid)

    def cleanup(self, spec: LaunchSpec, pid: int) -> None:
        """Seatbelt keeps no tree together: the command's process group is killed (a process
        that leaves the group with setsid() escapes this; a gap on macOS, noted in the docs)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
