"""Landlock + seccomp backend: a sandbox where user namespaces are refused (containers, Ubuntu 24.04).

Landlock grants are allowlists attached to inodes, and a grant on a directory covers everything
beneath it. So a Plan maps onto a ruleset exactly when every entry is at least as wide as the
entries above it. A narrower entry under a *readable* directory (`~/.ssh` denied under `/`) is
built by granting the directory's other children instead, recursively along the path to the
narrower entry; the directories on that path are then not listable and files created in them
later are not readable (stricter, never weaker). A narrower entry under a *writable* directory
cannot be built that way: a new file there can only be written through a grant on the
directory, which would cover the narrower entry too. Those entries are *guarded* instead: the
launcher's supervisor performs the command's writes (and, when something is denied, its opens)
and refuses what touches a guarded entry (guard.c). Landlock does not mediate chmod, chown,
utimes or xattrs at all; the guard refuses those outside the Plan's write entries. Without the
launcher (no C compiler) Plans with guarded entries are refused and those syscalls are refused
outright. A private /tmp needs a mount, so it is refused.

Nothing here runs in the stockade process itself: the ruleset is built here as an fd, and a
tiny launcher (`llexec`) applies it, no-new-privs and the seccomp filter in the child, then
execs the command.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import signal
import stat
import struct
import sys
import tempfile
import threading
from dataclasses import dataclass, field, replace

from ..errors import SandboxUnavailable, UnsupportedPolicy
from ..plan import PathRule, Plan
from ..state import find_state_dir
from . import limits, seccomp
from .base import LaunchSpec, ProxyEndpoint

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446  # the same on every arch
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH, RULE_NET_PORT = 1, 2

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
MAKE_CHAR, MAKE_BLOCK = 1 << 6, 1 << 11  # device nodes: never granted (the disks are devices)
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
FS_RIGHTS = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}  # ABI 5+: below
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX, SCOPE_SIGNAL = 1 << 0, 1 << 1
FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # what a rule on a file may hold
READ = EXECUTE | READ_FILE | READ_DIR
# Device files every tool writes to; /dev itself is read-only like the rest of the system.
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/pts")
# Below ABI 6 a command could signal (kill) host processes, below ABI 3 truncate files it may
# only read: Landlock could not hold those Plans exactly, so older kernels are refused.
MIN_ABI = 6


def fs_rights(abi: int) -> int:
    return FS_RIGHTS.get(abi, (1 << 16) - 1)


@functools.cache
def kernel_abi() -> int:
    """The Landlock ABI the running kernel offers; 0 when it has none (or it is disabled)."""
    if not sys.platform.startswith("linux"):  # the syscall number means something else elsewhere
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    version = libc.syscall(SYS_CREATE_RULESET, None, 0, CREATE_RULESET_VERSION)
    return max(int(version), 0)


@dataclass
class Ruleset:
    """The Landlock ruleset for a Plan, as data (explain prints it; launch turns it into an fd)."""

    abi: int
    handled_fs: int
    handled_net: int
    scoped: int
    rules: list[tuple[str, int]] = field(default_factory=list)  # (path, allowed rights)
    notes: list[str] = field(default_factory=list)
    writable: set[str] = field(default_factory=set)  # rule paths that are Plan write entries
    guarded: list[tuple[str, int]] = field(default_factory=list)  # narrower inside writable: the guard's
    pinned: list[str] = field(default_factory=list)  # never renamed or removed (.git)
    scratch: str | None = None  # hidden; each command gets a private writable TMPDIR instead

    def guard_entries(self) -> bytes:
        """What the launcher's guard reads: NUL-separated KIND, RIGHTS, PATH records."""
        records = [("W" if path in self.writable else "R", rights, path) for path, rights in self.rules]
        records += [("G", rights, path) for path, rights in self.guarded]
        records += [("P", 0, path) for path in self.pinned]
        return b"".join(f"{k}\0{r}\0".encode() + os.fsencode(path) + b"\0" for k, r, path in records)

    def for_supervisor(self) -> Ruleset:
        """The supervisor performs the guarded operations under the same grants, and reads
        /proc (a command's umask); it signals nothing outside its own command."""
        return Ruleset(self.abi, self.handled_fs, self.handled_net, 0, [*self.rules, ("/proc", READ)])


