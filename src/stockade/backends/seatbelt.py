"""macOS: a Plan rendered as a Seatbelt (SBPL) profile for `sandbox-exec -p` (experimental).

Not yet run on a Mac by this project: the translation is tested on Linux, enforcement is what
`scripts/smoke-macos.sh` checks there.

- Each entry governs its *region*: its subpath minus the subpaths of the entries nearest below
  it (`require-not`). Regions are disjoint, so the Plan's "the most specific entry wins" does
  not depend on rule order: `/r = write`, `/r/a = deny`, `/r/a/b = write` gives three regions.
  Entries are still written shortest path first.
- Globs are anchored regexes, so they cover files created after launch too (a new `.env` is
  denied; on Linux only the matches found at launch are). They come after the entries (a match
  is more specific than the directories above it), read before deny (between two globs deny
  wins), and then the Plan's entries that lie in a glob's match are stated again (an exact
  entry beats a glob at its path), minus any deeper match of a glob that says otherwise.
  Between glob matches deny wins, even when a read glob's match lies inside a deny glob's.
- Seatbelt judges paths, not inodes: a directory that holds entries could be renamed away from
  them and back. So every directory above an entry that the command may write is pinned (its
  own unlink/rename denied), as a mount point is on Linux. Missing protected paths need no
  placeholder: the rule covers whatever gets created there.
- As on Linux, /dev holds only the usual devices, and a Plan's private /tmp hides the host's
  (no tmpfs here: TMPDIR is a private directory made at launch, removed after).
- Network: nothing (off), IP and name resolution (on), or only the proxy's loopback port.
  No unix socket but mDNSResponder's (network on): the host's ssh-agent or docker stay out of reach.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile

from ..errors import SandboxUnavailable, UnsupportedPolicy
from ..plan import MINIMAL, Limits, PathRule, Plan, nearest_access
from . import sbpl
from .base import LaunchSpec, ProxyEndpoint

try:
    import resource
except ImportError:  # Windows: the profile still renders (`explain --platform macos`)
    resource = None  # type: ignore[assignment]

SANDBOX_EXEC = "/usr/bin/sandbox-exec"
# `:minimal` on macOS: system programs and libraries (dyld's shared cache lives under /System,
# older systems keep it in /private/var/db/dyld), /etc, the time zone, /bin/sh's chosen shell,
# Rosetta, and the Command Line Tools behind /usr/bin's git, make and cc shims. The Plan's
# interpreter entries are kept. Not /Library/Frameworks: the interpreter's prefix is enough.
MACOS_MINIMAL = (
    "/System",
    "/usr",
    "/bin",
    "/sbin",
    "/private/etc",
    "/private/var/db/dyld",
    "/private/var/db/timezone",
    "/private/var/select",
    "/Library/Apple",
    "/Library/Developer/CommandLineTools",
    "/private/var/db/xcode_select_link",
)
ALIASES = {"/tmp": "/private/tmp", "/var": "/private/var", "/etc": "/private/etc"}  # symlinks at /
DEVICES = (
    "/dev/null",
    "/dev/zero",
    "/dev/random",
    "/dev/urandom",
    "/dev/stdin",
    "/dev/stdout",
    "/dev/stderr",
)
TERMINALS = ("/dev/tty", "/dev/dtracehelper")  # also ioctl (stty; dyld registers DTrace probes)
MACH_SERVICES = (
    "com.apple.system.opendirectoryd.libinfo",  # user and group records: git, ssh, pwd
    "com.apple.system.opendirectoryd.membership",
    "com.apple.system.logger",
    "com.apple.logd",
    "com.apple.system.notification_center",  # time zone and locale change notices
)
TLS_SERVICES = ("com.apple.trustd.agent", "com.apple.SecurityServer", "com.apple.ocspd")
DNS_SERVICES = ("com.apple.SystemConfiguration.DNSConfiguration", "com.apple.SystemConfiguration.configd")
# Host facts only: not kern.proc.* (other processes) nor kern.procargs* (their arguments).
SYSCTL_PREFIXES = ("hw.", "machdep.cpu.", "kern.os", "sysctl.proc_")
SYSCTL_NAMES = ("kern.version", "kern.hostname", "kern.argmax", "kern.maxfilesperproc", "kern.maxproc")
SYSCTL_NAMES += ("kern.usrstack64", "kern.boottime", "kern.secure_kernel", "kern.hv_vmm_present")
SYSCTL_NAMES += ("vm.loadavg", "vm.pagesize", "kern.ngroups")
MDNS_SOCKET = "/private/var/run/mDNSResponder"


def _say(access: str, where: str) -> list[str]:
    """One region or pattern in full, whatever came before it (regex rules rely on order)."""
    if access == "write":
        return [f"(allow file-read* file-write* file-map-executable process-exec {where})"]
    if access == "read":
        return [f"(allow file-read* file-map-executable process-exec {where})", f"(deny file-write* {where})"]
    return [f"(deny file-read* file-write* file-map-executable process-exec {where})"]


def _is_minimal(rule: PathRule) -> bool:
    return rule.reason.endswith("':minimal'")


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _depth(path: str) -> int:
    return 0 if path == "/" else path.count("/")


def macos_rules(plan: Plan, scratch_dir: str | None = None) -> list[PathRule]:
    """The Plan's entries as macOS sees them, shortest path first: `:minimal` becomes the macOS
    start-up set; a private /tmp (no tmpfs here) hides the host's /tmp, and `scratch_dir` (made
    at launch, TMPDIR inside) is writable instead; /dev is hidden but for the usual devices."""
    rules = {
        r.path: r for r in plan.rules if r.kind != "scratch" and not (_is_minimal(r) and r.lexical in MINIMAL)
    }
    # As on Linux, /dev holds only the usual devices (stated after the entries): a readable `/`
    # must not reach disks or the user's other terminals.
    extra = [PathRule("/dev", "deny", "dir", "only the usual devices in /dev", "/dev")]
    if minimal := next((r for r in plan.rules if _is_minimal(r)), None):  # Linux's list means nothing here
        extra += [PathRule(p, minimal.access, "dir", minimal.reason + " (macOS)", p) for p in MACOS_MINIMAL]
    for r in plan.rules:
        if r.kind != "scratch":
            continue
        host_tmp = ALIASES.get(r.path, r.path)
        extra.append(
            PathRule(host_tmp, "deny", "dir", r.reason + " (macOS: the host's is hidden)", r.lexical)
        )
        for kept in {*plan.roots, plan.cwd}:  # roots and cwd under it stay visible, as on Linux
            access = plan.access(kept)
            if _under(kept, host_tmp) and kept != host_tmp and access is not None:
                extra.append(PathRule(kept, access, "dir", "kept visible over the private /tmp", kept))
        if scratch_dir:
            extra.append(PathRule(scratch_dir, "write", "dir", r.reason + " (macOS: TMPDIR)", scratch_dir))
    for rule in extra:
        rules.setdefault(rule.path, rule)  # the Plan's own entry at a path wins
    return sorted(rules.values(), key=lambda r: (_depth(r.path), r.path))


def _nearest_above(path: str, paths: dict[str, PathRule]) -> str | None:
    while path != "/":
        path = os.path.dirname(path)
        if path in paths:
            return path
    return None


def _ancestors(path: str) -> list[str]:
    """Proper ancestors, nearest first ("/a/b" -> ["/a", "/"])."""
    out = []
    while (cut := path.rfind("/")) > 0:
        path = path[:cut]
        out.append(path)
    return [*out, "/"] if path != "/" else out


def _literals(op: str, paths: list[str] | tuple[str, ...]) -> str:
    return f"({op} " + " ".join(f"(literal {sbpl.string(p)})" for p in paths) + ")"


def render(
    plan: Plan, *, proxy_port: int | None = None, scratch_dir: str | None = None, tty: bool = False
) -> str:
    """The SBPL profile of `plan` (UnsupportedPolicy for what Seatbelt cannot hold exactly).
    `proxy_port`: the proxy's loopback port (network "proxy"); `scratch_dir`: the private TMPDIR
    made at launch for a Plan with a private /tmp; `tty`: the command has a terminal of its own."""
    if problems := _profile_problems(plan):
        raise UnsupportedPolicy("the Seatbelt backend cannot enforce this Plan:\n  " + "\n  ".join(problems))
    if plan.network == "proxy" and not (isinstance(proxy_port, int) and 0 < proxy_port < 65536):
        raise UnsupportedPolicy(f"network = proxy needs the proxy's loopback port, not {proxy_port!r}")
    rules = macos_rules(plan, scratch_dir)
    by_path = {r.path: r for r in rules}
    access = {r.path: r.access for r in rules}
    kids: dict[str, list[str]] = {r.path: [] for r in rules}
    for r in rules:
        if (parent := _nearest_above(r.path, by_path)) is not None:
            kids[parent].append(r.path)

    def region(path: str, deeper: tuple[str, ...] = ()) -> str:
        """`path`'s subpath minus the entries below it (and `deeper` regexes)."""
        where = f"(subpath {sbpl.string(path)})"
        nots = [f"(require-not (subpath {sbpl.string(k)}))" for k in kids[path]]
        nots += [f"(require-not (regex {sbpl.string(rx)}))" for rx in deeper]
        return f"(require-all {where} " + " ".join(nots) + ")" if nots else where

    out = ["(version 1)", "(deny default)", ";; processes: this sandbox's own", "(allow process-fork)"]
    out += ["(allow signal (target same-sandbox))", "(allow process-info* (target same-sandbox))"]
    out += ["(allow ipc-posix-sem)", "(allow dynamic-code-generation)"]
    sysctls = [f"(sysctl-name-prefix {sbpl.string(p)})" for p in SYSCTL_PREFIXES]
    sysctls += [f"(sysctl-name {sbpl.string(n)})" for n in SYSCTL_NAMES]
    out.append("(allow sysctl-read " + " ".join(sysctls) + ")")
    services = MACH_SERVICES + (TLS_SERVICES if plan.network != "off" else ())
    services += DNS_SERVICES if plan.network == "on" else ()
    out.append("(allow mach-lookup " + " ".join(f"(global-name {sbpl.string(s)})" for s in services) + ")")
    out.append(";; entries: each governs its subpath minus the entries below it; shortest first")
    for r in rules:
        out += _say(r.access, region(r.path))
    globs = []  # (access, regex for the profile, the same for Python's re)
    for g in sorted(plan.globs, key=lambda g: (g.access == "deny", g.pattern)):
        ere = sbpl.glob_regex(g.pattern, g.depth, deny=g.access == "deny")
        py = sbpl.python_regex(g.pattern, g.depth)
        if ere is not None and py is not None:
            globs.append((g.access, ere, py))
    if globs:
        out.append(";; globs (files made later too): after the entries, deny last")
        for glob_access, ere, _ in globs:
            out += _say(glob_access, f"(regex {sbpl.string(ere)})")
        again = [r for r in rules if any(py.match(r.path) for _, _, py in globs)]
        if again:
            out.append(";; entries inside a glob's match, again: an exact entry beats a glob")
            for r in again:  # ...but not over a deeper match of a glob that says otherwise
                below = (
                    sbpl.below_regex(g.pattern, g.depth, r.path) for g in plan.globs if g.access != r.access
                )
                out += _say(r.access, region(r.path, tuple(rx for rx in below if rx)))
    above = {r.path: _ancestors(r.path) for r in rules}
    effective = {
        a: nearest_access(access, a) for a in {a for up in above.values() for a in up} | {*ALIASES, "/dev"}
    }
    seen = {a for r in rules if r.access != "deny" for a in above[r.path]} | {*ALIASES, "/dev"}
    if hidden := sorted(a for a in seen if effective[a] in (None, "deny")):
        out.append(";; directories above a readable entry can be stat'ed (not listed), as on Linux")
        out.append(_literals("allow file-read-metadata", hidden))
    pins = {r.path for r in rules if r.pinned and r.access == "write"}
    pins |= {a for up in above.values() for a in up if effective[a] == "write"}
    if pins:
        out.append(";; writable directories above an entry cannot be renamed or removed")
        out.append(_literals("deny file-write-unlink", sorted(pins)))
    out.append(";; devices, after every entry (as on Linux)")
    out.append(_literals("allow file-read* file-write-data", DEVICES))
    out.append(_literals("allow file-read* file-write-data file-ioctl", TERMINALS))
    out.append(f"(allow file-read* file-write-data (regex {sbpl.string('^/dev/fd/[0-9]+$')}))")
    if tty:  # its own terminal (a PTY stockade made); other terminals are not in reach otherwise
        out.append(
            f"(allow file-read* file-write-data file-ioctl (regex {sbpl.string('^/dev/ttys[0-9]+$')}))"
        )
    if plan.network == "on":
        out.append(";; network: on")
        out += ["(allow system-socket)", '(allow network-outbound (remote ip "*:*"))']
        out += ['(allow network-inbound (local ip "*:*"))', '(allow network-bind (local ip "*:*"))']
        out.append(f"(allow network-outbound (remote unix-socket (path-literal {sbpl.string(MDNS_SOCKET)})))")
    elif plan.network == "proxy":
        out.append(";; network: only stockade's proxy, on loopback")
        out += ["(allow system-socket)", f'(allow network-outbound (remote ip "localhost:{proxy_port}"))']
    else:
        out.append(";; network: off")
    return "\n".join(out) + "\n"


