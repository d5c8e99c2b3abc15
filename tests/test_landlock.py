"""The Landlock + seccomp backend, enforced for real on this kernel, as root and as a user.

Landlock can hold a Plan exactly only where entries get wider going down, or narrower under a
readable directory (built child by child). What it cannot hold is refused, with the reason:
those refusals are asserted here too, so a weaker sandbox can never slip through.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import Who, failed
from test_guard import ALLOWED, ATTEMPTS, REFUSED

import stockade
from stockade.backends.landlock import READ, translate

PROFILE = """
[profiles.ll]
extends = "read-only"
[profiles.ll.filesystem]
":tmpdir" = "write"
":slash_tmp" = "write"
"~/.ssh" = "deny"
"""


@pytest.fixture
def setup(who: Who, workspace: Path) -> tuple[Path, Path, list[str]]:
    """A home with a key, a config with a profile Landlock can hold, and the flags to use it."""
    home = who.mkdtemp("home-")
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_test").write_text("SECRET-KEY")
    (home / "notes.txt").write_text("notes")
    who.own(home)
    config = workspace.parent / f"{workspace.name}-ll.toml"
    config.write_text(PROFILE)
    config.chmod(0o644)
    return home, config, ["--backend", "landlock", "--config", str(config), "--profile", "ll"]


TOOLS = """
import os, sqlite3, tempfile, py_compile
base = tempfile.mkdtemp()
a, b = os.path.join(base, "a"), os.path.join(base, "b")
os.mkdir(a); os.mkdir(b)
open(os.path.join(a, "f"), "w").write("x")
os.replace(os.path.join(a, "f"), os.path.join(b, "f"))
with tempfile.NamedTemporaryFile(dir=b) as fh:
    fh.write(b"y")
