"""Plans materialized on Windows: the official Windows CPython under Wine (tests/wine.py).

What runs here is stockade's own code on Windows' `ntpath`, `os` and Win32 file functions, on
a C: drive: profile keys, `~`, TEMP, `:root`, `:minimal`, the glob walk (case-insensitive, `\\`),
protected metadata and the Windows renderer on the Plan it gets. Wine does not enforce ACLs, so
nothing here says the command is confined; `scripts/smoke-windows.ps1` does that on Windows.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_proxy import servers as servers  # a web and an echo server, on the host's loopback

pytestmark = pytest.mark.usefixtures("winpy")


@pytest.fixture
def host(winpy: Any) -> dict[str, Any]:
    """A checkout with secrets, a home with SSH keys and credentials, and a TEMP, all on C:."""
    ws = winpy.mkdtemp("proj-")
    (ws / ".git" / "objects").mkdir(parents=True)
    (ws / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (ws / ".env").write_text("SECRET")
    (ws / "src" / "deep").mkdir(parents=True)
    (ws / "src" / "deep" / ".ENV.local").write_text("SECRET")  # NTFS: `.env.*` matches this
    (ws / "src" / "app.py").write_text("print(1)\n")
    (ws / "certs").mkdir()
    (ws / "certs" / "Server.PEM").write_text("KEY")
    home = winpy.mkdtemp("home-")
    ssh = home / ".ssh"
    ssh.mkdir()
    (ssh / "id_ed25519").write_text("KEY")
    (ssh / "known_hosts").write_text("host")
    (home / "keys").mkdir()
    (home / "keys" / "deploy").write_text("KEY")
    (ssh / "config").write_text("Host *\n  IdentityFile ~/keys/deploy\n")
    (home / ".aws").mkdir()
    (home / ".aws" / "credentials").write_text("KEY")
    (home / "Documents").mkdir()
    temp = winpy.mkdtemp("temp-")
    env = {
        "USERPROFILE": winpy.win(home),
        "TEMP": winpy.win(temp),
        "TMP": winpy.win(temp),
        "TMPDIR": "/tmp",  # what Git Bash leaves behind: never a Windows program's tmp
    }
    return {"ws": ws, "home": home, "temp": temp, "env": env}


def _rules(plan: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Canonical path (case-folded, as Windows compares) -> (access, kind)."""
    return {r["path"].casefold(): (r["access"], r["kind"]) for r in plan["rules"]}


def test_the_workspace_plan_names_windows_paths_and_denies_what_linux_denies(winpy: Any, host: dict) -> None:
    ws, home, temp = (winpy.win(host[k]) for k in ("ws", "home", "temp"))
    plan = winpy.plan("--deny", "**/*.pem", cwd=host["ws"], env=host["env"])
    rules = _rules(plan)
    at = lambda path: rules.get(path.casefold(), (None, None))[0]  # noqa: E731

    assert plan["roots"] == [ws] and plan["cwd"] == ws
    assert at(ws) == "write"
    assert at("C:\\") == "read"  # `:root`: the drive, not `/`
    # The secrets, found by Windows' own walk, `\\` and case-insensitively.
    assert at(ws + "\\.env") == "deny"
    assert at(ws + "\\src\\deep\\.ENV.local") == "deny"
    assert at(ws + "\\certs\\Server.PEM") == "deny"
    assert at(home + "\\.ssh") == "deny"
    assert at(home + "\\.aws") == "deny"
    assert at(home + "\\keys\\deploy") == "deny"  # named by ~/.ssh/config
    assert at(home + "\\.ssh\\known_hosts") == "read"
    # Protected metadata inside the root, in Windows form.
    assert at(ws + "\\.git") == "write"
    assert at(ws + "\\.git\\config") == "read" and at(ws + "\\.git\\hooks") == "read"
    # TEMP is where temporary files go, and it is writable; no POSIX path anywhere.
    assert plan["tmpdir"] == temp and at(temp) == "write"
    assert {plan["env"][k] for k in ("TEMP", "TMP", "TMPDIR")} == {temp}
    paths = [r["path"] for r in plan["rules"]] + [p["path"] for p in plan["placeholders"]]
    assert not [p for p in paths if "/" in p or p[1:3] != ":\\"], paths
    assert {g["pattern"] for g in plan["globs"]} >= {ws + "\\**\\.env", ws + "\\**\\*.pem"}


