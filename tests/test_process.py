"""Sandboxed processes: streams, exit status, stdin, live output, timeouts and signals (invariant 3),
the environment (invariant 5), the Python API, and a host that cannot sandbox (invariant 1).

A tree's liveness is read from a heartbeat: a background loop inside writes the wall clock
(nanoseconds) to a file in the workspace every 0.1 s, so the test knows when it last ran.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Who

import stockade
from stockade.backends.locate import find_bwrap


def heartbeat(beat: Path) -> str:
    """A shell loop that keeps `beat` holding the time it last ran (written atomically)."""
    return f"while true; do date +%s%N > {beat}.new && mv -f {beat}.new {beat}; sleep 0.1; done"


def _last_beat(beat: Path) -> float:
    return int(beat.read_text()) / 1e9


def _wait_alive(beat: Path, timeout: float = 10) -> None:
    """Until the heartbeat has been seen changing: the tree inside is up and running."""
    deadline = time.monotonic() + timeout
    first = None
    while time.monotonic() < deadline:
        if beat.exists():
            value = beat.read_text()
            if first is None:
                first = value
            elif value != first:
                return
        time.sleep(0.05)
    raise AssertionError(f"the heartbeat {beat} never ran")


def _stopped_after(beat: Path, since: float, within: float = 2.0) -> float:
    """Wait until the heartbeat stops; return how long after `since` (wall clock) it last beat.

    A heartbeat that never stops is reported as still beating at the end of the wait, which is
    more than `within`, so the caller's assertion fails.
    """
    deadline = time.monotonic() + within + 1.5
    last, changed = beat.read_text(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = beat.read_text()
        if now != last:
            last, changed = now, time.monotonic()
        elif time.monotonic() - changed >= 0.6:  # six missed beats
            return int(last) / 1e9 - since
    return within + 1.5


def _processes_with(token: str) -> list[int]:
    """Host pids whose command line contains `token` (pid namespaces do not hide them here)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if token.encode() in fh.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def _gone(token: str, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while _processes_with(token):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _sleep_arg() -> str:
    """A `sleep` duration (~30 s) unique to this test, to find its process on the host."""
    return f"30.{secrets.randbelow(10**9):09d}"


def _popen(who: Who, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """The real CLI as `who`, like Who.stockade, but without waiting for it."""
    return subprocess.Popen(
        [who.python, "-m", "stockade", *args],
        cwd=cwd,
        env=who.env(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **who._popen_kw(),  # type: ignore[call-overload]
    )


# --- streams and exit status ----------------------------------------------------------------


def test_streams_are_separate_and_exit_status_propagates(who: Who, workspace: Path) -> None:
    done = who.sandbox("echo out; echo err >&2; exit 7", workspace)
    assert (done.returncode, done.stdout, done.stderr) == (7, "out\n", "err\n")
    done = who.sandbox("exit 0", workspace)
    assert done.returncode == 0


def test_signal_death_is_128_plus_n(who: Who, workspace: Path) -> None:
    assert who.sandbox("kill -9 $$", workspace).returncode == 128 + 9
    assert who.sandbox("kill -TERM $$", workspace).returncode == 128 + 15


def test_stdin_is_passed_through(who: Who, workspace: Path) -> None:
    done = who.stockade("run", "--", "cat", cwd=workspace, input="hello\n")
    assert (done.returncode, done.stdout) == (0, "hello\n")
    done = who.stockade("run", "--", "wc", "-l", cwd=workspace, input="a\nb\nc\n")
    assert done.stdout.strip() == "3"


def test_output_is_streamed_live(who: Who, workspace: Path) -> None:
    proc = _popen(who, "run", "--", "sh", "-c", "echo first; sleep 3; echo second", cwd=workspace)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "first\n"
        first_at = time.monotonic()
        assert proc.stdout.readline() == "second\n"
        second_at = time.monotonic()
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.communicate()
    # Buffered output would arrive all at once, at the end.
    assert second_at - first_at > 2.0


# --- the whole tree ends with stockade (invariant 3) ----------------------------------------


def test_timeout_kills_the_whole_tree(who: Who, workspace: Path) -> None:
    beat = workspace / "beat"
    nap = _sleep_arg()
    script = f"({heartbeat(beat)}) & sleep {nap} & sleep {nap}; wait"
    start = time.monotonic()
    done = who.stockade("run", "--timeout", "1", "--", "sh", "-c", script, cwd=workspace, timeout=30)
    ended = time.time()
    assert done.returncode == 124, done.stderr
    assert time.monotonic() - start < 10
    assert beat.exists(), "the heartbeat never ran: nothing shows the tree was alive"
    assert _stopped_after(beat, ended) < 2.0
    assert _gone(nap), f"sleep {nap} survived the timeout: {_processes_with(nap)}"


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL], ids=lambda s: s.name
)
def test_signal_to_stockade_ends_the_tree(who: Who, workspace: Path, sig: signal.Signals) -> None:
    """SIGKILL runs no handler: only --die-with-parent and the pid namespace are left to act."""
    beat = workspace / "beat"
    nap = _sleep_arg()
    proc = _popen(who, "run", "--", "sh", "-c", f"({heartbeat(beat)}) & sleep {nap}; wait", cwd=workspace)
    try:
        _wait_alive(beat)
        sent = time.time()
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == (-sig if sig == signal.SIGKILL else 128 + sig), err
    assert _stopped_after(beat, sent) < 2.0
    assert _gone(nap), f"sleep {nap} survived {sig.name}: {_processes_with(nap)}"


# --- the environment (invariant 5) ----------------------------------------------------------

SHOW_ENV = "import json, os; print(json.dumps(dict(os.environ)))"
SECRETS = {"MY_API_KEY": "s3cret-api-key", "GITHUB_TOKEN": "ghp_s3cretGitHubToken"}


def _env_inside(who: Who, cwd: Path, *flags: str, env: dict[str, str] | None = None) -> dict[str, str]:
    done = who.py(SHOW_ENV, cwd, *flags, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_secrets_are_withheld_by_default(who: Who, workspace: Path) -> None:
    outside = json.loads(who.run([who.python, "-c", SHOW_ENV], workspace, env=SECRETS).stdout)
    assert {k: outside[k] for k in SECRETS} == SECRETS  # stockade itself gets them
    inside = _env_inside(who, workspace, env=SECRETS)
    for name, value in SECRETS.items():
        assert name not in inside
        assert not any(value in v for v in inside.values()), f"{name}'s value leaked"


def test_env_flag_lets_a_variable_through_or_sets_it(who: Who, workspace: Path) -> None:
    inside = _env_inside(who, workspace, "--env", "MY_API_KEY", "--env", "FOO=bar", env=SECRETS)
    assert inside["MY_API_KEY"] == SECRETS["MY_API_KEY"]
    assert inside["FOO"] == "bar"
    assert "GITHUB_TOKEN" not in inside  # letting one through does not let the others


def test_core_variables_pass_and_tmpdir_is_writable(who: Who, workspace: Path) -> None:
    inside = _env_inside(who, workspace)
    base = who.env()
    for name in ("PATH", "HOME", "LANG"):
        assert inside.get(name) == base[name], name
    assert inside.get("TMPDIR"), inside
    for profile in ("workspace", "read-only"):
        done = who.py(
            "import os, tempfile\n"
            "with tempfile.NamedTemporaryFile(dir=os.environ['TMPDIR']) as f:\n"
            "    f.write(b'x'); f.flush(); print('WROTE', os.path.dirname(f.name))",
            workspace,
            "--profile",
            profile,
        )
        assert done.stdout.startswith("WROTE /"), (profile, done.stdout, done.stderr)


@pytest.fixture
def host_tmpdir(who: Who) -> Path:
    """A directory given to stockade as $TMPDIR (removed with the identity's other dirs)."""
    return who.mkdtemp("tmpdir-")


def test_read_only_profile_tmpdir_is_private(who: Who, workspace: Path, host_tmpdir: Path) -> None:
    name = f"stockade-private-{secrets.token_hex(6)}"
    write = f'echo x > "$TMPDIR/{name}" && cat "$TMPDIR/{name}" && echo "$TMPDIR"'
    host_copies = [Path("/tmp", name), host_tmpdir / name]
    try:
        for env in (None, {"TMPDIR": str(host_tmpdir)}):
            # The workspace profile grants the host's tmp dir: the write shows up outside, so
            # this check would see a private tmp that is not private.
            done = who.sandbox(write, workspace, env=env)
            assert done.stdout.split()[0] == "x", done.stderr
            landed = Path(done.stdout.split()[1], name)
            assert landed in host_copies and landed.exists(), (done.stdout, host_copies)
            landed.unlink()
            done = who.sandbox(write, workspace, "--profile", "read-only", env=env)
            assert done.returncode == 0 and done.stdout.split()[0] == "x", (done.stdout, done.stderr)
            assert not any(p.exists() for p in host_copies), "read-only TMPDIR wrote to the host"
    finally:
        for p in host_copies:
            p.unlink(missing_ok=True)


# --- the Python API -------------------------------------------------------------------------


@pytest.fixture
def api_dir(tmp_path: Path) -> Path:
    """A plain directory for the in-process API (as the user running pytest, no `who`)."""
    return tmp_path


def test_python_api_result(api_dir: Path) -> None:
    result = stockade.run(["sh", "-c", "echo out; echo err >&2; exit 3"], cwd=api_dir)
    assert isinstance(result, stockade.Result)
    assert (result.returncode, result.stdout, result.stderr, result.timed_out) == (3, "out\n", "err\n", False)
    result = stockade.run(["cat"], cwd=api_dir, input="piped\n")
    assert (result.returncode, result.stdout) == (0, "piped\n")
    result = stockade.run(["sh", "-c", "kill -9 $$"], cwd=api_dir)
    assert result.returncode == 128 + 9 and not result.timed_out


def test_python_api_timeout_returns_promptly_and_ends_the_tree(api_dir: Path) -> None:
    beat = api_dir / "beat"
    nap = _sleep_arg()
    script = f"echo started; ({heartbeat(beat)}) & sleep {nap} & sleep {nap}; wait"
    start = time.monotonic()
    result = stockade.run(["sh", "-c", script], cwd=api_dir, timeout=1)
    took, ended = time.monotonic() - start, time.time()
    assert result.timed_out
    assert took < 5, took
    assert result.returncode != 0
    assert result.stdout == "started\n"  # what was written before the timeout is kept
    assert beat.exists()
    assert _stopped_after(beat, ended) < 2.0
    assert _gone(nap)


def test_python_api_refuses_bad_input_before_running(api_dir: Path) -> None:
    marker = api_dir / "ran"
    with pytest.raises(stockade.StockadeError):
        stockade.run(["touch", str(marker)], cwd=api_dir, profile="no-such-profile")
    assert not marker.exists()


# --- a host that cannot sandbox (invariant 1) -----------------------------------------------


def test_missing_bwrap_refuses_with_the_doctors_explanation(who: Who, workspace: Path) -> None:
    marker = workspace / "marker"
    env = {"STOCKADE_BWRAP": "/nonexistent/bwrap"}
    done = who.stockade("run", "--backend", "bwrap", "--", "touch", str(marker), cwd=workspace, env=env)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "bwrap" in done.stderr and "fix:" in done.stderr, done.stderr
    assert "/nonexistent/bwrap" in done.stderr
    assert "Traceback" not in done.stderr
    assert not marker.exists(), "the command ran without a sandbox"
    # `auto` falls back to Landlock, which still confines it: inside the workspace only.
    outside = who.mkdtemp("outside-") / "marker"
    script = f"touch {marker}; echo rc=$?; touch {outside}; echo rc=$?"
    done = who.stockade("explain", cwd=workspace, env=env)
    assert done.returncode == 0 and "landlock" in done.stdout.split("\n", 2)[1], done.stdout
    done = who.stockade("run", "--", "sh", "-c", script, cwd=workspace, env=env)
    assert done.stdout.split() == ["rc=0", "rc=1"], (done.stdout, done.stderr)
    assert marker.exists() and not outside.exists()


def _bwrap_for(who: Who, cwd: Path) -> str:
    """find_bwrap() as `who` sees it (root's bundled binary may not be executable by others)."""
    if os.getuid() == who.uid:
        found = find_bwrap()
        assert found is not None
        return found.path
    done = who.run(
        [who.python, "-c", "from stockade.backends.locate import find_bwrap; print(find_bwrap().path)"], cwd
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_host_without_user_namespaces_refuses(who: Who, workspace: Path) -> None:
    marker = workspace / "marker"
    outer = [
        _bwrap_for(who, workspace),
        "--unshare-user",
        "--disable-userns",
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--bind", str(workspace), str(workspace),
        "--",
    ]  # fmt: skip
    # The outer sandbox itself runs commands (so a refusal below is stockade's doing).
    assert who.run([*outer, "touch", str(marker)], workspace).returncode == 0
    marker.unlink()
    done = who.run([*outer, who.python, "-m", "stockade", "run", "--", "touch", str(marker)], workspace)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "could not be started" in done.stderr and "fix:" in done.stderr, done.stderr
    assert "namespace" in done.stderr
    assert "Traceback" not in done.stderr
    assert not marker.exists(), "the command ran without a sandbox"
