"""Tracing and the audit trail on real sandboxed commands: the API's spans (one-shot and
session) under the caller's span, TRACEPARENT handed to the command, the CLI's span reaching an
OTLP collector on loopback, audit lines, and the refusals stockade can see named on stderr.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Who, backend_who

import stockade
from stockade.telemetry import Recorder, from_tables

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is part of the dev extras")
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def in_memory(**tables: Any) -> tuple[Recorder, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tel, _ = from_tables({"exporter": "none", **tables}, environ={})
    return Recorder.from_config(tel, None, exporter=exporter), exporter


def test_api_span_has_the_callers_parent_attributes_and_the_command_continues_the_trace(
    tmp_path: Path,
) -> None:
    rec, exporter = in_memory(span_attributes={"team": "infra"})
    caller = TracerProvider().get_tracer("agent")
    with caller.start_as_current_span("agent.step") as parent:
        done = stockade.run(["sh", "-c", "echo $TRACEPARENT; exit 3"], cwd=tmp_path, recorder=rec)
    (span,) = exporter.get_finished_spans()
    ctx = parent.get_span_context()
    assert span.name == "stockade.run sh"
    assert span.parent is not None and span.parent.span_id == ctx.span_id
    assert span.context.trace_id == ctx.trace_id
    attrs = dict(span.attributes or {})
    assert attrs["team"] == "infra" and attrs["process.exit.code"] == 3, attrs
    assert attrs["stockade.profile"] == "workspace" and attrs["stockade.backend"] in ("bwrap", "landlock")
    assert attrs["stockade.duration_ms"] > 0 and "process.command_args" not in attrs
    version, trace_id, span_id, _ = done.stdout.strip().split("-")
    assert (version, trace_id, span_id) == ("00", f"{ctx.trace_id:032x}", f"{span.context.span_id:016x}")
    assert done.returncode == 3


def test_session_span_records_writes_under_the_callers_span(tmp_path: Path) -> None:
    rec, exporter = in_memory()
    caller = TracerProvider().get_tracer("agent")
    manager = stockade.SessionManager(cwd=str(tmp_path), roots=[str(tmp_path)], recorder=rec)
    with caller.start_as_current_span("agent.session") as parent:
        session = manager.start("read a; read b; echo $a$b")
    session.write("x\n")
    session.write("y\n")
    out = session.read(5000)
    manager.close_all()
    assert out.stdout == "xy\n" and out.exit_code == 0
    (span,) = exporter.get_finished_spans()
    assert span.name == "stockade.session sh"
    assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
    writes = [e for e in span.events if e.name == "stockade.write_stdin"]
    assert [dict(e.attributes or {})["bytes"] for e in writes] == [2, 2]


def test_refused_plan_is_a_span_with_the_error(tmp_path: Path) -> None:
    rec, exporter = in_memory()
    plan = stockade.explain(cwd=str(tmp_path), backend="landlock", network="proxy")
    with pytest.raises(stockade.UnsupportedPolicy):
        stockade.exec.Sandboxed(plan, ["true"], recorder=rec)
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code == trace.StatusCode.ERROR and "proxy" in (span.status.description or "")


# ---- the CLI, as root and as a user, on both backends ----


@pytest.fixture
def collector() -> Iterator[tuple[str, list[Any]]]:
    """An OTLP/HTTP collector stub on loopback that decodes what it receives."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[Any] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = ExportTraceServiceRequest()
            request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((self.path, request))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("backend", ["bwrap", "landlock"])
def test_cli_span_reaches_an_otlp_collector_with_the_environments_parent(
    who: Who, workspace: Path, backend: str, collector: tuple[str, list[Any]]
) -> None:
    url, received = collector
    cfg = who.mkdtemp("cfg-") / "tel.toml"
    cfg.write_text(f'[telemetry]\nendpoint = "{url}"\nspan_attributes = {{ team = "infra" }}\n')
    who.own(cfg.parent)
    env = {"TRACEPARENT": TRACEPARENT, "OTEL_SERVICE_NAME": "stockade-test"}
    done = backend_who(who, backend).stockade(
        "run", "--config", str(cfg), "--", "sh", "-c", "echo $TRACEPARENT", cwd=workspace, env=env
    )
    assert done.returncode == 0, done.stderr
    inner = done.stdout.strip().split("-")
    assert inner[1] == TRACE_ID, done.stdout
    spans = [
        s
        for path, req in received
        if path == "/v1/traces"
        for rs in req.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    ]
    assert len(spans) == 1, received
    span = spans[0]
    attrs = {a.key: a.value for a in span.attributes}
    assert span.name == "stockade.run sh" and span.trace_id.hex() == TRACE_ID
    assert span.parent_span_id.hex() == "00f067aa0ba902b7" and span.span_id.hex() == inner[2]
    assert attrs["team"].string_value == "infra" and attrs["process.exit.code"].int_value == 0
    assert attrs["stockade.backend"].string_value == backend


@pytest.mark.parametrize("backend", ["bwrap", "landlock"])
def test_audit_lines_and_stderr_hints(who: Who, workspace: Path, backend: str) -> None:
    (workspace / ".git").mkdir()
    (workspace / ".git" / "config").write_text("[core]\n")
    who.own(workspace)
    audit = who.mkdtemp("audit-") / "audit.jsonl"
    who.own(audit.parent)
    me = backend_who(who, backend)
    secret_env = {"MY_SETTING": "visible-value"}
    script = "echo hunter2-arg >/dev/null; echo x >> .git/config; exit 4"
    done = me.stockade("run", "--audit", str(audit), "--", "sh", "-c", script, cwd=workspace, env=secret_env)
    assert done.returncode == 4, done.stderr
    again = me.stockade("run", "--audit", str(audit), "--", "true", cwd=workspace)
    assert again.returncode == 0, again.stderr
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["kind"] == "command" and first["executable"] == "sh" and first["argc"] == 3
    assert first["exit_code"] == 4 and first["backend"] == backend and first["profile"] == "workspace"
    text = audit.read_text()
    assert "hunter2" not in text and "visible-value" not in text and "argv" not in first
    if backend == "landlock":  # the guard saw the refusal and names the rule
        assert first["denied_requests"] == 1 and ".git/config" in first["denied"][0]["what"]
        hint = f"stockade: blocked open {workspace}/.git/config by rule `{workspace}/.git/config = read-only`"
        assert hint in done.stderr and "profile workspace" in done.stderr, done.stderr
    else:  # a read-only mount refuses without anyone asking: nothing to name (documented)
        assert first["denied_requests"] == 0 and "stockade: blocked" not in done.stderr
    assert os.stat(audit).st_mode & 0o077 == 0


def test_audit_argv_only_when_opted_in_and_never_inside_the_workspace(who: Who, workspace: Path) -> None:
    cfg_dir = who.mkdtemp("cfg-")
    audit = cfg_dir / "audit.jsonl"
    (cfg_dir / "a.toml").write_text(f'[audit]\npath = "{audit}"\nrecord_argv = true\n')
    who.own(cfg_dir)
    done = who.stockade("run", "--config", str(cfg_dir / "a.toml"), "--", "echo", "hi", cwd=workspace)
    assert done.returncode == 0, done.stderr
    assert json.loads(audit.read_text())["argv"] == ["echo", "hi"]
    inside = who.stockade("run", "--audit", str(workspace / "trail.jsonl"), "--", "true", cwd=workspace)
    assert inside.returncode == 2 and "could rewrite the trail" in inside.stderr, inside.stderr
    assert not (workspace / "trail.jsonl").exists()
