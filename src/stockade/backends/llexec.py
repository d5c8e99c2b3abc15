"""How the Landlock backend confines the command and never stockade itself: a launcher.

The parent builds the Landlock ruleset (an fd) and the seccomp program; `llexec` (llexec.c,
compiled on first use into stockade's state directory) is spawned with them; it starts a
session, forks the command into its own process group with no_new_privs, landlock_restrict_self
and the filter applied, and stays outside as the supervisor that kills that group when the
command ends or stockade goes away. A static launcher keeps the common case fast: subprocess
still uses vfork, and no Python runs between fork and exec. Without a C compiler, `preexec()`
does the same steps in a preexec_fn (slower: it forces fork(), whose cost grows with the
parent's memory; and there is no supervisor).

PR_SET_PDEATHSIG follows the *thread* that spawned the command (as bwrap's --die-with-parent):
spawn from a thread that outlives the command, or the command is killed when that thread ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ..state import find_state_dir

SOURCE = Path(__file__).with_name("llexec.c")
SOURCES = tuple(
    SOURCE.with_name(n) for n in ("llexec.c", "guard.c", "guard.h", "bridge.c", "bridge.h", "fdpass.h")
)
SYS_LANDLOCK_RESTRICT_SELF = 446  # the same number on every architecture
PR_SET_PDEATHSIG, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS = 1, 22, 38
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 28, 47, 4
CAP_SETPCAP, CAPABILITY_VERSION_3 = 8, 0x20080522
SECUREBITS_LOCKED_DOWN = 0xFF  # noroot, no_setuid_fixup, keep_caps locked; no ambient raise
SECCOMP_MODE_FILTER = 2
SIGKILL, ESRCH = 9, 3
PROBE = "/nonexistent/llexec-probe"  # the post-build check execs this and expects ENOENT

_found: tuple[str | None, str | None] | None = None  # (launcher, why there is none), per process


def launcher() -> str | None:
    """The compiled launcher's path (built on first use), or None: see launcher_problem()."""
    global _found
    if _found is None:
        try:
            _found = _locate()
        except OSError as exc:
            _found = (None, f"could not prepare the Landlock launcher: {exc}")
    return _found[0]


def launcher_problem() -> str | None:
    """Why there is no launcher (for doctor), or None when there is one."""
    launcher()
    assert _found is not None
    return _found[1]


def _locate() -> tuple[str | None, str | None]:
    state = find_state_dir()
    if state is None:
        return None, "no private state directory to build the Landlock launcher in"
    source = b"\0".join(path.read_bytes() for path in SOURCES)
    digest = hashlib.sha256(source + b"\0" + os.uname().machine.encode()).hexdigest()[:24]
    path = os.path.join(state, f"llexec-{digest}")
    if _trusted(path):
        return path, None
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return (
            None,
            "no C compiler (cc or gcc) to build the Landlock launcher (install one, run stockade once)",
        )
    failed = f"{path}.failed"  # a failed build is not retried by every stockade run (~0.3 s each)
    try:
        with open(failed) as fh:
            return None, f"{fh.read().strip()} (remove {failed} to try again)"
    except FileNotFoundError:
        pass
    problem = _build(compiler, path)
    if problem is None:
        _forget_old_builds(state, os.path.basename(path))
        return path, None
    with open(failed, "w") as fh:
        fh.write(problem + "\n")
    return None, problem


def _forget_old_builds(state: str, current: str, max_age: float = 86400) -> None:
    """Launchers of other stockade versions, unused for a day (a concurrent install may still
    use a fresh one; it would only rebuild it)."""
    now = time.time()
    for entry in os.scandir(state):
        if entry.name.startswith("llexec-") and entry.name != current:
            with contextlib.suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_atime > max_age:
                    os.unlink(entry.path)


def _trusted(path: str) -> bool:
    """Ours and writable by no one else. The state dir is private and hidden from every sandbox;
    still, a file another uid left there (root run with our HOME) is rebuilt, never exec'd."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_uid == os.getuid()
        and not st.st_mode & 0o022
        and st.st_mode & stat.S_IXUSR != 0
    )


def _build(compiler: str, path: str) -> str | None:
    """Compile into a temporary name, prove the binary runs, then rename it into place."""
    tmp = f"{path}.{os.getpid()}.tmp"
    env = {**os.environ, "LC_ALL": "C"}
    errors = ""
    try:
        # Static when the host has a static libc: no dynamic loader work on every command.
        for flags in (["-static"], []):
            done = subprocess.run(
                [compiler, "-O2", *flags, "-o", tmp, *(str(p) for p in SOURCES if p.suffix == ".c")],
                env=env,
                capture_output=True,
                text=True,
            )
            if done.returncode == 0:
                break
            lines = done.stderr.strip().splitlines()
            errors = lines[-1] if lines else f"exit status {done.returncode}"
        else:
            return f"building the Landlock launcher with {compiler} failed: {errors}"
        os.chmod(tmp, 0o700)
        problem = _probe(tmp)
        if problem:
            return f"the Landlock launcher built with {compiler} does not work here: {problem}"
        os.replace(tmp, path)
        return None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _probe(binary: str) -> str | None:
    """Run it once: it must get through setsid, pdeathsig and no_new_privs and report exec."""
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    try:
        proc = subprocess.Popen(
            spec_argv(binary, status_w, -1, -1, [PROBE]), pass_fds=(status_w,), stdin=subprocess.DEVNULL
        )
    except OSError as exc:  # a noexec state directory, a foreign binary format
        os.close(status_r)
        return str(exc)
    finally:
        os.close(status_w)
    status = read_status(status_r)
    proc.wait()
    if proc.returncode == 127 and status == "exec: No such file or directory":
        return None
    return f"exit {proc.returncode}, status {status!r}"


def spec_argv(
    launcher: str,
    status_fd: int,
    ruleset_fd: int,
    seccomp_fd: int,
    argv: list[str],
    *,
    guard_fd: int = -1,
    supervisor_ruleset_fd: int = -1,
    options: list[str] | None = None,
) -> list[str]:
    """The launcher's command line; pass the fds with pass_fds (-1 skips a step).

    `guard_fd` reads the guard's entries (see guard.c); `supervisor_ruleset_fd` confines the
    supervisor that performs the guarded operations; `options`: --cgroup/--limits (llexec.c).
    """
    if not argv:
        raise ValueError("no command given")
    fds = (status_fd, ruleset_fd, seccomp_fd, guard_fd, supervisor_ruleset_fd)
    return [launcher, *(options or ()), *(str(fd) for fd in fds), *argv]


def read_status(fd: int) -> str | None:
    """Read the status pipe to EOF and close it: None means the command was exec'd, else the
    launcher's error line ("<step>: <strerror>")."""
    chunks = []
    try:
        while data := os.read(fd, 4096):
            chunks.append(data)
    finally:
        os.close(fd)
    text = b"".join(chunks).decode(errors="replace").strip()
    return text or None


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(ctypes.c_char))]