def test_the_windows_renderer_gets_deny_aces_for_the_secrets_and_none_on_home_or_keys(
    winpy: Any, host: dict
) -> None:
    ws, home = winpy.win(host["ws"]), winpy.win(host["home"])
    done = winpy.stockade("explain", "--platform", "windows", "--json", cwd=host["ws"], env=host["env"])
    assert done.returncode == 0, done.stderr
    wp = json.loads(done.stdout)
    assert wp["refusals"] == []
    denied = {a["path"].casefold() for a in wp["aces"] if a["kind"] == "deny" and "READ" in a["rights"]}
    assert {(ws + p).casefold() for p in ("\\.env", "\\src\\deep\\.ENV.local")} <= denied
    targets = {a["path"].casefold() for a in wp["aces"]}
    for never in (home, home + "\\.ssh", home + "\\keys", home + "\\keys\\deploy"):
        assert never.casefold() not in targets  # OpenSSH refuses keys with foreign ACEs
    writes = [a for a in wp["aces"] if a["path"] == ws and a["kind"] == "allow" and "WRITE" in a["rights"]]
    assert writes and all("DELETE_CHILD" in a["rights"] for a in writes)  # os.replace works
    assert ws.replace("\\", "/") in wp["safe_directory"]


LAUNCH = """
import json, os, stockade
from stockade.backends.windows import WindowsBackend
plan = stockade.explain(profile="read-only")
backend = WindowsBackend("elevated", state_file=os.path.join(ARGS[0], "sids.json"))
spec = backend.launch(plan, ["cmd", "/c", "exit"])
with open(os.path.join(spec.remove_after[0], "plan.json"), encoding="utf-8") as fh:
    wp = json.load(fh)
made = [os.path.isdir(p) for p in spec.remove_after]
status = backend.finish(spec, 0)  # the helper never ran: no marker, so no status of the command
print(json.dumps({"argv": spec.argv, "env": spec.env, "remove_after": spec.remove_after, "plan": wp,
                  "made": made, "status": status, "left": [os.path.exists(p) for p in spec.remove_after]}))
"""


def test_read_only_gets_a_fresh_private_tmp_below_temp_for_each_run(winpy: Any, host: dict) -> None:
    """launch() itself, on Windows CPython: the spec of the applier, the plan file it reads, and
    a private directory below TEMP that is writable, where TEMP/TMP/TMPDIR point, removed after."""
    temp = winpy.win(host["temp"])
    plan = winpy.plan("--profile", "read-only", cwd=host["ws"], env=host["env"])
    assert [r["path"] for r in plan["rules"] if r["kind"] == "scratch"] == [temp + "\\stockade-tmp"]
    state = winpy.mkdtemp("state-")
    runs = []
    for _ in range(2):
        done = winpy.run(LAUNCH, winpy.win(state), cwd=host["ws"], env=host["env"])
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(done.stdout))
    for run in runs:
        private = run["remove_after"][1]
        assert private.startswith(temp + "\\stockade-tmp-") and run["made"] == [True, True]
        assert {run["env"][k] for k in ("TEMP", "TMP", "TMPDIR")} == {private}
        assert run["plan"]["refusals"] == []
        grants = [a for a in run["plan"]["aces"] if a["path"] == private and a["kind"] == "allow"]
        assert grants and all({"WRITE", "DELETE", "DELETE_CHILD"} <= set(a["rights"]) for a in grants)
        assert run["argv"][1:3] == ["-m", "stockade.backends.windows.apply"]
        assert run["status"] is None and run["left"] == [False, False]  # plan file and private tmp gone
    assert runs[0]["remove_after"][1] != runs[1]["remove_after"][1]  # one per run


