"""macOS: a Plan rendered as a Seatbelt (SBPL) profile for `sandbox-exec -p` (experimental).

Seatbelt evaluates every rule of a profile and the last one that matches decides. So the
profile starts from `(deny default)` and states each Plan entry in full (read: allow reading,
deny writing; write: allow both; deny: deny both, and exec) from the shortest path to the
longest: the most specific entry is stated last and wins, which is exactly the Plan's rule
(`/repo = write`, `/repo/a = deny`, `/repo/a/b = write` leaves `/repo/a/b` writable).

Unlike bubblewrap's mounts, Seatbelt judges paths when they are used, so an entry covers a
file created later and a missing protected path needs no placeholder; globs are rendered as
anchored regexes too, so a `.env` created after launch is denied as well (on Linux only the
matches found at launch are).

Nothing here has run on a Mac in this project yet; `doctor` and the README say so.
"""

from __future__ import annotations

import contextlib
import os
import re
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


ERE_SPECIAL = set(".^$|+(){}\\[]*?")  # escaped outside brackets


def component_regex(part: str) -> str:
    """One path component of a glob (fnmatch's syntax) as a POSIX ERE that stays in it."""
    out, i = [], 0
    while i < len(part):
        ch = part[i]
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif (
            ch == "[" and (end := part.find("]", i + 2 if part[i + 1 : i + 2] in ("!", "]") else i + 1)) != -1
        ):
            body = part[i + 1 : end]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            if body.startswith("^") and len(body) > 1:  # a literal ^ (as fnmatch), never a negation
                body = body[1:] + "^"
            body = body.replace("\\", "\\\\")
            out.append("[" + ("^/" if negate else "") + body + "]")
            i = end
        else:
            out.append("\\" + ch if ch in ERE_SPECIAL else ch)
        i += 1
    return "".join(out)


def glob_regex(pattern: str, depth: int) -> str:
    """An absolute glob as an anchored ERE matching what it matches and everything below it;
    `**` is zero to `depth` components, as the Plan's walk is bounded."""
    out = "^"
    for part in pattern.strip("/").split("/"):
        if part == "**":
            out += f"(/[^/]+){{0,{depth}}}"
        else:
            out += "/" + component_regex(part)
    return out + "(/.*)?$"


def _statement(access: str, where: str) -> list[str]:
    """One entry in full: Seatbelt's last match wins, so every access is said both ways."""
    if access == "write":
        return [f"(allow file-read* file-write* process-exec {where})"]
    if access == "read":
        return [f"(allow file-read* process-exec {where})", f"(deny file-write* {where})"]
    return [f"(deny file-read* file-write* process-exec {where})"]


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
    entries = _entries(plan)
    for rule in entries:
        out += _statement(rule.access, _filter(rule))
        if rule.pinned:  # its own name cannot be renamed or removed (the `.git` directory)
            out.append(f"(deny file-write-unlink (literal {quote(rule.path)}))")
    # Globs as patterns too, so files created later are covered: after every entry (a glob's
    # match is more specific than the directories above it), deny last among them; then the
    # exact entries they match again, since an exact entry beats a glob at the same path.
    order = {"read": 0, "write": 1, "deny": 2}
    patterns = [(g, re.compile(glob_regex(g.pattern, g.depth))) for g in plan.globs]
    for glob, _ in sorted(patterns, key=lambda p: order[p[0].access]):
        out += _statement(glob.access, f"(regex {quote(glob_regex(glob.pattern, glob.depth))})")
    for rule in entries:
        if not rule.glob and any(rx.match(rule.path) for _, rx in patterns):
            out += _statement(rule.access, _filter(rule))
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
    for glob in plan.globs:
        quote(glob.pattern)
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