def check(plan: Plan) -> list[str]:
    """Why Seatbelt cannot enforce `plan` exactly, one reason per problem (empty: it can)."""
    out = _profile_problems(plan)
    if plan.limits.processes is not None:
        out.append(
            "limits.processes: macOS has no per-sandbox process count (RLIMIT_NPROC counts the user's)"
        )
    if plan.limits.memory is not None:
        out.append("limits.memory: macOS does not enforce RLIMIT_AS")
    return out


def _profile_problems(plan: Plan) -> list[str]:
    """What no SBPL text can say exactly (the limits are the launcher's business)."""
    if plan.unconfined:
        return ["full-access runs unconfined: there is no Seatbelt profile for it"]
    out = []
    for r in plan.rules:
        path = r.path
        if (
            not path.startswith("/")
            or path.startswith("//")
            or "\0" in path
            or os.path.normpath(path) != path
        ):
            out.append(f"{r.reason}: {path!r} is not a normalized absolute path")
    for g in plan.globs:
        if g.access not in ("read", "deny"):
            out.append(f"{g.reason}: {g.pattern}: a glob can only read or deny")
            continue
        try:
            sbpl.glob_regex(g.pattern, g.depth, deny=g.access == "deny")
        except ValueError as exc:  # GlobProblem, or a NUL
            out.append(f"{g.reason}: {g.pattern}: {exc}")
    if plan.network not in ("off", "on", "proxy"):
        out.append(f"network = {plan.network!r} is not a mode stockade knows")
    return out