def test_windows_keys_in_a_config_file(winpy: Any, host: dict) -> None:
    ws = host["ws"]
    data = winpy.mkdtemp("data-")
    (data / "d1").mkdir()
    (data / "d2").mkdir()
    (host["home"] / "notes").mkdir()
    (ws / "src" / "out").mkdir()
    d1, d2 = winpy.win(data / "d1"), winpy.win(data / "d2")
    config = ws / "stockade.toml"
    config.write_text(
        "[profiles.win]\nextends = \"workspace\"\n[profiles.win.filesystem]\n"
        f"'{d1}' = \"read\"\n"  # C:\...\d1, backslashes (a TOML literal string)
        f"'{d2.replace(chr(92), '/')}' = \"write\"\n"  # C:/.../d2
        "'~\\notes' = \"write\"\n"  # ~\ is home on Windows
        "'src\\out' = \"write\"\n"  # relative to every root, with a backslash
        "':slash_tmp' = \"write\"\n"  # no /tmp here: a note, nothing granted
    )
    plan = winpy.plan("--config", winpy.win(config), "--profile", "win", cwd=ws, env=host["env"])
    rules = _rules(plan)
    assert rules[d1.casefold()][0] == "read" and rules[d2.casefold()][0] == "write"
    assert rules[(winpy.win(host["home"]) + "\\notes").casefold()][0] == "write"
    assert rules[(winpy.win(ws) + "\\src\\out").casefold()][0] == "write"
    assert any("no /tmp" in n for n in plan["notes"])
    assert not any(r["path"].startswith("/") for r in plan["rules"])


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("/opt/tools", "names no full location on Windows"),  # rooted on "the current drive"
        ("C:relative", "names no full location on Windows"),
        ("..\\\\outside", "must stay inside the root"),
    ],
)
def test_a_key_windows_cannot_place_is_an_error_naming_file_and_key(
    winpy: Any, host: dict, key: str, says: str
) -> None:
    config = host["ws"] / "bad.toml"
    config.write_text(f'[profiles.win]\nextends = "workspace"\n[profiles.win.filesystem]\n"{key}" = "read"\n')
    done = winpy.stockade(
        "explain", "--config", winpy.win(config), "--profile", "win", cwd=host["ws"], env=host["env"]
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stderr and "bad.toml" in done.stderr and "Traceback" not in done.stderr


def test_minimal_is_the_windows_system_and_the_interpreter(winpy: Any, host: dict) -> None:
    config = host["ws"] / "min.toml"
    body = "':minimal' = \"read\"\n':workspace_roots' = \"write\"\n"
    config.write_text("[profiles.m]\n[profiles.m.filesystem]\n" + body)
    plan = winpy.plan("--config", winpy.win(config), "--profile", "m", cwd=host["ws"], env=host["env"])
    readable = {r["path"].casefold() for r in plan["rules"] if r["access"] == "read"}
    assert "c:\\windows" in readable
    python_dir = str(Path(winpy.win(Path(winpy.python).parent))).casefold()
    assert python_dir in readable
    assert not any(p.startswith("/") for p in readable)


def test_run_fails_closed_when_the_sandbox_account_is_missing(winpy: Any, host: dict) -> None:
    """`stockade run` on Windows CPython goes all the way to the applier, which finds no sandbox
    account: it says how to create one, nothing runs, nothing is left, no traceback."""
    local = host["home"] / "AppData" / "Local"
    env = {**host["env"], "LOCALAPPDATA": winpy.win(local)}
    done = winpy.stockade(
        "run", "--backend", "windows", "--", "cmd", "/c", "echo ran> marker.txt", cwd=host["ws"], env=env
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "sandbox account stockade-offline does not exist" in done.stderr
    assert "--setup stockade-offline" in done.stderr and "nothing was run" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (host["ws"] / "marker.txt").exists()
    assert not list((local / "stockade").glob("stockade-win-*"))  # the plan file went too


SESSIONS = """
from stockade import *  # the names are there (hasattr works); using one says why it cannot run
import stockade
for name in ("SessionManager", "AsyncSessionManager", "arun"):
    try:
        getattr(stockade, name)(profile="workspace")
    except stockade.SandboxUnavailable as exc:
        print(exc)
"""


def test_what_windows_lacks_says_so_instead_of_a_traceback(winpy: Any, host: dict) -> None:
    done = winpy.run(SESSIONS, cwd=host["ws"], env=host["env"])
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and all("not available on Windows yet" in line for line in lines)
    done = winpy.stockade("mcp", cwd=host["ws"], env=host["env"])
    assert done.returncode == 2 and "not available on Windows yet" in done.stderr
    assert "Traceback" not in done.stderr


PYTEST = """
import sys
sys.path.insert(0, ARGS[0])
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-rs", ARGS[1]]))
"""


def test_a_windows_contributor_runs_the_portable_tests(winpy: Any) -> None:
    """`pytest` in Windows CPython collects only conftest's PORTABLE set for win32, and it passes:
    what a contributor with a Windows box runs before scripts/smoke-windows.ps1."""
    site = winpy.mkdtemp("site-")
    for name in ("pytest", "_pytest", "pluggy", "iniconfig", "packaging", "pygments", "py"):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        if origin.name == "__init__.py":
            shutil.copytree(origin.parent, site / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(origin, site / origin.name)
    tests = Path(__file__).resolve().parent
    done = winpy.run(PYTEST, winpy.win(site), winpy.win(tests), cwd=tests.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert "failed" not in summary and "error" not in summary, summary
    assert int(summary.split(" passed")[0].split()[-1]) >= 90, summary  # the renderer's tests ran


PROXY = r"""
import json, os, socket, urllib.request
import stockade
from stockade.backends.windows import WindowsBackend
from stockade.exec.proxy import start_proxy
web, echo = int(ARGS[0]), int(ARGS[2])
allow = ("ok.test", f"127.0.0.1:{web}", f"127.0.0.1:{echo}")
plan = stockade.explain(network="proxy", allow_domains=allow, deny_domains=("bad.test",))
running = start_proxy(plan)  # Windows: the loopback port alone (no unix sockets, no bridge)
port = running.endpoint.tcp_port
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{port}"}))
def get(url):
    try:
        with opener.open(url, timeout=10) as r:
            return f"{r.status} {r.read().decode()}"
    except urllib.error.HTTPError as e:
        return f"{e.code} {e.read().decode().strip()}"
out = {"port": port, "ok": get(f"http://ok.test:{web}/x"), "bad": get(f"http://bad.test:{web}/x")}
tunnel = socket.create_connection(("127.0.0.1", port), timeout=10)  # CONNECT: what HTTPS does
tunnel.sendall(f"CONNECT ok.test:{echo} HTTP/1.1\r\nHost: ok.test:{echo}\r\n\r\n".encode())
head = b""
while not head.endswith(b"\r\n\r\n"):
    head += tunnel.recv(1)
tunnel.sendall(b"tunnel" * 50000)  # 300 kB through the copying relay (no splice on Windows)
tunnel.shutdown(socket.SHUT_WR)
back = b""
while data := tunnel.recv(65536):
    back += data
out["tunnel"] = [head.split()[1].decode(), len(back), back[:6].decode()]
backend = WindowsBackend("elevated", state_file=os.path.join(ARGS[1], "sids.json"))
spec = backend.launch(plan, ["cmd", "/c", "exit"], running.endpoint)
with open(os.path.join(spec.remove_after[0], "plan.json"), encoding="utf-8") as fh:
    out["firewall"] = json.load(fh)["firewall"]
out["env"] = {k: spec.env[k] for k in ("HTTP_PROXY", "ALL_PROXY", "GIT_SSH_COMMAND")}
backend.finish(spec, 0)
running.close()
print(json.dumps(out))
"""


def test_proxy_mode_on_windows_listens_on_loopback_and_the_firewall_keeps_that_port_open(
    winpy: Any, host: dict, servers: dict[str, int]
) -> None:
    """The filtering proxy itself runs in Windows CPython (on a loopback port: no unix sockets)
    and decides there; launch() gives the firewall rules that port alone and points the command
    at it. Wine has no firewall: the rules are data here, checked by the smoke script there."""
    web = servers["web"]
    hosts = host["ws"].parent / f"{host['ws'].name}-hosts"
    hosts.write_text("127.0.0.1 ok.test bad.test\n")
    env = {**host["env"], "STOCKADE_PROXY_HOSTS": winpy.win(hosts)}
    state = winpy.mkdtemp("state-")
    done = winpy.run(PROXY, str(web), winpy.win(state), str(servers["echo"]), cwd=host["ws"], env=env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    port = out["port"]
    assert out["ok"] == f"200 hello from ok.test:{web} /x", out
    assert out["bad"].startswith("403 stockade: blocked bad.test"), out
    assert out["tunnel"] == ["200", 300000, "TUNNEL"], out["tunnel"]
    assert out["env"]["HTTP_PROXY"] == f"http://127.0.0.1:{port}"
    assert out["env"]["GIT_SSH_COMMAND"] == f"ssh -o ProxyCommand='connect -H 127.0.0.1:{port} %h %p'"
    (tcp,) = [r for r in out["firewall"] if r["protocol"] == "tcp" and "127.0.0.1" in r["remote_addresses"]]

    def blocked(p: int) -> bool:
        ranges = (r.partition("-") for r in tcp["remote_ports"])
        return any(int(a) <= p <= int(b or a) for a, _, b in ranges)

    assert not blocked(port) and blocked(port - 1) and blocked(port + 1) and blocked(web), tcp


RESTRICTED = r"""
import os, stockade
from stockade.backends.windows import WindowsBackend
from stockade.exec.process import Sandboxed
plan = stockade.explain(profile="r", config=ARGS[1])
backend = WindowsBackend("restricted", state_file=os.path.join(ARGS[0], "sids.json"))
with Sandboxed(plan, ["cmd.exe", "/d", "/c", "echo ran> marker.txt& exit 7"], backend=backend) as run:
    print(run.finish())
print(sorted(os.listdir(ARGS[0])))
"""


def test_the_restricted_backend_runs_a_command_through_the_applier(winpy: Any, host: dict) -> None:
    """The applier's Win32 sequence (DACLs read and written, a write-restricted token, a job
    object, the process and its status) runs in Windows CPython without an error: the ctypes
    layer is exercised for real. Wine enforces none of it (nor keeps the DACLs), so this says
    nothing about confinement."""
    state = winpy.mkdtemp("state-")
    config = host["ws"].parent / f"{host['ws'].name}-r.toml"
    config.write_text(
        '[profiles.r]\nglob_scan_max_depth = 8\n[profiles.r.filesystem]\n":root" = "read"\n'
        '":tmpdir" = "write"\n[profiles.r.filesystem.":workspace_roots"]\n"." = "write"\n'
        '[profiles.r.network]\nmode = "on"\n'  # what the restricted backend can hold
    )
    done = winpy.run(RESTRICTED, winpy.win(state), winpy.win(config), cwd=host["ws"], env=host["env"])
    assert done.returncode == 0, done.stderr
    status, left = done.stdout.splitlines()
    assert status == "7"  # the command's own exit status, through the helper
    assert (host["ws"] / "marker.txt").read_text().strip() == "ran"
    assert "stockade-win-" not in left  # the plan file went after the run
