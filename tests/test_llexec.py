"""The Landlock launcher, for real: a ruleset and a seccomp filter reach the command only.

Every scenario runs in a fresh Python process as root and as the unprivileged user (this file
is also the driver script: `python test_llexec.py run MODE IN OUT`), so the compiled launcher
is built in that identity's own state directory, and "stockade is not restricted afterwards"
is checked in a process that really spawned sandboxed commands. Both the compiled launcher
and the preexec_fn fallback are exercised.
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Who

from stockade.backends import llexec
from stockade.backends.seccomp import build_filter

MODES = ("launcher", "preexec")
EXECUTE, READ_FILE, READ_DIR = 1 << 0, 1 << 2, 1 << 3
SYS_CREATE_RULESET, SYS_ADD_RULE = 444, 445


def abi() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return max(int(libc.syscall(SYS_CREATE_RULESET, None, 0, 1)), 0)


pytestmark = pytest.mark.skipif(abi() < 1, reason="this kernel offers no Landlock")


# ---- the driver (runs as `who`, in its own process) ----


def make_ruleset(inside: str) -> int:
    """Every filesystem right of the running ABI handled; / read-only, `inside` fully writable."""
    version = abi()
    handled = (1 << (13 if version == 1 else 14 if version == 2 else 15 if version < 5 else 16)) - 1
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(struct.pack("=Q", handled), 8)
    fd = libc.syscall(SYS_CREATE_RULESET, attr, 8, 0)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    for path, allowed in (("/", READ_FILE | READ_DIR | EXECUTE), (inside, handled)):
        pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed, pfd), 12)
        assert libc.syscall(SYS_ADD_RULE, fd, 1, rule, 0) == 0, os.strerror(ctypes.get_errno())
        os.close(pfd)
    return fd


def spawn(mode: str, ruleset_fd: int, argv: list[str], **popen: object) -> tuple[int | None, str | None, str]:
    """(exit status or None, launcher's error line or None, stdout) of `argv` run confined."""
    bpf = build_filter(network=False)
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    popen = {"stdout": subprocess.PIPE, "stdin": subprocess.DEVNULL, "text": True, **popen}
    try:
        if mode == "launcher":
            path = llexec.launcher()
            assert path is not None, llexec.launcher_problem()
            filter_r, filter_w = os.pipe()
            os.write(filter_w, bpf)
            os.close(filter_w)
            fds = (status_w, ruleset_fd, filter_r)
            try:
                keep = tuple(fd for fd in fds if fd >= 0)
                proc = subprocess.Popen(llexec.spec_argv(path, *fds, argv), pass_fds=keep, **popen)  # type: ignore[call-overload]
            finally:
                os.close(filter_r)
        else:
            hook = llexec.preexec(ruleset_fd, bpf, status_fd=status_w)
            proc = subprocess.Popen(argv, preexec_fn=hook, **popen)  # type: ignore[call-overload]
    except subprocess.SubprocessError:  # the preexec_fn failed: its line is in the status pipe
        os.close(status_w)
        return None, llexec.read_status(status_r), ""
    except OSError as exc:  # Popen's own exec failure (preexec mode)
        os.close(status_w)
        llexec.read_status(status_r)
        return None, f"exec: {exc.strerror}", ""
    os.close(status_w)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, llexec.read_status(status_r), out


SCRIPT = r"""
echo x > "$OUT/from-inside"; echo "outside=$?"
echo x > "$IN/from-inside"; echo "inside=$?"
unshare -U true; echo "unshare=$?"
(ls /proc/$$/fd > "$IN/fds")  # in a subshell: no pipe or saved fd of sh while ls looks
printf fds=; sort -n "$IN/fds" | tr '\n' ,; echo
echo "sid=$(cut -d' ' -f6 /proc/$$/stat) pgid=$(cut -d' ' -f5 /proc/$$/stat) pid=$$"
grep -E '^(NoNewPrivs|Seccomp|CapPrm|CapEff|CapBnd|CapAmb):' /proc/$$/status | tr -d '\t'
mknod "$IN/disk" b 7 0 2>/dev/null; echo "mknod=$?"
"""


def parse(out: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in out.replace(":", "=").split() if "=" in word)


def self_status() -> dict[str, str]:
    with open("/proc/self/status") as fh:
        fields = (line.split(":", 1) for line in fh)
        return {k: v.strip() for k, v in fields if k in ("NoNewPrivs", "Seccomp")}


def scenario(mode: str, inside: str, outside: str) -> dict[str, object]:
    """Everything the tests assert, observed from one stockade-like process."""
    ruleset = make_ruleset(inside)
    env = {**os.environ, "IN": inside, "OUT": outside}
    got: dict[str, object] = {}
    rc, status, out = spawn(mode, ruleset, ["sh", "-c", SCRIPT], env=env)
    got["confined"] = {"rc": rc, "status": status, **parse(out)}
    rc, status, out = spawn(mode, -1, ["sh", "-c", SCRIPT], env=env)  # seccomp alone
    got["seccomp_only"] = {"rc": rc, "status": status, **parse(out)}
    got["missing"] = spawn(mode, ruleset, ["/nonexistent/program"])[:2]
    with open(os.devnull) as not_a_ruleset:
        got["bad_ruleset"] = spawn(mode, not_a_ruleset.fileno(), ["true"])[:2]
    os.close(ruleset)
    try:  # and the process that launched all of that is as free as before
        Path(outside, "from-stockade").write_text("x")
        got["stockade_writes_outside"] = True
    except OSError:
        got["stockade_writes_outside"] = False
    got["stockade_status"] = self_status()
    return got


def orphan(mode: str) -> None:
    """Start a confined `sleep`, print its pid once it runs, and die without waiting for it."""
    argv, hook = ["sh", "-c", "echo up; exec sleep 60"], None
    if mode == "launcher":
        argv = llexec.spec_argv(llexec.launcher() or "", -1, -1, -1, argv)
    else:
        hook = llexec.preexec(-1, build_filter(network=False))
    proc = subprocess.Popen(
        argv, preexec_fn=hook, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    print(proc.pid, flush=True)
    os._exit(0)


def build() -> None:
    """Report what launcher() found, for the build tests."""
    print(json.dumps({"launcher": llexec.launcher(), "problem": llexec.launcher_problem()}))


if __name__ == "__main__":
    if sys.argv[1] == "run":
        print(json.dumps(scenario(*sys.argv[2:5])))
    elif sys.argv[1] == "orphan":
        orphan(sys.argv[2])
    else:
        build()


# ---- the tests ----


def drive(who: Who, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return who.run([who.python, __file__, *args], "/", env=env)


_scenarios: dict[tuple[str, str], dict] = {}


@pytest.fixture(params=MODES)
def observed(request: pytest.FixtureRequest, who: Who) -> dict:
    """One scenario run per identity and mode, shared by the tests that read it."""
    key = (who.name, request.param)
    if key not in _scenarios:
        inside, outside = who.mkdtemp("in-"), who.mkdtemp("out-")
        done = drive(who, "run", request.param, str(inside), str(outside))
        assert done.returncode == 0, done.stderr
        _scenarios[key] = {"mode": request.param, "who": who.name, **json.loads(done.stdout)}
    return _scenarios[key]


def test_ruleset_and_filter_confine_the_command(observed: dict) -> None:
    confined = observed["confined"]
    assert confined["rc"] == 0 and confined["status"] is None
    assert confined["outside"] != "0", "a write outside the granted directory must fail"
    assert confined["inside"] == "0"
    assert confined["unshare"] != "0", "the seccomp filter must refuse new namespaces"
    assert confined["NoNewPrivs"] == "1" and confined["Seccomp"] == "2"


def test_no_capability_survives_even_for_root(observed: dict) -> None:
    """Landlock does not mediate chown, mknod or sethostname: a root command keeps nothing."""
    for case in ("confined", "seccomp_only"):
        got = observed[case]
        assert got["CapPrm"] == got["CapEff"] == got["CapAmb"] == "0000000000000000", got
        assert got["mknod"] != "0", "a device node (the host's disks) must not be creatable"
        if observed["who"] == "root":
            assert got["CapBnd"] == "0000000000000000", got


def test_seccomp_alone_when_no_ruleset(observed: dict) -> None:
    alone = observed["seccomp_only"]
    assert alone["outside"] == "0" and alone["unshare"] != "0"


def test_no_fd_leaks_into_the_command(observed: dict) -> None:
    assert observed["confined"]["fds"] == "0,1,2,", "status, ruleset and filter fds must all be closed"


def test_command_leads_its_own_process_group_in_a_new_session(observed: dict) -> None:
    """The launcher's supervisor leads the session and kills the command's group; the preexec
    fallback has no supervisor, so the command leads the session itself."""
    confined = observed["confined"]
    assert confined["pgid"] == confined["pid"]
    if observed["mode"] == "preexec":
        assert confined["sid"] == confined["pid"]
    else:
        assert confined["sid"] != confined["pid"] and int(confined["sid"]) != os.getpid()


def test_launching_process_stays_unrestricted(observed: dict) -> None:
    assert observed["stockade_writes_outside"]
    assert observed["stockade_status"] == {"NoNewPrivs": "0", "Seccomp": "0"}


def test_exec_failure_is_reported_to_the_parent(observed: dict) -> None:
    rc, status = observed["missing"]
    assert status == "exec: No such file or directory"
    assert rc == (127 if observed["mode"] == "launcher" else None)


def test_setup_failure_runs_nothing_and_says_why(observed: dict) -> None:
    rc, status = observed["bad_ruleset"]
    assert status is not None and status.startswith("landlock_restrict_self: ")
    assert rc == (127 if observed["mode"] == "launcher" else None)


@pytest.mark.parametrize("mode", MODES)
def test_command_dies_with_its_parent(who: Who, mode: str) -> None:
    done = drive(who, "orphan", mode)
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state == "Z":
            return  # killed; no init here reaps it
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("the confined command outlived its parent: PR_SET_PDEATHSIG is not in effect")


def test_launcher_is_private_and_rebuilt_when_tampered(who: Who) -> None:
    xdg = who.mkdtemp("state-")
    first = json.loads(drive(who, "build", env={"XDG_STATE_HOME": str(xdg)}).stdout)
    path = first["launcher"]
    assert first["problem"] is None and path.startswith(f"{xdg}/stockade/llexec-")
    st = os.stat(path)
    assert st.st_uid == who.uid and not st.st_mode & 0o022
    os.chmod(path, 0o777)  # anyone could have replaced it: never exec'd, built again
    again = json.loads(drive(who, "build", env={"XDG_STATE_HOME": str(xdg)}).stdout)
    assert again["launcher"] == path and not stat.S_IMODE(os.stat(path).st_mode) & 0o022


def test_no_compiler_means_no_launcher_and_a_reason(who: Who) -> None:
    xdg, bindir = who.mkdtemp("state-"), who.mkdtemp("bin-")
    found = json.loads(drive(who, "build", env={"XDG_STATE_HOME": str(xdg), "PATH": str(bindir)}).stdout)
    assert found["launcher"] is None and "no C compiler" in found["problem"]
    fake, log = bindir / "cc", who.mkdtemp("log-") / "calls"
    fake.write_text(f"#!/bin/sh\necho \"$*\" >> {log}\necho 'cc: fatal error: broken' >&2\nexit 1\n")
    fake.chmod(0o755)
    for _ in range(2):  # the second run remembers the failure instead of compiling again
        found = json.loads(drive(who, "build", env={"XDG_STATE_HOME": str(xdg), "PATH": str(bindir)}).stdout)
        assert found["launcher"] is None and "broken" in found["problem"]
    assert len(log.read_text().splitlines()) == 2, "one static and one dynamic attempt, once"
    left = os.listdir(xdg / "stockade")
    assert len(left) == 1 and left[0].endswith(".failed"), "a failed build leaves only its note"


def test_spec_argv_needs_a_command() -> None:
    assert llexec.spec_argv("/l", 5, 6, 7, ["true", "x"]) == ["/l", "5", "6", "7", "-1", "-1", "true", "x"]
    argv = llexec.spec_argv("/l", 5, 6, 7, ["true"], guard_fd=8, supervisor_ruleset_fd=9)
    assert argv == ["/l", "5", "6", "7", "8", "9", "true"]
    with pytest.raises(ValueError):
        llexec.spec_argv("/l", 5, 6, 7, [])