def unavailable() -> str | None:
    """Why this host cannot run the Seatbelt backend (None: it can)."""
    if sys.platform != "darwin":
        return f"the Seatbelt backend is macOS only (this is {sys.platform})"
    if not os.path.exists(SANDBOX_EXEC):
        return f"{SANDBOX_EXEC} is missing"
    return None


def _child(limits: Limits, tty: bool) -> None:
    """In the child, before exec: a session of its own (the tree is ended by its group), its
    terminal when it has one, and the rlimits macOS enforces."""
    os.setsid()
    if tty:
        import fcntl
        import termios

        fcntl.ioctl(0, getattr(termios, "TIOCSCTTY", 0x20007461), 0)
    if limits.cpu_seconds is not None:
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    if limits.file_size is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size, limits.file_size))
    if limits.open_files is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))


class SeatbeltBackend:
    """`sandbox-exec -p PROFILE -- COMMAND` (macOS only; experimental)."""

    name = "seatbelt"
    proxy_over_tcp = True  # no network namespace: the proxy listens on a loopback port instead

    def available(self) -> bool:
        return unavailable() is None

    def describe(self) -> str:
        return f"seatbelt via {SANDBOX_EXEC} (experimental: not yet verified on a Mac by this project)"

    def check(self, plan: Plan) -> None:
        if why := unavailable():
            raise SandboxUnavailable(why)
        problems = check(plan)
        if problems:
            raise UnsupportedPolicy(
                "the Seatbelt backend cannot enforce this Plan:\n  " + "\n  ".join(problems)
            )

    def launch(
        self, plan: Plan, argv: list[str], endpoint: ProxyEndpoint | None = None, *, tty: bool = False
    ) -> LaunchSpec:
        self.check(plan)
        port = None
        if plan.network == "proxy":
            if endpoint is None or endpoint.tcp_port is None:
                raise UnsupportedPolicy("network = proxy, but no proxy listens on a loopback port for it")
            port = endpoint.tcp_port
        scratch = None
        if any(r.kind == "scratch" for r in plan.rules):
            scratch = os.path.realpath(tempfile.mkdtemp(prefix="stockade-tmp-"))
        profile = render(plan, proxy_port=port, scratch_dir=scratch, tty=tty)
        env = dict(plan.env) | ({"TMPDIR": scratch} if scratch else {})
        if endpoint is not None and port is not None:
            env |= endpoint.environment(None)  # ssh through /usr/bin/nc's HTTP CONNECT
        spec = LaunchSpec([SANDBOX_EXEC, "-p", profile, "--", *argv], env, plan.cwd)
        spec.remove_after = [scratch] if scratch else []
        spec.preexec = lambda: _child(plan.limits, tty)
        return spec

    def finish(self, spec: LaunchSpec, returncode: int) -> int | None:
        return 128 - returncode if returncode < 0 else returncode

    def kill(self, spec: LaunchSpec, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    def cleanup(self, spec: LaunchSpec, pid: int) -> None:
        """The command's process group goes (one that called setsid() itself escapes it: no pid
        namespace on macOS), then the private TMPDIR."""
        self.kill(spec, pid)
        for path in spec.remove_after:
            shutil.rmtree(path, ignore_errors=True)