_libc: ctypes.CDLL | None = None


def preexec(ruleset_fd: int, bpf: bytes, *, status_fd: int | None = None) -> Callable[[], None]:
    """A subprocess preexec_fn doing llexec's steps, for hosts with no C compiler.

    Everything (libc function pointers, ctypes arguments, the sock_fprog and its buffer) is
    made here, in the parent; after fork the function only makes foreign calls, so it takes no
    import lock and allocates nothing but small ints. It is still a preexec_fn: CPython warns
    that one is unsafe when the parent has other threads (a lock another thread held at fork
    stays held in the child), and it forces fork() instead of vfork(), whose cost grows with
    the parent's memory. Do not combine it with start_new_session (setsid would fail).

    A failed step raises in the child, so Popen raises SubprocessError and nothing runs; with
    `status_fd` (the write end of the status pipe, kept open until Popen returns) the
    "<step>: <strerror>" line is written there first. Exec failures are Popen's own OSError.
    """
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    libc = _libc
    setsid, prctl, syscall, getppid, close = libc.setsid, libc.prctl, libc.syscall, libc.getppid, libc.close
    ulong, zero = ctypes.c_ulong, ctypes.c_ulong(0)
    pdeathsig = (ctypes.c_int(PR_SET_PDEATHSIG), ulong(SIGKILL), zero, zero, zero)
    nnp = (ctypes.c_int(PR_SET_NO_NEW_PRIVS), ulong(1), zero, zero, zero)
    restrict = (ctypes.c_long(SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_long(ruleset_fd), ctypes.c_long(0))
    if len(bpf) % 8 or not bpf:
        raise ValueError("a seccomp program is a non-empty array of 8-byte instructions")
    insns = ctypes.create_string_buffer(bpf, len(bpf))
    # Assigned through a ctypes pointer, so `prog` keeps `insns` alive as long as the function.
    prog = _SockFprog(len(bpf) // 8, ctypes.cast(insns, ctypes.POINTER(ctypes.c_char)))
    seccomp = (ctypes.c_int(PR_SET_SECCOMP), ulong(SECCOMP_MODE_FILTER), ctypes.byref(prog), zero, zero)
    capset, header = libc.capset, (ctypes.c_uint32 * 2)(CAPABILITY_VERSION_3, 0)
    no_caps = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable x 2 words, all zero
    held = (ctypes.c_uint32 * 6)()
    if libc.capget(header, held) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    may_lock = bool(held[0] & (1 << CAP_SETPCAP))  # root: lock securebits, empty the bounding set
    with open("/proc/sys/kernel/cap_last_cap") as fh:
        last_cap = int(fh.read())
    bounding = [(ctypes.c_int(PR_CAPBSET_DROP), ulong(cap), zero, zero, zero) for cap in range(last_cap + 1)]
    ambient = (ctypes.c_int(PR_CAP_AMBIENT), ulong(PR_CAP_AMBIENT_CLEAR_ALL), zero, zero, zero)
    securebits = (ctypes.c_int(PR_SET_SECUREBITS), ulong(SECUREBITS_LOCKED_DOWN), zero, zero, zero)
    parent = os.getpid()
    ctypes.set_errno(0)  # creates ctypes' per-thread errno slot now, not in the child
    get_errno, strerror, write = ctypes.get_errno, os.strerror, os.write

    def fail(step: str, err: int) -> None:
        if status_fd is not None:
            write(status_fd, f"{step}: {strerror(err)}\n".encode())
        raise OSError(err, f"stockade sandbox setup failed at {step}")

    def apply() -> None:
        if setsid() < 0:
            fail("setsid", get_errno())
        if prctl(*pdeathsig) != 0:
            fail("pdeathsig", get_errno())
        if getppid() != parent:
            fail("parent", ESRCH)
        # As llexec's drop_capabilities(): a root command keeps no capability at all.
        prctl(*ambient)
        if may_lock:
            if prctl(*securebits) != 0:
                fail("securebits", get_errno())
            for args in bounding:
                if prctl(*args) != 0:
                    fail("drop bounding capability", get_errno())
        if capset(header, no_caps) != 0:
            fail("capset", get_errno())
        if prctl(*nnp) != 0:
            fail("no_new_privs", get_errno())
        if ruleset_fd >= 0:
            if syscall(*restrict) != 0:
                fail("landlock_restrict_self", get_errno())
            close(ruleset_fd)
        if prctl(*seccomp) != 0:
            fail("seccomp", get_errno())

    return apply