def translate(plan: Plan, abi: int, *, guard: bool = True) -> Ruleset:
    """Plan -> Ruleset, exactly or not at all: UnsupportedPolicy lists every rule it cannot hold.

    `guard`: the launcher's guard is available to keep entries narrower inside writable ones.
    """
    handled = fs_rights(abi)
    write = handled & ~(MAKE_CHAR | MAKE_BLOCK)
    rights = {"read": READ, "write": write, "deny": 0}
    entries = {r.path: r for r in plan.rules}
    state = find_state_dir()
    if state is not None:  # stockade's own state (and its launcher) is never reachable inside
        entries.setdefault(os.path.realpath(state), _synthetic(os.path.realpath(state), "stockade state"))
    # The host's /dev and /proc (no fresh ones without a mount): only the harmless devices, and
    # /proc's files that are not other processes (cpuinfo, meminfo, sys, ...), added below.
    entries.setdefault("/dev", _synthetic("/dev", "host devices (only null, zero, tty, ... inside)"))
    entries.setdefault("/proc", _synthetic("/proc", "host processes (only /proc's system files inside)"))
    placeholders = {p.path for p in plan.placeholders}
    problems: list[str] = []
    holes: dict[str, set[str]] = {}  # readable entry -> narrower entries below it
    out = Ruleset(abi, handled, 0, 0)
    for path, rule in sorted(entries.items()):
        if rule.kind == "scratch":
            # A private tmpfs needs a mount namespace. Stricter instead: the path is hidden and
            # each command gets a fresh private directory as TMPDIR, removed when it ends.
            if path != "/tmp":
                problems.append(f"{path}: a private tmpfs needs a mount namespace")
                continue
            out.scratch = path
            entries[path] = rule = _synthetic(path, "private tmp (TMPDIR is a fresh directory)")
        above = _entries_above(entries, path)
        inside = next((a for a in above if a.access == "write"), None)
        if rule.access != "write" and inside is not None:
            where = f"{path} ({rule.access}, {rule.reason}) is inside writable {inside.path}"
            if not guard:
                problems.append(f"{where}: only the launcher's guard keeps it narrower")
            elif not _exists_at_launch(path, placeholders):
                problems.append(f"{where}: neither it nor its parent exists, for the guard to hold")
            else:
                out.guarded.append((path, rights[rule.access]))
            continue
        # A grant covers everything beneath it: every wider entry above must go around this one.
        for a in above:
            if rights[rule.access] & rights[a.access] != rights[a.access]:
                holes.setdefault(a.path, set()).add(path)
    if problems:
        if not guard and any("launcher's guard" in p for p in problems):
            problems.append(f"there is no launcher: {guard_missing()}")
        raise UnsupportedPolicy(
            "the Landlock backend cannot enforce this Plan exactly:\n  " + "\n  ".join(problems)
        )
    guarded = {path for path, _ in out.guarded}
    for path, rule in sorted(entries.items()):
        allowed = rights[rule.access]
        if rule.pinned:
            out.pinned.append(path)
        if not allowed or path in guarded:
            continue
        if rule.access == "write":
            out.writable.add(path)
        if path in holes:
            _grant_around(path, allowed, holes[path], out)
        else:
            out.rules.append((path, allowed))
    if out.guarded:
        out.notes.append(f"{len(out.guarded)} entr(ies) inside writable directories held by the guard")
    if plan.access("/proc") in ("read", "write"):
        for entry in os.scandir("/proc"):  # a process's own /proc/self is not reachable either
            if not entry.name.isdigit() and not entry.is_symlink():
                out.rules.append((entry.path, READ if entry.is_dir() else READ & FILE_ONLY))
    for device in DEVICES:  # as bubblewrap's fresh /dev: every sandbox has null, zero, tty, ...
        if os.path.exists(device):
            out.rules.append((device, READ | WRITE_FILE | (IOCTL_DEV if abi >= 5 else 0)))
    if plan.network != "on" and abi >= 4:
        out.handled_net = NET_BIND_TCP | NET_CONNECT_TCP  # no port is allowed: all TCP refused
    if abi >= 6:
        out.scoped = SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL
    return out


def guard_missing() -> str:
    from . import llexec

    return llexec.launcher_problem() or "the launcher is unavailable"


def _exists_at_launch(path: str, placeholders: set[str]) -> bool:
    """The guard holds inodes: the path, or at least its parent, must exist when it starts."""
    parent = os.path.dirname(path)
    return any(os.path.lexists(p) or p in placeholders for p in (path, parent))


def _synthetic(path: str, reason: str) -> PathRule:
    return PathRule(path, "deny", "dir", reason, path)


def _entries_above(entries: dict[str, PathRule], path: str) -> list[PathRule]:
    found = []
    while path != "/":
        path = os.path.dirname(path)
        if path in entries:
            found.append(entries[path])
    return found


