"""`[limits]` on both Linux backends, as root and as a user: each limit stops a command that
goes past it, a fork bomb stays inside its process budget while the host keeps running other
commands, and a limit a backend cannot enforce here is refused with the reason.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Who, backend_who

from stockade.backends import limits


@pytest.fixture
def who(who: Who, backend: str) -> Who:
    return backend_who(who, backend)


def config(who: Who, body: str) -> str:
    path = who.mkdtemp("cfg-") / "limits.toml"
    path.write_text(f'[profiles.limited]\nextends = "workspace"\n[profiles.limited.limits]\n{body}\n')
    who.own(path.parent)
    return str(path)


def limited(who: Who, workspace: Path, body: str, code: str, timeout: float = 120):
    cfg = config(who, body)
    return who.stockade(
        "run",
        "--config",
        cfg,
        "--profile",
        "limited",
        "--",
        who.python,
        "-c",
        code,
        cwd=workspace,
        timeout=timeout,
    )


def processes_refused(who: Who) -> bool:
    """Bubblewrap as a user counts processes in its own user namespace; everything else needs a
    pids cgroup it can create: root has one here, an unprivileged user has none."""
    if who.backend == "bwrap" and who.uid != 0:
        return False
    return who.uid != 0 or limits.pids_cgroup_problem() is not None


def test_memory_limit_stops_a_hog_and_allows_normal_work(who: Who, workspace: Path) -> None:
    hog = "b = bytearray(3 << 30); print('allocated')"
    done = limited(who, workspace, 'memory = "1G"', hog)
    assert done.returncode == 1 and "MemoryError" in done.stderr, done.stdout + done.stderr
    fine = limited(who, workspace, 'memory = "1G"', "b = bytearray(100 << 20); print('ok')")
    assert fine.returncode == 0 and fine.stdout.strip() == "ok", fine.stderr
    unlimited = who.py(hog, workspace)  # the same command without the limit: the limit did it
    assert unlimited.returncode == 0 and "allocated" in unlimited.stdout, unlimited.stderr


def test_open_files_file_size_and_cpu_limits(who: Who, workspace: Path) -> None:
    files = "fs = [open('/dev/null') for _ in range(200)]; print('opened', len(fs))"
    done = limited(who, workspace, "open_files = 64", files)
    assert done.returncode == 1 and "Too many open files" in done.stderr, done.stdout + done.stderr
    assert who.py(files, workspace).stdout.strip() == "opened 200"

    write = "open('big', 'wb').write(b'x' * (3 << 20)); print('wrote')"
    done = limited(who, workspace, 'file_size = "1M"', write)
    assert done.returncode != 0 and "wrote" not in done.stdout, done.stdout + done.stderr
    assert (workspace / "big").stat().st_size <= 1 << 20

    done = limited(who, workspace, "cpu_seconds = 1", "while True: pass", timeout=60)
    assert done.returncode == 128 + 24, (done.returncode, done.stderr)  # SIGXCPU


FORK_BOMB = """
import os, time
born = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(20)
            os._exit(0)
        born += 1
except OSError as exc:
    print('stopped after', born, type(exc).__name__, flush=True)
"""


def test_fork_bomb_is_contained_and_the_host_stays_usable(who: Who, workspace: Path) -> None:
    if processes_refused(who):
        done = limited(who, workspace, "processes = 40", "print('ran')")
        assert done.returncode == 2 and "ran" not in done.stdout, done.stdout + done.stderr
        assert "limits.processes" in done.stderr, done.stderr
        return
    marker = f"bomb-{os.getpid()}-{who.name}-{who.backend}"
    cfg = config(who, "processes = 40")
    bomb = subprocess.Popen(
        [
            who.python,
            "-m",
            "stockade",
            "run",
            "--backend",
            str(who.backend),
            "--config",
            cfg,
            "--profile",
            "limited",
            "--",
            who.python,
            "-c",
            FORK_BOMB,
            marker,
        ],
        cwd=workspace,
        env=who.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **who._popen_kw(),  # type: ignore[arg-type]
    )
    try:
        assert bomb.stdout is not None
        line = bomb.stdout.readline()
        born = int(line.split()[2]) if line.startswith("stopped after") else -1
        assert 0 < born < 40, line + (bomb.stderr.read() if bomb.poll() is not None else "")
        # While the bomb's children are all alive, the same user still runs commands, sandboxed too.
        other = who.sandbox("echo still-usable", workspace)
        assert other.returncode == 0 and other.stdout.strip() == "still-usable", other.stderr
    finally:
        bomb.kill()
        bomb.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and subprocess.run(["pgrep", "-f", marker], capture_output=True).stdout:
        time.sleep(0.1)
    assert not subprocess.run(["pgrep", "-f", marker], capture_output=True).stdout, "bomb processes left"
    leftover = (
        [p for p in Path("/sys/fs/cgroup/pids").glob("**/stockade-*")]
        if os.path.isdir("/sys/fs/cgroup/pids")
        else []
    )
    assert not [p for p in leftover if str(bomb.pid) in p.name], leftover


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        ("procesess = 5", "profiles.limited.limits.procesess", "did you mean 'processes'"),
        ('memory = "lots"', "profiles.limited.limits.memory", '"512M"'),
        ("open_files = 0", "profiles.limited.limits.open_files", "positive integer"),
        ("cpu_seconds = true", "profiles.limited.limits.cpu_seconds", "positive integer"),
    ],
)
def test_bad_limits_are_config_errors(who: Who, workspace: Path, body: str, key: str, words: str) -> None:
    done = limited(who, workspace, body, "print('ran')")
    assert done.returncode == 2 and "ran" not in done.stdout, done.stdout + done.stderr
    assert key in done.stderr and words in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_explain_shows_limits(who: Who, workspace: Path) -> None:
    cfg = config(who, 'memory = "2G"\nopen_files = 256')
    done = who.stockade("explain", "--config", cfg, "--profile", "limited", cwd=workspace)
    assert done.returncode == 0, done.stderr
    assert "limits: memory=2147483648 open_files=256" in done.stdout, done.stdout
