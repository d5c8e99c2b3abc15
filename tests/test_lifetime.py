"""Processes: streams, exit status, stdin, timeouts, signals, SIGKILL of stockade (invariant 3),
the environment (invariant 5), and a host that cannot sandbox (invariant 1)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Who

import stockade

HEARTBEAT = "while true; do date +%s%N > {beat}; sleep 0.05; done"


def _popen(who: Who, *args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [who.python, "-m", "stockade", *args],
        cwd=cwd,
        env=who.env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **who._popen_kw(),  # type: ignore[call-overload]
    )


def _wait_for(path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _stopped(beat: Path) -> bool:
    """True when the heartbeat file stops changing: nothing inside is alive any more."""
    time.sleep(0.5)
    first = beat.read_text()
    time.sleep(1.0)
    return beat.read_text() == first


def test_streams_exit_status_and_signal_death(who: Who, workspace: Path) -> None:
    done = who.sandbox("echo out; echo err >&2; exit 7", workspace)
    assert (done.returncode, done.stdout, done.stderr) == (7, "out\n", "err\n")
    done = who.sandbox("kill -9 $$", workspace)
    assert done.returncode == 128 + 9


def test_stdin_is_passed_through(who: Who, workspace: Path) -> None:
    done = who.stockade("run", "--", "cat", cwd=workspace, input="hello\n")
    assert done.stdout == "hello\n"


def test_output_is_streamed_live(who: Who, workspace: Path) -> None:
    proc = _popen(who, "run", "--", "sh", "-c", "echo first; sleep 3; echo second", cwd=workspace)
    start = time.monotonic()
    assert proc.stdout is not None
    assert proc.stdout.readline() == "first\n"
    assert time.monotonic() - start < 2.5
    assert proc.wait(10) == 0


def test_timeout_kills_the_whole_tree(who: Who, workspace: Path) -> None:
    beat = workspace / "beat"
    script = f"({HEARTBEAT.format(beat=beat)}) & sleep 30; wait"
    start = time.monotonic()
    done = who.stockade("run", "--timeout", "1", "--", "sh", "-c", script, cwd=workspace)
    assert done.returncode == 124
    assert "timed out" in done.stderr
    assert time.monotonic() - start < 10
    assert _stopped(beat)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_stopping_stockade_ends_everything_inside(who: Who, workspace: Path, sig: int) -> None:
    beat = workspace / "beat"
    proc = _popen(who, "run", "--", "sh", "-c", f"({HEARTBEAT.format(beat=beat)}) & sleep 60", cwd=workspace)
    _wait_for(beat)
    proc.send_signal(sig)
    rc = proc.wait(10)
    assert rc == (128 + sig if sig != signal.SIGKILL else -signal.SIGKILL)
    assert _stopped(beat)


def test_secrets_stay_out_of_the_environment(who: Who, workspace: Path) -> None:
    env = {
        "MY_API_KEY": "s3cret",
        "GITHUB_TOKEN": "ghp_x",
        "HARMLESS": "yes",
        "DATABASE_URL": "postgres://u:pw@db/x",
    }
    show = "env | sort"
    done = who.sandbox(show, workspace, env=env)
    assert "s3cret" not in done.stdout and "ghp_x" not in done.stdout and "pw@db" not in done.stdout
    assert "HARMLESS=yes" in done.stdout
    for name in ("PATH=", "HOME=", "LANG=", "TMPDIR="):
        assert f"\n{name}" in "\n" + done.stdout, name
    done = who.sandbox(show, workspace, "--env", "MY_API_KEY", "--env", "FOO=bar", env=env)
    assert "MY_API_KEY=s3cret" in done.stdout and "FOO=bar" in done.stdout
    assert "ghp_x" not in done.stdout


def test_tmpdir_inside_is_writable_and_read_only_tmp_is_private(who: Who, workspace: Path) -> None:
    name = f"stockade-private-{os.getpid()}"
    for profile in ("workspace", "read-only"):
        done = who.sandbox(f'echo x > "$TMPDIR/{name}" && echo OK', workspace, "--profile", profile)
        assert done.stdout.strip() == "OK", (profile, done.stderr)
    assert Path("/tmp", name).exists()  # workspace: the host /tmp, as granted
    Path("/tmp", name).unlink()
    done = who.sandbox(f'echo x > "$TMPDIR/{name}"', workspace, "--profile", "read-only")
    assert done.returncode == 0 and not Path("/tmp", name).exists()  # read-only: private tmpfs


def test_python_api(tmp_path: Path) -> None:
    result = stockade.run(["sh", "-c", "echo hi; echo no >&2; exit 3"], cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr, result.timed_out) == (3, "hi\n", "no\n", False)
    start = time.monotonic()
    result = stockade.run(["sh", "-c", "sleep 30 & sleep 30"], cwd=tmp_path, timeout=1)
    assert result.timed_out and time.monotonic() - start < 10
    result = stockade.run(["cat"], cwd=tmp_path, input="piped")
    assert result.stdout == "piped"
    with pytest.raises(stockade.ConfigError, match="unknown profile"):
        stockade.run(["true"], cwd=tmp_path, profile="nope")


def test_host_that_cannot_sandbox_refuses_with_the_doctors_explanation(who: Who, workspace: Path) -> None:
    marker = workspace / "ran"
    done = who.stockade(
        "run", "--", "touch", str(marker), cwd=workspace, env={"STOCKADE_BWRAP": "/nonexistent/bwrap"}
    )
    assert done.returncode == 2
    assert "CANNOT sandbox" in done.stderr and "fix:" in done.stderr
    assert "Traceback" not in done.stderr
    assert not marker.exists()
    # A host that refuses user namespaces, for real: an outer sandbox that disables them.
    locate = "from stockade.backends.locate import find_bwrap; print(find_bwrap().path)"
    outer = who.run([who.python, "-c", locate], workspace).stdout.strip()
    argv = [
        outer,
        "--unshare-user",
        "--disable-userns",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--bind",
        str(workspace),
        str(workspace),
        "--bind",
        "/tmp",
        "/tmp",
        "--",
        who.python,
        "-m",
        "stockade",
        "run",
        "--",
        "touch",
        str(marker),
    ]
    done = who.run(argv, workspace)
    assert done.returncode == 2, done.stderr
    assert "sandbox start" in done.stderr and "fix:" in done.stderr
    assert not marker.exists()


def test_doctor_reports_this_host(who: Who, workspace: Path) -> None:
    done = who.stockade("doctor", cwd=workspace)
    assert done.returncode == 0, done.stdout
    assert "can sandbox here with bubblewrap" in done.stdout
    assert "landlock: ABI" in done.stdout
    done = who.stockade("doctor", cwd=workspace, env={"STOCKADE_BWRAP": "/nonexistent/bwrap"})
    assert done.returncode == 1 and "CANNOT sandbox" in done.stdout


def test_full_access_is_unconfined_and_says_so(who: Who, workspace: Path) -> None:
    outside = who.mkdtemp("free-")
    done = who.sandbox(f"echo x > {outside}/f && echo WROTE", workspace, "--profile", "full-access")
    assert "WROTE" in done.stdout
    explained = who.stockade("explain", "--profile", "full-access", cwd=workspace)
    assert "NO SANDBOX" in explained.stdout


def test_explain_is_readable_and_json(who: Who, repo: Path) -> None:
    done = who.stockade("explain", cwd=repo)
    assert done.returncode == 0, done.stderr
    assert "write" in done.stdout and f"{repo}/.git/config" in done.stdout
    assert "bubblewrap" in done.stdout
    done = who.stockade("explain", "--json", cwd=repo)
    import json

    data = json.loads(done.stdout)
    assert data["profile"] == "workspace" and data["network"] == "off"
    assert {"path": f"{repo}/.agents", "kind": "dir"} in data["placeholders"]


def test_profiles_lists_builtins(who: Who, workspace: Path) -> None:
    done = who.stockade("profiles", cwd=workspace)
    for name in ("read-only", "workspace", "full-access"):
        assert name in done.stdout
