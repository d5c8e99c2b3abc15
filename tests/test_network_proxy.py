"""`--network proxy` end to end, as root and as a user: the sandbox reaches the allowed hosts
through stockade's filtering proxy and nothing else (bubblewrap: a network namespace whose only
way out is the bridge to the proxy's socket).

Local servers stand in for the internet; the proxy resolves names through a hosts file the
test gives it (STOCKADE_PROXY_HOSTS), and 127.0.0.1 is allowed explicitly by an address rule.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Who
from test_proxy import servers as servers  # the fixture: a web server and an echo server

INSIDE = r"""
import json, os, shlex, socket, subprocess, sys, urllib.request
web, echo = int(sys.argv[1]), int(sys.argv[2])
out = {}
def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return f"{r.status} {r.read().decode()}"
    except urllib.error.HTTPError as e:
        return f"{e.code} {e.read().decode().strip()}"
    except OSError as e:
        return f"error {e}"
def attempt(fn):
    try:
        return f"open {fn()}"
    except OSError as e:
        return f"refused {e.errno}"
out["allowed"] = get(f"http://ok.test:{web}/x")
out["denied"] = get(f"http://bad.test:{web}/x")
out["unlisted"] = get(f"http://example.com/")
out["direct loopback"] = attempt(lambda: socket.create_connection(("127.0.0.1", web), timeout=3))
out["direct internet"] = attempt(lambda: socket.create_connection(("1.1.1.1", 80), timeout=3))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
out["dns udp"] = attempt(lambda: udp.sendto(b"x", ("1.1.1.1", 53)))
out["dns over tls"] = attempt(lambda: socket.create_connection(("1.1.1.1", 853), timeout=3))
out["icmp"] = attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
s = socket.create_connection(("127.0.0.1", 3128), timeout=10)  # SOCKS5, as ALL_PROXY says
s.sendall(b"\x05\x01\x00"); s.recv(2)
s.sendall(b"\x05\x01\x00\x03\x07ok.test" + echo.to_bytes(2, "big")); reply = s.recv(10)
s.sendall(b"socks"); s.shutdown(socket.SHUT_WR)
out["socks"] = f"{reply[1]} {s.recv(100).decode()}"
ssh = shlex.split(os.environ["GIT_SSH_COMMAND"])  # ssh -o ProxyCommand='HELPER --connect SOCK %h %p'
helper = shlex.split(ssh[2].split("=", 1)[1].replace("%h", "ok.test").replace("%p", str(echo)))
out["ssh tunnel"] = subprocess.run(helper, input=b"ssh", capture_output=True).stdout.decode()
helper[-2] = "bad.test"
out["ssh tunnel denied"] = subprocess.run(helper, input=b"ssh", capture_output=True).returncode
out["env"] = {k: os.environ[k] for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "PIP_PROXY")}
print(json.dumps(out))
"""


@pytest.fixture
def hosts(who: Who) -> Iterator[dict[str, str]]:
    path = who.mkdtemp("hosts-") / "hosts"
    path.write_text("127.0.0.1 ok.test bad.test\n")
    path.chmod(0o644)
    yield {"STOCKADE_PROXY_HOSTS": str(path)}


def test_only_allowed_hosts_are_reachable(
    who: Who,
    workspace: Path,
    servers: dict[str, int],
    hosts: dict[str, str],
) -> None:
    web, echo = servers["web"], servers["echo"]
    # Outside the sandbox the loopback server is right there: the direct attempt inside can fail
    # only because the sandbox has no way to it.
    socket.create_connection(("127.0.0.1", web), timeout=3).close()
    log = workspace.parent / f"{workspace.name}-net.log"
    flags = ["--backend", "bwrap", "--network", "proxy", "--log-network", str(log)]
    for rule in ("ok.test", "bad.test", f"127.0.0.1:{web}", f"127.0.0.1:{echo}"):
        flags += ["--allow-domain", rule]
    flags += ["--deny-domain", "bad.test"]
    done = who.stockade(
        "run", *flags, "--", who.python, "-c", INSIDE, str(web), str(echo), cwd=workspace, env=hosts
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["allowed"] == f"200 hello from ok.test:{web} /x", out
    assert (
        out["denied"].startswith("403 stockade: blocked bad.test")
        and 'denied by rule "bad.test"' in out["denied"]
    )
    assert out["unlisted"] == "403 stockade: blocked example.com:80 (not in the allow list)", out
    for way in ("direct loopback", "direct internet", "dns udp", "dns over tls", "icmp"):
        assert out[way].startswith("refused"), (way, out[way])
    assert out["socks"] == "0 SOCKS"
    assert out["ssh tunnel"] == "SSH" and out["ssh tunnel denied"] == 1
    assert out["env"]["HTTP_PROXY"] == "http://127.0.0.1:3128" and out["env"]["ALL_PROXY"].startswith(
        "socks5h://"
    )
    assert out["env"]["NO_PROXY"] == "localhost,127.0.0.1,::1"
    events = [json.loads(line) for line in log.read_text().splitlines()]
    decided = {(e["host"], e["allowed"]) for e in events}
    assert {("ok.test", True), ("bad.test", False), ("example.com", False)} <= decided, events
    assert all(e["command"] == events[0]["command"] and e["time"] > 0 for e in events)


def test_proxy_profiles_and_mistakes(who: Who, workspace: Path) -> None:
    config = workspace.parent / f"{workspace.name}-net.toml"
    config.write_text(
        '[profiles.deps]\nextends = "workspace"\n[profiles.deps.network]\nmode = "proxy"\n'
        'allow = ["pypi.org", "*.pythonhosted.org", "github.com:443"]\ndeny = ["uploads.github.com"]\n'
        '[profiles.typo]\nextends = "workspace"\n[profiles.typo.network]\nmode = "proxy"\n'
        'allow = ["pypi org"]\n'
        '[profiles.offlist]\nextends = "workspace"\n[profiles.offlist.network]\nallow = ["pypi.org"]\n'
    )
    config.chmod(0o644)
    done = who.stockade("explain", "--config", str(config), "--profile", "deps", cwd=workspace)
    assert done.returncode == 0, done.stderr
    assert (
        "network   proxy (allow pypi.org, *.pythonhosted.org, github.com:443; deny uploads.github.com)"
        in done.stdout
    )
    marker = workspace / "ran"
    for profile, key, words in (
        ("typo", "profiles.typo.network.allow", "spaces"),
        ("offlist", "profiles.offlist.network.allow", 'applies only to mode = "proxy"'),
    ):
        done = who.stockade(
            "run", "--config", str(config), "--profile", profile, "--", "touch", str(marker), cwd=workspace
        )
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert str(config) in done.stderr and key in done.stderr and words in done.stderr, done.stderr
    done = who.stockade("run", "--allow-domain", "pypi.org", "--", "touch", str(marker), cwd=workspace)
    assert done.returncode == 2 and "add --network proxy" in done.stderr, done.stderr
    done = who.stockade(
        "run", "--network", "proxy", "--allow-domain", "a\tb", "--", "touch", str(marker), cwd=workspace
    )
    assert done.returncode == 2 and "--allow-domain" in done.stderr, done.stderr
    assert not marker.exists()


def test_landlock_refuses_the_proxy_with_the_reason(who: Who, workspace: Path) -> None:
    done = who.stockade(
        "run",
        "--backend",
        "landlock",
        "--network",
        "proxy",
        "--allow-domain",
        "pypi.org",
        "--",
        "true",
        cwd=workspace,
    )
    assert done.returncode == 2 and "ports, not addresses" in done.stderr, done.stderr


def test_the_proxy_ends_with_the_command_and_a_sigterm_is_not_success(
    who: Who, workspace: Path, hosts: dict[str, str]
) -> None:
    argv = [who.python, "-m", "stockade", "run", "--backend", "bwrap", "--network", "proxy"]
    argv += ["--allow-domain", "ok.test", "--", "sh", "-c", "echo up; sleep 60"]
    proc = subprocess.Popen(
        argv,
        cwd=workspace,
        env=who.env(hosts),
        stdout=subprocess.PIPE,
        text=True,
        **who._popen_kw(),  # type: ignore[call-overload]
    )
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    state = Path(who.home) / ".local/state/stockade"
    assert any(p.name.startswith("proxy-") for p in state.iterdir())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 5
    while any(p.name.startswith("proxy-") for p in state.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(p.name.startswith("proxy-") for p in state.iterdir()), os.listdir(state)


@pytest.fixture
def origin(who: Who) -> Iterator[tuple[int, Path]]:
    """A package index and a git repository served over HTTP, as pypi.org and github.com are."""
    import functools
    import http.server
    import threading

    from test_filesystem import _wheel
    from test_proxy import Server

    root = who.mkdtemp("origin-")
    wheel = _wheel(root)
    project = root / "simple" / "hello-stockade"
    project.mkdir(parents=True)
    (project / "index.html").write_text(f'<a href="../../{wheel.name}">{wheel.name}</a>\n')
    src = root / "src"
    src.mkdir()
    (src / "README").write_text("cloned through the proxy\n")
    env = {"GIT_CONFIG_NOSYSTEM": "1", "HOME": str(root)}
    ident = ["-c", "user.name=t", "-c", "user.email=t@t"]
    for argv in (["init", "-q"], ["add", "README"], [*ident, "commit", "-qm", "init"]):
        subprocess.run(["git", *argv], cwd=src, check=True, env={**os.environ, **env})
    subprocess.run(
        ["git", "clone", "-q", "--bare", str(src), str(root / "repo.git")],
        check=True,
        env={**os.environ, **env},
    )
    subprocess.run(["git", "update-server-info"], cwd=root / "repo.git", check=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], root
    server.shutdown()


def test_pip_and_git_work_through_the_proxy(
    who: Who, workspace: Path, origin: tuple[int, Path], hosts: dict[str, str]
) -> None:
    port, _ = origin
    who.own(workspace)
    script = (
        f"{who.python} -m venv .venv && .venv/bin/python -m pip install -q --disable-pip-version-check "
        f"--no-cache-dir --trusted-host ok.test --index-url http://ok.test:{port}/simple/ hello-stockade && "
        ".venv/bin/python -c 'import hello_stockade; print(hello_stockade.GREETING)' && "
        f"git clone -q http://ok.test:{port}/repo.git clone && cat clone/README && "
        f"git clone -q http://bad.test:{port}/repo.git clone2; echo rc=$?"
    )
    flags = ["--backend", "bwrap", "--network", "proxy", "--allow-domain", "ok.test"]
    flags += ["--allow-domain", f"127.0.0.1:{port}"]
    done = who.stockade("run", *flags, "--", "sh", "-c", script, cwd=workspace, env=hosts)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["hi from a wheel", "cloned through the proxy"], done.stdout + done.stderr
    assert lines[2] != "rc=0" and "403" in done.stderr, done.stdout + done.stderr