db = sqlite3.connect(os.path.join(b, "db.sqlite"))
db.execute("create table t (x)"); db.execute("insert into t values (1)"); db.commit(); db.close()
open(os.path.join(b, "m.py"), "w").write("X = 1\\n")
py_compile.compile(os.path.join(b, "m.py"), doraise=True)
open("/dev/null", "w").write("discarded")
print("tools-ok")
"""


def test_reads_writes_and_denies(who: Who, workspace: Path, setup: tuple[Path, Path, list[str]]) -> None:
    home, _, flags = setup
    attempts = [
        f"echo x > {workspace}/out",
        "cat ~/.ssh/id_test",
        "ls ~/.ssh",
        "touch /etc/stockade-probe",
        "ls /dev/shm",
        "unshare -U true",
        "mknod /tmp/disk b 7 0",  # root powers Landlock does not mediate: none are left
        "hostname stockade-probe",
        "chown 65534 /tmp",
        "ls ~/.local/state/stockade",  # stockade's own state: its launcher, journal, caches
        "touch ~/.local/state/stockade/planted",
        "setsid true",  # a new session would leave the process group stockade kills
    ]
    script = "".join(f"{a}; echo rc=$?; " for a in attempts)
    script += f"cat ~/notes.txt; echo; {who.python} -c '{TOOLS}'"
    done = who.sandbox(script, workspace, *flags, env={"HOME": str(home)})
    assert "SECRET" not in done.stdout
    assert failed(done, len(attempts), then=["notes", "tools-ok"]), done.stdout + done.stderr
    assert not (workspace / "out").exists()
    state = home / ".local/state/stockade"  # it exists (the launcher was built there): hidden
    assert state.is_dir() and not (state / "planted").exists()


NET = """
import socket, sys
results = []
for label, make in [
    ("tcp", lambda: socket.create_connection(("1.1.1.1", 53), timeout=2)),
    ("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("1.1.1.1", 53))),
    ("host-unix", lambda: socket.socket(socket.AF_UNIX).connect(sys.argv[1])),
]:
    try:
        make(); results.append(label + "=open")
    except OSError:
        results.append(label + "=refused")
a, b = socket.socketpair(); a.send(b"p"); results.append("pair=" + b.recv(1).decode())
print(" ".join(results))
"""


def test_network_and_host_sockets_are_refused(
    who: Who, workspace: Path, setup: tuple[Path, Path, list[str]]
) -> None:
    home, _, flags = setup
    path = str(workspace / "host.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chmod(path, 0o777)
    server.listen()
    try:
        argv = ["run", *flags, "--", who.python, "-c", NET, path]
        done = who.stockade(*argv, cwd=workspace, env={"HOME": str(home)})
    finally:
        server.close()
    assert done.stdout.split() == ["tcp=refused", "udp=refused", "host-unix=refused", "pair=p"], done


def test_host_processes_cannot_be_signalled_and_nothing_outlives_the_command(
    who: Who, workspace: Path, setup: tuple[Path, Path, list[str]]
) -> None:
    home, _, flags = setup
    victim = subprocess.Popen(["sleep", "60"], **who._popen_kw())  # type: ignore[call-overload]
    marker = f"stockade-ll-{os.getpid()}-{who.name}"
    try:
        script = f"kill {victim.pid}; echo rc=$?; (exec -a {marker} sleep 300 &) ; echo started"
        done = who.sandbox(script, workspace, *flags, env={"HOME": str(home)})
        assert failed(done, 1, then=["started"]), done.stdout + done.stderr
        assert victim.poll() is None  # still alive
        time.sleep(0.2)
        left = subprocess.run(["pgrep", "-f", f"^{marker} "], capture_output=True, text=True, check=False)
        assert left.stdout == "", f"a background process outlived the command: {left.stdout}"
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()


def test_the_stockade_process_itself_stays_unrestricted() -> None:
    tmp_path = Path(tempfile.mkdtemp(dir="/var/tmp"))
    config = tmp_path / "ll.toml"
    config.write_text(PROFILE)
    done = stockade.run(["true"], cwd=tmp_path, backend="landlock", config=str(config), profile="ll")
    assert done.returncode == 0, done.stderr
    (tmp_path / "after").write_text("written by the test process")  # would fail if restricted
    shutil.rmtree(tmp_path)


def test_plans_it_cannot_hold_are_refused_with_the_reason(who: Who, workspace: Path) -> None:
    marker = workspace / "ran"
    flags = ("run", "--backend", "landlock")
    # A private /tmp needs a mount: stricter instead, /tmp is hidden and TMPDIR is a fresh
    # private directory, removed when the command ends.
    script = f"touch {marker}; echo rc=$?; ls /tmp; echo rc=$?; echo kept > $TMPDIR/f && echo $TMPDIR"
    done = who.sandbox(script, workspace, "--backend", "landlock", "--profile", "read-only")
    assert failed(done, 2, then=[done.stdout.split()[-1]]), done.stdout + done.stderr
    private = done.stdout.split()[-1]
    assert private.startswith("/tmp/stockade-tmp-") and not os.path.exists(private)
    # No compiler, so no launcher and no guard: protected metadata inside the writable workspace
    # cannot be held, so the default profile is refused (never run without the protection).
    xdg, bindir = who.mkdtemp("state-"), who.mkdtemp("bin-")
    env = {"XDG_STATE_HOME": str(xdg), "PATH": str(bindir)}
    done = who.stockade(*flags, "--", "/usr/bin/touch", str(marker), cwd=workspace, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "only the launcher's guard keeps it narrower" in done.stderr and ".stockade" in done.stderr
    assert "no C compiler" in done.stderr and "nothing was run" in done.stderr, done.stderr
    assert not marker.exists()


def test_an_older_abi_is_refused_never_weakened(
    who: Who, workspace: Path, setup: tuple[Path, Path, list[str]]
) -> None:
    home, _, flags = setup
    for abi in (1, 3, 5):
        env = {"HOME": str(home), "STOCKADE_LANDLOCK_MAX_ABI": str(abi)}
        done = who.sandbox("echo ran", workspace, *flags, env=env)
        assert done.returncode == 2 and "ran" not in done.stdout
        assert f"Landlock ABI {abi} is too old" in done.stderr, done.stderr
    env = {"HOME": str(home), "STOCKADE_LANDLOCK_MAX_ABI": "six"}
    done = who.sandbox("echo ran", workspace, *flags, env=env)
    assert done.returncode == 2 and "ran" not in done.stdout and "Traceback" not in done.stderr
    assert "STOCKADE_LANDLOCK_MAX_ABI='six' is not a Landlock ABI" in done.stderr, done.stderr


def test_auto_picks_landlock_where_namespaces_are_refused(
    who: Who, workspace: Path, setup: tuple[Path, Path, list[str]]
) -> None:
    """Inside a bubblewrap sandbox, user namespaces are refused for real (its seccomp filter):
    there, `auto` must pick Landlock and still enforce the Plan."""
    home, config, _ = setup
    # The inner stockade keeps its state (and launcher) where its own Plan only reads.
    inner = f"XDG_STATE_HOME={workspace}/inner-state {who.python} -m stockade"
    script = (
        f"{inner} explain --config {config} --profile ll | grep '^backend'; "
        f"{inner} run --config {config} --profile ll -- sh -c 'cat ~/.ssh/id_test; echo rc=$?; "
        f"echo x > {workspace}/inner; echo rc=$?; echo inner-ok'"
    )
    done = who.sandbox(script, workspace, "--backend", "bwrap", env={"HOME": str(home)})
    lines = done.stdout.splitlines()
    assert lines and lines[0].startswith("backend") and "landlock" in lines[0], done.stdout + done.stderr
    assert "SECRET" not in done.stdout
    rcs = lines[1:3]
    assert len(rcs) == 2 and all(r.startswith("rc=") and r != "rc=0" for r in rcs), done
    assert lines[3:] == ["inner-ok"], done
    assert not (workspace / "inner").exists()


def test_where_namespaces_are_refused_the_default_profile_still_holds(who: Who, repo: Path) -> None:
    """The same host as above (user namespaces refused for real), the default `workspace`
    profile on a git repository: `auto` picks Landlock, the guard holds every protected and
    denied entry, and what real tools do still works (test_guard's attempts)."""
    (repo / ".env").write_text("API_KEY=SECRET\n")
    (repo / ".stockade").mkdir()
    outer = who.mkdtemp("outer-")
    outside = outer / "notes.txt"
    outside.write_text("mine")
    who.own(repo)
    who.own(outer)
    attempts = outer / "attempts.py"
    attempts.write_text(ATTEMPTS)
    inner = f"cd {repo} && XDG_STATE_HOME={outer}/state {who.python} -m stockade"
    script = (
        f"{inner} explain | grep '^backend'; "
        f"{inner} run -- {who.python} {attempts} {repo} {outside}; echo inner-rc=$?"
    )
    done = who.sandbox(script, outer, "--backend", "bwrap", "--writable", str(repo))
    lines = done.stdout.splitlines()
    assert lines and "landlock" in lines[0], done.stdout + done.stderr
    assert lines[-1] == "inner-rc=0", done.stdout + done.stderr
    results = json.loads(lines[-2])
    wrong = {k: v for k, v in results.items() if k in REFUSED and v == "ok"}
    assert not wrong, f"got through: {wrong}"
    assert all(results[k] == "ok" for k in ALLOWED if k != "fifo") and results["fifo read"] == "through"
    assert (repo / ".env").read_text() == "API_KEY=SECRET\n" and "SECRET" not in done.stdout


# --- translation (what the ruleset holds) ---------------------------------------------------


def test_a_deny_under_a_readable_directory_is_built_child_by_child() -> None:
    tmp_path = Path(tempfile.mkdtemp(dir="/var/tmp"))  # not /tmp: writable in this profile
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / "a").mkdir()
    (home / "f.txt").write_text("x")
    config = tmp_path / "ll.toml"
    config.write_text(PROFILE)
    plan = stockade.explain(
        cwd=str(tmp_path), config=str(config), profile="ll", host_env={"HOME": str(home), "PATH": "/usr/bin"}
    )
    rules = dict(translate(plan, 7).rules)
    assert str(home / ".ssh") not in rules and str(home) not in rules and "/" not in rules
    assert rules[str(home / "a")] == READ and rules[str(home / "f.txt")] == READ & ~(1 << 3)
    covering = [p for p in rules if str(home / ".ssh/x").startswith(p.rstrip("/") + "/")]
    assert covering == [], covering
    shutil.rmtree(tmp_path)


SIDE_DOORS = """
import ctypes, fcntl, os, sys
libc = ctypes.CDLL(None, use_errno=True)
host = int(sys.argv[1])
out = []
try:
    open(f"/proc/{host}/cmdline", "rb").read(); out.append("proc=open")
except OSError:
    out.append("proc=refused")
out.append("ptrace=" + ("open" if libc.ptrace(16, host, None, None) == 0 else "refused"))  # ATTACH
try:
    fcntl.ioctl(0, 0x5412, b"x"); out.append("tiocsti=open")  # TIOCSTI
except OSError as exc:
    out.append("tiocsti=" + ("refused" if exc.errno == 1 else "other"))
out.append("cpuinfo=" + ("open" if open("/proc/cpuinfo").read(1) else "empty"))
print(" ".join(out))
"""


def test_host_processes_and_the_terminal_are_out_of_reach(
    who: Who, workspace: Path, setup: tuple[Path, Path, list[str]]
) -> None:
    home, _, flags = setup
    shell = ["sh", "-c", "sleep 60; : stockade-secret-arg"]
    victim = subprocess.Popen(shell, **who._popen_kw())  # type: ignore[call-overload]
    try:
        for _ in range(100):  # until the victim's own command line is in place
            if b"stockade-secret-arg" in Path(f"/proc/{victim.pid}/cmdline").read_bytes():
                break
            time.sleep(0.02)
        else:
            pytest.fail("the victim never showed its command line")
        argv = ["run", *flags, "--", who.python, "-c", SIDE_DOORS, str(victim.pid)]
        done = who.stockade(*argv, cwd=workspace, env={"HOME": str(home)})
        assert victim.poll() is None  # alive all along: its /proc entry existed
    finally:
        victim.kill()
        victim.wait()
    assert done.stdout.split() == ["proc=refused", "ptrace=refused", "tiocsti=refused", "cpuinfo=open"], done


def test_nothing_outlives_a_stockade_killed_with_sigkill(
    who: Who, workspace: Path, setup: tuple[Path, Path, list[str]]
) -> None:
    """No pid namespace: the launcher's supervisor ends the command's group when stockade dies."""
    home, _, flags = setup
    marker = f"stockade-orphan-{os.getpid()}-{who.name}"
    script = f"(exec -a {marker}-bg sleep 300 &); exec -a {marker}-fg sleep 300"
    argv = [who.python, "-m", "stockade", "run", *flags, "--", "bash", "-c", script]
    env = who.env({"HOME": str(home)})
    stockade_proc = subprocess.Popen(argv, cwd=workspace, env=env, **who._popen_kw())  # type: ignore[call-overload]
    pattern = f"^{marker}-(bg|fg) "  # the two sleeps, by the names they were given
    for _ in range(200):
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
        if len(found.stdout.split()) == 2:
            break
        time.sleep(0.05)
    assert len(found.stdout.split()) == 2, found.stdout
    stockade_proc.send_signal(signal.SIGKILL)
    stockade_proc.wait()
    for _ in range(100):
        left = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
        if not left.stdout:
            return
        time.sleep(0.05)
    subprocess.run(["pkill", "-9", "-f", pattern], check=False)
    pytest.fail(f"processes outlived a killed stockade: {left.stdout}")


def test_a_kept_ruleset_is_rebuilt_when_a_granted_directory_is_replaced() -> None:
    """The ruleset fd is reused between commands; its rules hold inodes, so a directory
    replaced in between (same path, new inode) must get a fresh ruleset, or writes fail."""
    work = Path(tempfile.mkdtemp(dir="/var/tmp"))
    try:
        (work / "ll.toml").write_text(PROFILE)
        tmpdir = work / "tmp"
        env = {**os.environ, "TMPDIR": str(tmpdir)}
        opts = {"cwd": work, "backend": "landlock", "config": str(work / "ll.toml"), "profile": "ll"}
        for round_ in range(2):
            tmpdir.mkdir()
            done = stockade.run(["sh", "-c", 'echo x > "$TMPDIR/f" && echo ok'], host_env=env, **opts)
            assert done.stdout == "ok\n", (round_, done.stderr)
            shutil.rmtree(tmpdir)
    finally:
        shutil.rmtree(work)