def _grant_around(directory: str, allowed: int, holes: set[str], out: Ruleset) -> None:
    """Grant `allowed` on everything under `directory` except the holes, through its children."""
    out.notes.append(f"{directory}: granted child by child around {len(holes)} narrower entr(ies)")
    stack = [directory]
    while stack:
        current = stack.pop()
        try:
            children = list(os.scandir(current))
        except OSError:
            continue
        for child in children:
            path = child.path
            if path in holes:
                continue
            if any(h.startswith(path + "/") for h in holes):
                if child.is_dir(follow_symlinks=False):
                    stack.append(path)
                continue
            if child.is_symlink():
                continue  # a link is checked at its target; the link itself needs no grant
            is_dir = child.is_dir(follow_symlinks=False)
            out.rules.append((path, allowed if is_dir else allowed & FILE_ONLY))


@functools.cache
def _syscall() -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    fn = ctypes.CDLL(None, use_errno=True).syscall
    fn.restype = ctypes.c_long
    return fn


def build_fd(ruleset: Ruleset) -> int:
    """The ruleset as a Landlock fd (CLOEXEC), ready for landlock_restrict_self in the child."""
    syscall = _syscall()
    attr = struct.pack("=QQQ", ruleset.handled_fs, ruleset.handled_net, ruleset.scoped)
    size = 8 if ruleset.abi < 4 else 16 if ruleset.abi < 6 else 24
    buf = ctypes.create_string_buffer(attr[:size], size)
    fd = syscall(ctypes.c_long(SYS_CREATE_RULESET), buf, ctypes.c_size_t(size), ctypes.c_uint32(0))
    if fd < 0:
        err = ctypes.get_errno()
        raise SandboxUnavailable(f"landlock_create_ruleset failed: {os.strerror(err)}; nothing was run")
    rule = ctypes.create_string_buffer(12)  # struct landlock_path_beneath_attr (packed)
    try:
        for path, allowed in ruleset.rules:
            try:
                pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # gone since the Plan was made: nothing to grant
            try:
                if not stat.S_ISDIR(os.fstat(pfd).st_mode):
                    allowed &= FILE_ONLY
                struct.pack_into("=Qi", rule, 0, allowed & ruleset.handled_fs, pfd)
                if syscall(ctypes.c_long(SYS_ADD_RULE), fd, RULE_PATH_BENEATH, rule, 0) != 0:
                    err = ctypes.get_errno()
                    raise SandboxUnavailable(f"landlock_add_rule({path}) failed: {os.strerror(err)}")
            finally:
                os.close(pfd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _memfd(name: str, data: bytes) -> int:
    """An fd the launcher reads `data` from (a pipe could fill up before anyone reads it)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _abi_cap(text: str) -> int:
    """STOCKADE_LANDLOCK_MAX_ABI (tests simulate older kernels with it): empty means no cap."""
    if not text.strip():
        return 0
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 1:
        raise SandboxUnavailable(
            f"STOCKADE_LANDLOCK_MAX_ABI={text!r} is not a Landlock ABI version (1, 2, ...); "
            "unset it to use the kernel's"
        )
    return value


class LandlockBackend:
    name = "landlock"

    def __init__(self, max_abi: int | None = None) -> None:
        self._last: tuple[Plan, Ruleset] | None = None
        self._fds: dict[str, tuple[object, object, int]] = {}  # role -> (ruleset key, inodes, fd)
        self._lock = threading.Lock()
        abi = kernel_abi()
        cap = max_abi if max_abi is not None else _abi_cap(os.environ.get("STOCKADE_LANDLOCK_MAX_ABI", ""))
        self.abi = min(abi, cap) if cap else abi
        if abi < 1:
            raise SandboxUnavailable(
                "this kernel offers no Landlock (needs Linux 5.13+ with landlock in the lsm= list)"
            )
        if self.abi < MIN_ABI:
            raise SandboxUnavailable(
                f"Landlock ABI {self.abi} is too old: before ABI 6 a sandboxed command can still "
                "signal host processes, and before ABI 3 truncate files it may only read; stockade "
                "refuses rather than run a weaker sandbox (needs Linux 6.12+)"
            )

    def describe(self) -> str:
        return f"landlock ABI {self.abi} + seccomp (no namespaces)"

    def check(self, plan: Plan) -> None:
        if plan.network == "proxy":
            raise UnsupportedPolicy(
                "network = proxy: Landlock's TCP rules name ports, not addresses, so it cannot keep "
                "connections to the proxy alone; the proxy needs bubblewrap (a network namespace)"
            )
        if why := limits.refusal(plan.limits, self.name):
            raise UnsupportedPolicy(why)
        self._translated(plan)

    def _translated(self, plan: Plan) -> Ruleset:
        """check() then launch() translate the same Plan: do it once."""
        from . import llexec

        if self._last is None or self._last[0] is not plan:
            self._last = (plan, translate(plan, self.abi, guard=llexec.launcher() is not None))
        return self._last[1]

    def _ruleset_fd(self, ruleset: Ruleset, role: str) -> int:
        """The ruleset as an fd, kept for the next command while it would be built the same.

        Rules hold inodes, so "the same" means the same rules on the same inodes: every path is
        stat'ed again (cheap next to building: about a quarter of the time, measured).
        """
        key = (ruleset.handled_fs, ruleset.handled_net, ruleset.scoped, tuple(ruleset.rules))
        stamps = tuple(_inode(path) for path, _ in ruleset.rules)
        with self._lock:  # each launch gets its own dup: replacing the cache never pulls it away
            kept = self._fds.get(role)
            if kept is None or kept[0] != key or kept[1] != stamps:
                fd = build_fd(ruleset)
                if kept is not None:
                    os.close(kept[2])
                kept = self._fds[role] = (key, stamps, fd)
            return os.dup(kept[2])

    def launch(
        self, plan: Plan, argv: list[str], endpoint: ProxyEndpoint | None = None, *, tty: bool = False
    ) -> LaunchSpec:
        """`tty` needs nothing more: the launcher's supervisor hands a PTY on stdin to the command.
        `endpoint` is never used: check() refuses proxy mode."""
        from . import llexec

        ruleset = self._translated(plan)
        env, private = plan.env, None
        if ruleset.scratch is not None:  # a fresh TMPDIR for this command, removed after it
            private = tempfile.mkdtemp(prefix="stockade-tmp-", dir=ruleset.scratch)
            ruleset = replace(
                ruleset, rules=[*ruleset.rules, (private, fs_rights(self.abi) & ~(MAKE_CHAR | MAKE_BLOCK))]
            )
            ruleset.writable = {*ruleset.writable, private}
            env = {**env, "TMPDIR": private}
        launcher = llexec.launcher()
        network = plan.network == "on"
        bpf = seccomp.build_filter(network=network, shared_host=True, refuse_metadata=not launcher)
        ruleset_fd = self._ruleset_fd(ruleset, "command")
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        if launcher is None:  # no compiler here: the slower fork path, with the same steps
            if plan.limits.items():
                raise UnsupportedPolicy(f"[limits] need stockade's launcher: {llexec.launcher_problem()}")
            spec = LaunchSpec(argv=argv, env=env, cwd=plan.cwd, status_fd=status_r)
            spec.preexec = llexec.preexec(ruleset_fd, bpf, status_fd=status_w)
            spec.close_after_spawn += [ruleset_fd, status_w]
            spec.remove_after = [private] if private else []
            return spec
        supervisor_fd = self._ruleset_fd(ruleset.for_supervisor(), "supervisor")
        filter_fd = _memfd("stockade-seccomp", bpf)
        guard_fd = _memfd("stockade-guard", ruleset.guard_entries())
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(report_w, False)  # a full pipe drops reports, never stalls the guard
        fds = (status_w, ruleset_fd, filter_fd, guard_fd, supervisor_fd, report_w)
        rlimits, cgroup = limits.prepare_limits(plan.limits, self.name)
        options = ["--report", str(report_w)]
        options += ["--cgroup", cgroup.procs] if cgroup else []
        options += ["--limits", rlimits] if rlimits else []
        return LaunchSpec(
            argv=llexec.spec_argv(
                launcher,
                *fds[:3],
                argv,
                guard_fd=guard_fd,
                supervisor_ruleset_fd=supervisor_fd,
                options=options,
            ),
            env=env,
            cwd=plan.cwd,
            pass_fds=fds,
            status_fd=status_r,
            close_after_spawn=list(fds),
            supervisor=True,
            remove_after=[private] if private else [],
            cgroup=cgroup,
            report_fd=report_r,
        )

    def finish(self, spec: LaunchSpec, returncode: int) -> int | None:
        from . import llexec

        problem = llexec.read_status(spec.status_fd) if spec.status_fd is not None else None
        spec.status_fd = None
        if problem is None:
            return 128 - returncode if returncode < 0 else returncode
        if problem.startswith("exec"):
            return 127
        raise SandboxUnavailable(
            f"the Landlock launcher could not sandbox the command ({problem}); nothing ran"
        )

    def kill(self, spec: LaunchSpec, pid: int) -> None:
        """No pid namespace here. The launcher's supervisor kills the command's process group
        on SIGTERM; without a launcher (preexec) the command leads its own group: kill that."""
        if spec.supervisor:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        else:
            kill_session(pid)

    def cleanup(self, spec: LaunchSpec, pid: int) -> None:
        if not spec.supervisor:  # the supervisor already did, before it exited
            kill_session(pid)
        for path in spec.remove_after:
            shutil.rmtree(path, ignore_errors=True)


def kill_session(sid: int) -> None:
    """SIGKILL the command's whole process group: the launcher's setsid() made it, and setsid()
    and setpgid() are refused inside, so nothing the command started can be outside it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(sid, signal.SIGKILL)
