"""Long-lived sessions on both Linux backends, as root and as a user (the Python API, driven in a
process of that identity): PTY REPLs and shells, resize, Ctrl-C, exit taken from the process,
bounded output, limits, and nothing left behind by fifty sessions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Who

from stockade.exec.session import OutputBuffer

# ---- the driver (runs as `who`, in its own process) ----


def interactive(backend: str, cwd: str) -> dict[str, object]:
    from stockade.exec import SessionManager

    m = SessionManager(cwd=cwd, backend=backend)
    out: dict[str, object] = {}
    py = m.start([sys.executable, "-i", "-q"], tty=True)
    py.read(1500)
    py.write("x = 41\n")
    py.read(300)
    py.write("print(x + 1)\n")
    out["repl"] = py.read(1500).stdout
    sh = m.start("bash --norc --noprofile -i", tty=True, env={"PS1": "$ "})
    sh.read(1000)
    sh.write("cd /tmp; Y=7\n")
    sh.read(300)
    sh.write("echo cwd=$PWD y=$Y; stty size\n")
    out["shell"] = sh.read(1000).stdout
    sh.resize(40, 100)
    sh.write("stty size\n")
    out["resized"] = sh.read(1000).stdout
    sh.write("sleep 100; echo finished-sleeping\n")
    sh.read(300)
    sh.interrupt()
    out["interrupted"] = sh.read(1000).stdout
    sh.write("echo alive\n")
    out["alive"] = sh.read(1000).stdout
    pipes = m.start("echo to-out; echo to-err >&2; read line; echo got-$line")
    pipes.write("input\n")
    got = pipes.read(10_000)
    out["pipes"] = [got.stdout, got.stderr, got.running, got.exit_code]
    marker = f"sleep 1000.{os.getpid()}"  # /bin/sh is dash here: no `exec -a`
    ran = f"bg-ran-{os.getpid()}"  # the grandchild really started before the shell exits
    bg = m.start(f"(touch {ran}; exec {marker}) & while [ ! -e {ran} ]; do sleep 0.01; done; echo started")
    got = bg.read(10_000)  # returns as soon as the shell exits: from the process, not from EOF
    out["background"] = [got.stdout, got.running, got.exit_code]
    time.sleep(0.3)
    left = subprocess.run(["pgrep", "-f", f"^{marker}$"], capture_output=True, text=True).stdout
    out["background_left"] = left
    big = m.start(f"{sys.executable} -c \"import sys; sys.stdout.write('x' * 5_000_000)\"")
    got = big.read(10_000, limit=4096)
    out["big"] = [len(got.stdout), "bytes of output dropped" in got.stdout, got.exit_code]
    m.close_all()
    return out


def fifty(backend: str, cwd: str) -> dict[str, object]:
    from stockade.exec import SessionManager
    from stockade.state import state_dir

    def snapshot() -> dict[str, object]:
        return {
            "fds": sorted(os.listdir("/proc/self/fd")),
            "children": subprocess.run(
                ["pgrep", "-P", str(os.getpid())], capture_output=True, text=True
            ).stdout.split(),
            "state": sorted(os.listdir(state_dir())),
            "tmp": sorted(p for p in os.listdir("/tmp") if p.startswith("stockade-tmp-")),
        }

    m = SessionManager(cwd=cwd, backend=backend, max_sessions=64, keep_newest=64)
    m.start("true").read(10_000)  # warm: the launcher, caches, the first state files
    m.close_all()
    before = snapshot()
    sessions = [m.start(f"echo session-{i}; sleep 0.2", tty=i % 2 == 0) for i in range(50)]
    outputs = [s.read(15_000) for s in sessions]
    ok = all(f"session-{i}" in o.stdout and o.exit_code == 0 for i, o in enumerate(outputs))
    m.close_all()
    time.sleep(0.2)
    after = snapshot()
    return {"ok": ok, "before": before, "after": after}


def limits(backend: str, cwd: str) -> dict[str, object]:
    from stockade.exec import SessionManager

    m = SessionManager(cwd=cwd, backend=backend, max_sessions=3, keep_newest=1, idle_timeout=600)
    first, second, third = (m.start("sleep 60") for _ in range(3))
    second.read(0)  # used most recently of the older two: the first is evicted
    fourth = m.start("sleep 60")
    out: dict[str, object] = {"after_evict": sorted(m.sessions), "first_running": first.running}
    m.idle_timeout = 0.2
    time.sleep(0.4)
    out["after_idle"] = [i.id for i in m.list()]
    timed = SessionManager(cwd=cwd, backend=backend, wall_limit=0.5)
    s = timed.start("sleep 60")
    time.sleep(0.8)
    timed.list()
    out["wall"] = [s.running, s.exit_code]
    for manager in (m, timed):
        manager.close_all()
    del third, fourth
    return out


def asyncio_api(backend: str, cwd: str) -> dict[str, object]:
    """The asyncio API: sessions and a one-shot run awaited together, the loop never blocked."""
    import asyncio

    import stockade

    async def main() -> dict[str, object]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick = asyncio.create_task(ticker())
        async with stockade.AsyncSessionManager(cwd=cwd, roots=[cwd], backend=backend) as m:
            repl = await m.start([sys.executable, "-i", "-q"], tty=True)
            await repl.read(1000)
            await repl.write("print(6 * 7)\n")
            repl_out, one_shot = await asyncio.gather(
                repl.read(1500), stockade.arun(["sh", "-c", "echo one-shot"], cwd=cwd, backend=backend)
            )
            slow = await m.start("sleep 0.5; echo slept")
            before = ticks
            slept = await slow.read(5000)
            during = ticks - before
            listed = [i.id for i in m.list()]
        tick.cancel()
        return {
            "repl": repl_out.stdout,
            "one_shot": one_shot.stdout,
            "slept": [slept.stdout, slept.exit_code],
            "ticks_while_waiting": during,
            "listed": listed,
        }

    return asyncio.run(main())


def thread_exit(backend: str, cwd: str) -> dict[str, object]:
    """A session started from a thread that then ends (asyncio's and the MCP SDK's workers do)."""
    import threading

    from stockade.exec import SessionManager

    m = SessionManager(cwd=cwd, roots=[cwd], backend=backend)
    box: dict[str, object] = {}
    worker = threading.Thread(target=lambda: box.setdefault("s", m.start("read line; echo got-$line")))
    worker.start()
    worker.join()
    time.sleep(1.5)
    session = box["s"]
    alive = session.running  # type: ignore[attr-defined]
    session.write("late\n")  # type: ignore[attr-defined]
    out = session.read(10_000)  # type: ignore[attr-defined]
    m.close_all()
    return {"alive": alive, "out": [out.stdout, out.exit_code]}


def abandoned(backend: str, cwd: str, marker: str, how: str) -> dict[str, object]:
    """Start sessions and never close them: exit normally, or wait to be SIGKILLed."""
    from stockade.exec import SessionManager

    m = SessionManager(cwd=cwd, roots=[cwd], backend=backend)
    for tty in (False, True):
        m.start(f"bash -c 'exec -a {marker} sleep 1000'", tty=tty).read(300)
    print(json.dumps({"started": True}), flush=True)
    sys.stdin.readline()  # the test has seen the sessions; now exit (or be killed meanwhile)
    return {}


def contained(backend: str, cwd: str, config: str) -> dict[str, object]:
    """A fork bomb and a memory hog in sessions under `[limits]`; this process stays usable."""
    from stockade.exec import SessionManager

    m = SessionManager(cwd=cwd, roots=[cwd], backend=backend, profile="limited", config=config)
    bomb = m.start("bomb() { bomb | bomb & }; bomb; sleep 2; echo bomb-done")
    hog = m.start([sys.executable, "-c", "b = bytearray(4 << 30)"])
    hog_out = hog.read(20_000)
    probe = m.start("echo responsive")
    probe_out = probe.read(20_000)
    bombed = bomb.read(3000)
    m.close_all()
    return {
        "bomb_limited": "Cannot fork" in bombed.stderr,  # dash's words for EAGAIN from fork
        "hog": [hog_out.exit_code, "MemoryError" in hog_out.stderr],
        "probe": [probe_out.stdout, probe_out.exit_code],
    }


if __name__ == "__main__":
    scenarios = {"interactive": interactive, "fifty": fifty, "limits": limits, "asyncio": asyncio_api}
    scenarios["thread_exit"] = thread_exit
    scenarios["abandoned"] = abandoned
    print(json.dumps({**scenarios, "contained": contained}[sys.argv[1]](*sys.argv[2:])))


# ---- the tests ----


def drive(who: Who, scenario: str, backend: str, cwd: Path, *extra: str) -> dict:
    done = who.run([who.python, __file__, scenario, backend, str(cwd), *extra], cwd, timeout=180)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("backend", ["bwrap", "landlock"])
def test_repl_shell_resize_interrupt_pipes_and_exit(who: Who, workspace: Path, backend: str) -> None:
    out = drive(who, "interactive", backend, workspace)
    assert "42" in out["repl"].split(), out["repl"]
    assert "cwd=/tmp y=7" in out["shell"] and "24 80" in out["shell"], out["shell"]
    assert "40 100" in out["resized"], out["resized"]
    assert "^C" in out["interrupted"] and "finished-sleeping" not in out["interrupted"]
    assert "alive" in out["alive"].split(), out["alive"]
    assert out["pipes"] == ["to-out\ngot-input\n", "to-err\n", False, 0], out["pipes"]
    assert out["background"] == ["started\n", False, 0], out["background"]
    assert out["background_left"] == "", "the background grandchild outlived its session"
    length, marked, code = out["big"]
    assert marked and length < 4096 + 100 and code == 0, out["big"]


@pytest.mark.parametrize("backend", ["bwrap", "landlock"])
def test_fifty_sessions_leave_no_process_fd_or_file(who: Who, workspace: Path, backend: str) -> None:
    out = drive(who, "fifty", backend, workspace)
    assert out["ok"], "a session lost its output or exit status"
    assert out["after"] == out["before"], (out["before"], out["after"])


@pytest.mark.parametrize("backend", ["bwrap", "landlock"])
def test_asyncio_api_never_blocks_the_loop(who: Who, workspace: Path, backend: str) -> None:
    out = drive(who, "asyncio", backend, workspace)
    assert "42" in out["repl"].split(), out["repl"]
    assert out["one_shot"] == "one-shot\n"
    assert out["slept"] == ["slept\n", 0], out["slept"]
    assert out["ticks_while_waiting"] >= 10, out  # the loop ran while a read waited half a second
    assert out["listed"] == ["1", "2"], out


@pytest.mark.parametrize("backend", ["bwrap", "landlock"])
def test_a_session_outlives_the_thread_that_started_it(who: Who, workspace: Path, backend: str) -> None:
    out = drive(who, "thread_exit", backend, workspace)
    assert out == {"alive": True, "out": ["got-late\n", 0]}, out


@pytest.mark.parametrize("backend", ["bwrap", "landlock"])
@pytest.mark.parametrize("how", ["exit", "kill"])
def test_sessions_end_when_python_exits_or_dies(who: Who, workspace: Path, backend: str, how: str) -> None:
    marker = f"stockade-abandoned-{os.getpid()}-{who.name}-{backend}-{how}"
    argv = [who.python, __file__, "abandoned", backend, str(workspace), marker, how]
    proc = subprocess.Popen(
        argv,
        cwd=workspace,
        env=who.env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        **who._popen_kw(),  # type: ignore[arg-type]
    )
    assert proc.stdout is not None
    assert "started" in proc.stdout.readline()
    deadline = time.monotonic() + 10
    while len(pgrep(marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(pgrep(marker)) == 2, "the sessions did not start"
    if how == "kill":
        proc.kill()
    proc.communicate("exit\n", timeout=30)
    deadline = time.monotonic() + 10
    while pgrep(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pgrep(marker) == [], "a session outlived the Python process that started it"


def pgrep(marker: str) -> list[str]:
    return subprocess.run(["pgrep", "-f", f"^{marker}"], capture_output=True, text=True).stdout.split()


def test_fork_bomb_and_memory_hog_in_sessions_are_contained(who: Who, workspace: Path) -> None:
    cfg = who.mkdtemp("cfg-") / "limits.toml"
    cfg.write_text(
        '[profiles.limited]\nextends = "workspace"\n'
        '[profiles.limited.limits]\nprocesses = 64\nmemory = "1G"\n'
    )
    who.own(cfg.parent)
    out = drive(who, "contained", "bwrap", workspace, str(cfg))
    assert out["hog"] == [1, True], out
    assert out["bomb_limited"], out
    assert out["probe"] == ["responsive\n", 0], out


def test_limits_evict_idle_and_wall_clock(who: Who, workspace: Path) -> None:
    out = drive(who, "limits", "bwrap", workspace)
    assert out["after_evict"] == ["2", "3", "4"] and out["first_running"] is False, out
    assert out["after_idle"] == [], out
    assert out["wall"] == [False, 128 + 9], out


def test_output_buffer_keeps_head_and_tail_with_a_marker() -> None:
    buf = OutputBuffer(cap=100)
    buf.append(b"a" * 30)
    buf.append(b"b" * 200)
    buf.append(b"c" * 40)
    data = buf.take(limit=10_000)
    assert data.startswith(b"a" * 30 + b"b" * 20) and data.endswith(b"b" * 10 + b"c" * 40)
    assert b"[... 170 bytes of output dropped ...]" in data
    assert buf.take() == b""
    buf.append(b"0123456789" * 10)
    small = buf.take(limit=20)
    assert small.startswith(b"0123456789") and small.endswith(b"0123456789") and b"80 bytes" in small
