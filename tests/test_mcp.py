"""`stockade mcp` driven by the MCP SDK's own client over stdio, as root and as a user: commands,
output, stdin, listing and closing sessions; tool calls cannot widen the policy or leave the
roots; mistakes are tool errors; every session ends with the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Who

pytest.importorskip("mcp", reason="the mcp extra is part of the dev extras: pip install -e '.[dev]'")
from mcp import ClientSession, StdioServerParameters, stdio_client


def server_params(who: Who, workspace: Path) -> StdioServerParameters:
    argv = [who.python, "-m", "stockade", "mcp", "--root", str(workspace), "--profile", "workspace"]
    if who.uid != os.getuid():
        argv = ["setpriv", f"--reuid={who.uid}", f"--regid={who.gid}", "--clear-groups", *argv]
    return StdioServerParameters(command=argv[0], args=argv[1:], env=who.env(), cwd=str(workspace))


async def call(session: ClientSession, tool: str, **args: Any) -> tuple[bool, Any]:
    result = await session.call_tool(tool, args)
    if result.is_error:
        return True, " ".join(getattr(c, "text", "") for c in result.content)
    data = result.structured_content
    return False, data.get("result", data) if isinstance(data, dict) else data


async def drive(who: Who, workspace: Path, outside: Path, marker: str) -> dict[str, Any]:
    got: dict[str, Any] = {}
    async with stdio_client(server_params(who, workspace)) as (read, write), ClientSession(read, write) as s:
        await s.initialize()
        tools = (await s.list_tools()).tools
        got["tools"] = {
            t.name: (t.description or "", sorted(t.input_schema.get("properties", {}))) for t in tools
        }
        got["echo"] = await call(s, "exec_command", cmd="echo hi; pwd")
        err, repl = await call(s, "exec_command", cmd="python3 -i -q", tty=True, yield_time_ms=1500)
        got["repl_started"] = (err, repl)
        if not err:
            await call(s, "write_stdin", session_id=repl["session_id"], chars="x = 41\n", yield_time_ms=300)
            got["repl"] = await call(s, "write_stdin", session_id=repl["session_id"], chars="print(x + 1)\n")
        err, reader = await call(s, "exec_command", cmd="read v; echo got-$v", yield_time_ms=200)
        got["reader_started"] = (err, reader)
        got["reader"] = await call(s, "write_stdin", session_id=reader["session_id"], chars="abc\n")
        await call(s, "exec_command", cmd=f"bash -c 'exec -a {marker} sleep 1000'", yield_time_ms=100)
        got["listed"] = await call(s, "list_sessions")
        if not err:
            got["closed"] = await call(s, "close_session", session_id=repl["session_id"])
        got["listed_after"] = await call(s, "list_sessions")
        got["unknown"] = await call(s, "close_session", session_id="999")
        got["outside_workdir"] = await call(s, "exec_command", cmd="pwd", workdir="/")
        got["dotdot_workdir"] = await call(s, "exec_command", cmd="pwd", workdir="../..")
        # Arguments the schema does not have cannot change the policy: still sandboxed.
        got["widen"] = await call(
            s, "exec_command", cmd=f"touch {outside}/escaped; echo rc=$?", profile="full-access", roots=["/"]
        )
        got["secret"] = await call(s, "exec_command", cmd="cat .env; echo rc=$?")
        got["bad_type"] = await call(s, "exec_command", cmd="true", yield_time_ms="soon")
        got["still_alive"] = await call(s, "exec_command", cmd="echo alive")
    return got


def test_mcp_client_drives_sessions_within_the_policy(who: Who, workspace: Path) -> None:
    (workspace / ".env").write_text("TOKEN=hunter2\n")
    who.own(workspace)
    outside = who.mkdtemp("outside-")
    marker = f"stockade-mcp-{os.getpid()}-{who.name}"
    got = asyncio.run(asyncio.wait_for(drive(who, workspace, outside, marker), 120))

    assert set(got["tools"]) == {"exec_command", "write_stdin", "list_sessions", "close_session"}
    assert all(desc for desc, _ in got["tools"].values()), got["tools"]
    assert "profile" not in got["tools"]["exec_command"][1] and "cmd" in got["tools"]["exec_command"][1]

    err, echo = got["echo"]
    assert not err and echo["output"] == f"hi\n{workspace}\n" and echo["exit_code"] == 0, echo
    assert echo["running"] is False and echo["session_id"] is None
    assert not got["repl_started"][0], got["repl_started"]
    assert "42" in got["repl"][1]["output"], got["repl"]
    assert got["reader_started"][1]["running"] is True
    assert got["reader"][1]["output"] == "got-abc\n" and got["reader"][1]["exit_code"] == 0, got["reader"]
    listed = {s["session_id"]: s for s in got["listed"][1]}
    assert got["repl_started"][1]["session_id"] in listed and any(
        marker in s["command"] and s["running"] for s in listed.values()
    ), listed
    assert got["closed"] == (False, {"session_id": got["repl_started"][1]["session_id"], "closed": True})
    assert got["repl_started"][1]["session_id"] not in {s["session_id"] for s in got["listed_after"][1]}

    err, message = got["unknown"]
    assert err and "no session '999'" in message, message
    for key in ("outside_workdir", "dotdot_workdir"):
        err, message = got[key]
        assert err and "outside the workspace roots" in message, (key, message)
    err, widen = got["widen"]
    assert err or "rc=1" in widen["output"], widen
    assert not (outside / "escaped").exists()
    err, secret = got["secret"]
    assert not err and "hunter2" not in secret["output"] and "rc=1" in secret["output"], secret
    assert got["bad_type"][0], got["bad_type"]
    assert got["still_alive"][1]["output"] == "alive\n", got["still_alive"]

    # The client is gone, so is the server: every session ended with it.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and subprocess.run(["pgrep", "-f", marker], capture_output=True).stdout:
        time.sleep(0.1)
    assert not subprocess.run(["pgrep", "-f", marker], capture_output=True).stdout


def test_mcp_config_errors_exit_before_serving(who: Who, workspace: Path) -> None:
    done = who.stockade("mcp", "--root", str(workspace), "--profile", "workspce", cwd=workspace, input="")
    assert done.returncode == 2 and "workspace" in done.stderr and "Traceback" not in done.stderr, done.stderr
    done = who.stockade("mcp", "--root", str(workspace / "missing"), cwd=workspace, input="")
    assert done.returncode == 2 and "missing" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert json.dumps(done.stdout) == '""'  # nothing on the protocol channel
