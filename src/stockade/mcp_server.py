"""`stockade mcp`: sandboxed sessions for an agent, as MCP tools over stdio.

The profile, the workspace roots, the config file and the backend are fixed when the server
starts; no tool takes them, so a model can neither widen the policy nor step outside the roots
(a `workdir` must lie inside one). Every session ends when the server does. User mistakes come
back as tool errors with the reason, never as a crashed server.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from pydantic import Field

try:
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
except ImportError as exc:  # the optional extra
    raise ImportError("stockade mcp needs the MCP SDK: pip install 'stockade[mcp]'") from exc

from .errors import StockadeError
from .exec.session import MAX_YIELD_MS, READ_CAP, Output, SessionManager

INSTRUCTIONS = """Run shell commands in a sandbox (profile {profile}; workspace roots: {roots}).
Start a command with exec_command; if it is still running after yield_time_ms you get a
session_id: send input with write_stdin (an empty string just waits for more output) and end it
with close_session. Files outside the roots and the network may be unavailable by policy."""


def _result(out: Output) -> dict[str, Any]:
    return {
        "session_id": out.session if out.running else None,
        "running": out.running,
        "exit_code": out.exit_code,
        "output": out.stdout,
        "stderr": out.stderr,
    }


def build_server(manager: SessionManager, roots: list[str], profile: str) -> MCPServer:
    server = MCPServer("stockade", instructions=INSTRUCTIONS.format(profile=profile, roots=", ".join(roots)))

    def guarded(call: Any) -> Any:
        try:
            return call()
        except StockadeError as exc:  # config and policy problems: the model can read and adapt
            raise ToolError(str(exc)) from None
        except OSError as exc:
            raise ToolError(f"{exc.strerror or exc}") from None

    def workdir_of(workdir: str | None) -> str:
        path = os.path.realpath(os.path.join(roots[0], workdir or "."))
        if not any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots):
            raise ToolError(f"workdir {workdir!r} is outside the workspace roots ({', '.join(roots)})")
        return path

    @server.tool()
    def exec_command(
        cmd: Annotated[str, Field(description="Shell command line, run with /bin/sh -c")],
        workdir: Annotated[
            str | None, Field(description="Directory to run in, inside a workspace root (default: the first)")
        ] = None,
        tty: Annotated[bool, Field(description="Run on a terminal (REPLs, prompts); merged output")] = False,
        yield_time_ms: Annotated[
            int, Field(description=f"Wait up to this long for output or exit (0..{MAX_YIELD_MS})")
        ] = 10_000,
        max_output_bytes: Annotated[
            int, Field(description="Return at most about this much output; the middle is dropped, marked")
        ] = 16_384,
        rows: Annotated[int, Field(description="Terminal rows (tty only)", ge=1, le=1000)] = 24,
        cols: Annotated[int, Field(description="Terminal columns (tty only)", ge=1, le=1000)] = 80,
    ) -> dict[str, Any]:
        """Start a command in the sandbox and return its output so far. If it is still running,
        the result has a session_id for write_stdin and close_session."""
        cwd = workdir_of(workdir)
        session = guarded(lambda: manager.start(cmd, cwd=cwd, tty=tty, rows=rows, cols=cols))
        return _result(session.read(yield_time_ms, _cap(max_output_bytes)))

    @server.tool()
    def write_stdin(
        session_id: Annotated[str, Field(description="The session_id exec_command returned")],
        chars: Annotated[str, Field(description="Text to send (\\n for Enter, \\u0003 for Ctrl-C)")] = "",
        yield_time_ms: Annotated[
            int, Field(description=f"Wait up to this long for output or exit (0..{MAX_YIELD_MS})")
        ] = 1_000,
        max_output_bytes: Annotated[int, Field(description="Return at most about this much output")] = 16_384,
    ) -> dict[str, Any]:
        """Send input to a running session and return the output that came after it."""
        session = guarded(lambda: manager.get(session_id))
        if chars:
            guarded(lambda: session.write(chars))
        return _result(session.read(yield_time_ms, _cap(max_output_bytes)))

    @server.tool()
    def list_sessions() -> list[dict[str, Any]]:
        """The open sessions: command, whether it still runs, exit code, age and idle time."""
        return [
            {
                "session_id": s.id,
                "command": s.argv[-1] if s.argv[:2] == ["/bin/sh", "-c"] else " ".join(s.argv),
                "tty": s.tty,
                "running": s.running,
                "exit_code": s.exit_code,
                "seconds": round(s.seconds, 1),
                "idle_seconds": round(s.idle_seconds, 1),
            }
            for s in manager.list()
        ]

    @server.tool()
    def close_session(
        session_id: Annotated[str, Field(description="The session to end (its whole process tree)")],
    ) -> dict[str, Any]:
        """End a session and everything it started; its unread output is discarded."""
        guarded(lambda: manager.close(session_id))
        return {"session_id": session_id, "closed": True}

    return server


def _cap(limit: int) -> int:
    return min(max(limit, 256), READ_CAP)


def serve(
    *,
    roots: list[str],
    profile: str | None,
    config: str | None,
    backend: str | None,
    audit: str | None = None,
) -> int:
    """Run the server on stdin/stdout until the client goes away; every session ends with it."""
    from .exec import prepare
    from .exec.process import recorder_for

    roots = [os.path.realpath(r) for r in roots] or [os.path.realpath(os.getcwd())]
    plan = prepare(cwd=roots[0], profile=profile, roots=roots, config=config, backend=backend)  # fail now
    recorder = recorder_for(plan, config, audit)
    manager = SessionManager(
        cwd=roots[0], profile=profile, roots=roots, config=config, backend=backend, recorder=recorder
    )
    try:
        build_server(manager, roots, plan.profile).run("stdio")
    finally:
        manager.close_all()
        recorder.close()
    return 0
