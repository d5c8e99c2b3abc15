"""Tracing and the audit trail: spans (in-memory and over OTLP), config validation, audit lines."""

from __future__ import annotations

import http.server
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stockade.errors import ConfigError, StockadeError
from stockade.policy.load import parse_layer
from stockade.telemetry import (
    NOOP_SPAN,
    AuditConfig,
    Recorder,
    TelemetryConfig,
    from_tables,
    load,
    policy_hash,
    stderr_hint,
)

PARENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"
FACTS: dict[str, Any] = {
    "profile": "workspace",
    "backend": "bwrap",
    "network": "off",
    "roots": 2,
    "policy_hash": "0123456789abcdef",
    "argv": ["/usr/bin/python3", "-c", "print('hunter2')"],
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's OTEL_* settings and proxies must not leak into these tests."""
    for name in list(os.environ):
        if name.startswith("OTEL_") or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def recorder(exporter: InMemorySpanExporter, audit: AuditConfig | None = None, **tel: Any) -> Recorder:
    config, _ = from_tables({"exporter": "none", **tel}, environ={})
    return Recorder.from_config(config, audit, exporter=exporter)


def only_span(exporter: InMemorySpanExporter) -> Any:
    spans = exporter.get_finished_spans()
    assert len(spans) == 1
    return spans[0]


# --- spans ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "name"), [("command", "stockade.run python3"), ("session", "stockade.session python3")]
)
def test_span_carries_static_attributes_facts_exit_code_and_duration(
    exporter: InMemorySpanExporter, kind: str, name: str
) -> None:
    rec = recorder(exporter, span_attributes={"team": "infra", "tier": 2, "canary": True, "ratio": 0.5})
    span = rec.start(kind, FACTS)  # type: ignore[arg-type]
    span.event("stockade.write_stdin", {"bytes": 12})
    span.end(exit_code=3, duration_s=1.5)
    got = only_span(exporter)
    assert got.name == name
    attrs = dict(got.attributes)
    assert (
        attrs["team"] == "infra" and attrs["tier"] == 2 and attrs["canary"] is True and attrs["ratio"] == 0.5
    )
    assert attrs["process.executable.name"] == "python3"
    assert attrs["process.args_count"] == 3
    assert attrs["process.exit.code"] == 3
    assert attrs["stockade.duration_ms"] == 1500.0
    assert attrs["stockade.profile"] == "workspace" and attrs["stockade.backend"] == "bwrap"
    assert attrs["stockade.network.mode"] == "off" and attrs["stockade.roots"] == 2
    assert attrs["stockade.policy_hash"] == "0123456789abcdef"
    assert attrs["stockade.timed_out"] is False and attrs["stockade.denied_requests"] == 0
    assert "process.command_args" not in attrs  # argv only with record_argv
    assert "hunter2" not in json.dumps(attrs)
    assert [e.name for e in got.events] == ["stockade.write_stdin"]
    assert got.end_time > got.start_time
    assert got.resource.attributes["service.name"] == "stockade"


def test_argv_recorded_only_when_opted_in(exporter: InMemorySpanExporter) -> None:
    rec = recorder(exporter, record_argv=True)
    rec.start("command", FACTS).end(exit_code=0)
    assert list(only_span(exporter).attributes["process.command_args"]) == FACTS["argv"]


def test_parent_from_traceparent_env(exporter: InMemorySpanExporter) -> None:
    rec = recorder(exporter)
    span = rec.start("command", FACTS, parent_env={"TRACEPARENT": TRACEPARENT, "HOME": "/root"})
    env = span.child_env()
    span.end(exit_code=0)
    got = only_span(exporter)
    assert f"{got.context.trace_id:032x}" == PARENT_TRACE
    assert got.parent is not None and f"{got.parent.span_id:016x}" == PARENT_SPAN and got.parent.is_remote
    version, trace_id, span_id, flags = env["TRACEPARENT"].split("-")
    assert (version, trace_id, flags) == ("00", PARENT_TRACE, "01")
    assert span_id == f"{got.context.span_id:016x}" != PARENT_SPAN  # the command's parent is our span
    assert "TRACESTATE" not in env


def test_parent_from_the_callers_current_span(exporter: InMemorySpanExporter) -> None:
    caller = TracerProvider().get_tracer("app")  # the application's own provider, never global here
    rec = recorder(exporter)
    with caller.start_as_current_span("agent step") as outer:
        span = rec.start("command", FACTS, parent_env={"TRACEPARENT": TRACEPARENT})  # current span wins
        env = span.child_env()
        span.end(exit_code=0)
    got = only_span(exporter)
    assert got.context.trace_id == outer.get_span_context().trace_id
    assert got.parent.span_id == outer.get_span_context().span_id
    assert env["TRACEPARENT"].split("-")[1] == f"{outer.get_span_context().trace_id:032x}"


def test_root_span_without_a_parent_and_bad_headers_dropped(exporter: InMemorySpanExporter) -> None:
    rec = recorder(exporter)
    bad = {"TRACEPARENT": TRACEPARENT.upper(), "TRACESTATE": "x=1\r\nInjected: 1"}
    span = rec.start("command", FACTS, parent_env=bad)
    env = span.child_env()
    span.end(exit_code=0)
    got = only_span(exporter)
    assert got.parent is None
    assert env["TRACEPARENT"].split("-")[1] == f"{got.context.trace_id:032x}"
    assert "TRACESTATE" not in env


def test_tracestate_upserted_into_the_callers_member(exporter: InMemorySpanExporter) -> None:
    rec = recorder(exporter, tracestate={"acme": {"s": "1", "region": "eu"}, "b@corp": {"t": "x"}})
    parent = {"TRACEPARENT": TRACEPARENT, "TRACESTATE": "rojo=00f067aa0ba902b7,acme=s:0;keep:yes;opaque"}
    span = rec.start("command", FACTS, parent_env=parent)
    env = span.child_env()
    span.end(exit_code=0)
    expected = "acme=s:1;keep:yes;opaque;region:eu,b@corp=t:x,rojo=00f067aa0ba902b7"
    assert env["TRACESTATE"] == expected
    assert dict(only_span(exporter).context.trace_state) == dict(
        item.split("=", 1) for item in expected.split(",")
    )


def test_tracestate_set_on_a_root_span_too(exporter: InMemorySpanExporter) -> None:
    rec = recorder(exporter, tracestate={"acme": {"s": "1"}})
    assert rec.start("command", FACTS).child_env()["TRACESTATE"] == "acme=s:1"


def test_denied_events_signal_and_timeout(exporter: InMemorySpanExporter) -> None:
    rec = recorder(exporter)
    span = rec.start("command", FACTS)
    span.event("stockade.denied", {"rule": "bad.test", "what": "connect", "host": "bad.test", "port": 443})
    span.event("stockade.denied", {"rule": "~/.ssh = deny", "what": "open", "host": None})
    span.end(exit_code=137, signal=9, timed_out=True)
    span.end(exit_code=0)  # a second end changes nothing
    got = only_span(exporter)
    assert got.attributes["stockade.denied_requests"] == 2
    assert got.attributes["stockade.signal"] == 9 and got.attributes["stockade.timed_out"] is True
    assert got.attributes["process.exit.code"] == 137
    assert dict(got.events[0].attributes) == {
        "rule": "bad.test",
        "what": "connect",
        "host": "bad.test",
        "port": 443,
    }


def test_exception_in_context_manager_is_recorded(exporter: InMemorySpanExporter) -> None:
    rec = recorder(exporter)
    with pytest.raises(StockadeError), rec.start("command", FACTS):
        raise StockadeError("backend refused the Plan")
    got = only_span(exporter)
    assert got.status.status_code == trace.StatusCode.ERROR
    assert "backend refused the Plan" in got.status.description


def test_unknown_fact_is_refused(exporter: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError, match="env"):
        recorder(exporter).start("command", {**FACTS, "env": {"A": "1"}})


def test_noop_recorder_imports_no_opentelemetry(tmp_path: Path) -> None:
    code = """
import sys
from stockade.telemetry import Recorder, AuditConfig, from_tables
assert from_tables(None, None) == (None, None)
rec = Recorder.from_config(None, None)
span = rec.start("command", {"argv": ["true"]})
span.child_env(); span.event("x", {}); span.end(exit_code=0)
audit = Recorder.from_config(None, AuditConfig(sys.argv[1]))
audit.start("command", {"argv": ["true"]}).end(exit_code=0)
assert not rec.enabled and span is rec.start("session", {})
bad = [m for m in sys.modules if m.startswith("opentelemetry")]
assert not bad, bad
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "a.jsonl")], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_noop_span_is_shared() -> None:
    rec = Recorder.from_config(None, None)
    assert rec.start("command", FACTS) is NOOP_SPAN and NOOP_SPAN.child_env() == {}


def test_shared_recorder_is_reused(tmp_path: Path) -> None:
    audit = AuditConfig(str(tmp_path / "a.jsonl"))
    assert Recorder.shared(None, audit) is Recorder.shared(None, AuditConfig(str(tmp_path / "a.jsonl")))
    assert Recorder.shared(None, audit) is not Recorder.shared(None, None)


def test_missing_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    tel, _ = from_tables({"exporter": "otlp"}, environ={})
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(StockadeError, match=r"pip install 'stockade\[otel\]'"):
        Recorder.from_config(tel, None)


def test_disabled_config_means_no_tracing() -> None:
    assert from_tables({"enabled": False}) == (None, None)
    assert from_tables({"exporter": "none"}, environ={"OTEL_SDK_DISABLED": "true"}) == (None, None)
    assert Recorder.from_config(TelemetryConfig(enabled=False), None).enabled is False


# --- config validation ------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    (tmp_path / "root").mkdir()
    return tmp_path / "home"


@pytest.mark.parametrize(
    ("toml", "key", "why"),
    [
        ('[telemetry.tracestate.Vendor]\ns = "1"', "telemetry.tracestate.Vendor", "must start with a-z"),
        ('[telemetry.tracestate."a@9b"]\ns = "1"', "telemetry.tracestate.a@9b", "multi-tenant"),
        ('[telemetry.tracestate.acme]\ns = "a,b"', "telemetry.tracestate.acme.s", "','"),
        ('[telemetry.tracestate.acme]\ns = "a=b"', "telemetry.tracestate.acme.s", "'='"),
        (
            '[telemetry.tracestate.acme]\ns = "a\\nb"',
            "telemetry.tracestate.acme.s",
            "control character (0x0a)",
        ),
        (
            '[telemetry.tracestate.acme]\ns = "a\\u0000b"',
            "telemetry.tracestate.acme.s",
            "control character (0x00)",
        ),
        ('[telemetry.tracestate.acme]\ns = "a b"', "telemetry.tracestate.acme.s", "' '"),
        ('[telemetry.tracestate.acme]\n"x y" = "1"', "telemetry.tracestate.acme.x y", "field name"),
        (f'[telemetry.tracestate.acme]\ns = "{"v" * 255}"', "telemetry.tracestate.acme.s", "257 characters"),
        ("[telemetry.tracestate]\nacme = {}", "telemetry.tracestate.acme", "table of fields"),
        (
            "[telemetry.tracestate]\n" + "\n".join(f'k{i} = {{ s = "1" }}' for i in range(33)),
            "telemetry.tracestate",
            "at most 32",
        ),
        ("[telemetry]\nexporer = 'otlp'", "telemetry.exporer", "did you mean 'exporter'"),
        ("[telemetry]\nexporter = 'jaeger'", "telemetry.exporter", "valid: otlp, console, none"),
        ("[telemetry]\nendpoint = 'ftp://x'", "telemetry.endpoint", "http:// or https://"),
        ("[telemetry]\nendpoint = 'http://u:p@x'", "telemetry.endpoint", "credentials"),
        ("[telemetry]\nexporter = 'console'\nendpoint = 'http://x'", "telemetry.endpoint", "applies only"),
        ("[telemetry]\nrecord_argv = 'yes'", "telemetry.record_argv", "true or false"),
        (
            "[telemetry.span_attributes]\n'stockade.profile' = 'x'",
            "telemetry.span_attributes.stockade.profile",
            "itself",
        ),
        (
            "[telemetry.span_attributes]\nbig = 9223372036854775808",
            "telemetry.span_attributes.big",
            "64 bits",
        ),
        ("[telemetry.span_attributes]\nlist = [1]", "telemetry.span_attributes.list", "string, number"),
        ("[audit]\nrecord_argv = true", "audit.path", "needs path"),
        ("[audit]\npath = 'rel/audit.jsonl'", "audit.path", "absolute"),
        ("[audit]\npth = '/tmp/x'", "audit.pth", "did you mean 'path'"),
    ],
)
def test_bad_config_fails_at_load_naming_file_and_key(home: Path, toml: str, key: str, why: str) -> None:
    config = write(home / "extra.toml", toml)
    before = trace.get_tracer_provider()
    with pytest.raises(ConfigError) as info:
        load(roots=[str(home.parent / "root")], home=str(home), config=str(config), environ={})
    assert info.value.file == str(config) and info.value.key == key
    assert why in str(info.value)
    assert trace.get_tracer_provider() is before  # nothing was installed


def test_merged_member_too_long_names_the_member(home: Path) -> None:
    write(home / ".config" / "stockade" / "config.toml", f'[telemetry.tracestate.acme]\na = "{"x" * 200}"')
    extra = write(home / "extra.toml", f'[telemetry.tracestate.acme]\nb = "{"y" * 60}"')
    with pytest.raises(ConfigError) as info:
        load(roots=[str(home.parent / "root")], home=str(home), config=str(extra), environ={})
    assert info.value.key == "telemetry.tracestate.acme" and info.value.file == str(extra)


def test_layers_merge_and_env_fills_in(home: Path) -> None:
    write(
        home / ".config" / "stockade" / "config.toml",
        '[telemetry]\nspan_attributes = { team = "infra", env = "dev" }\n'
        '[telemetry.tracestate.acme]\ns = "1"\n[audit]\npath = "~/audit.jsonl"\n',
    )
    extra = write(
        home / "extra.toml",
        '[telemetry]\nspan_attributes = { env = "prod" }\nrecord_argv = true\n'
        '[telemetry.tracestate.acme]\nr = "2"\n[audit]\nrecord_argv = true\n',
    )
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.example:4318/",
        "OTEL_SERVICE_NAME": "agents",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team.name=a%20b,service.name=ignored",
        "HOME": str(home),
    }
    tel, audit = load(roots=[str(home.parent / "root")], home=str(home), config=str(extra), environ=env)
    assert tel is not None and audit is not None
    assert dict(tel.span_attributes) == {"team": "infra", "env": "prod"}
    assert [(m.key, m.value) for m in tel.tracestate] == [("acme", "s:1;r:2")]
    assert tel.record_argv and tel.exporter == "otlp"
    assert tel.endpoint == "https://collector.example:4318/v1/traces"
    assert tel.service_name == "agents"
    assert dict(tel.resource_attributes) == {"deployment.environment": "prod", "team.name": "a b"}
    assert audit.record_argv and os.path.isabs(audit.path) and audit.path.endswith("audit.jsonl")


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"OTEL_SDK_DISABLED": "1"}, "OTEL_SDK_DISABLED"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x/\n"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "novalue"}, "OTEL_RESOURCE_ATTRIBUTES"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "k=%0a"}, "OTEL_RESOURCE_ATTRIBUTES"),
    ],
)
def test_bad_otel_variables_are_config_errors(env: dict[str, str], key: str) -> None:
    before = trace.get_tracer_provider()
    with pytest.raises(ConfigError) as info:
        from_tables({}, environ=env)
    assert info.value.key == key
    assert trace.get_tracer_provider() is before


def test_otel_variables_ignored_when_tracing_is_not_configured() -> None:
    assert from_tables(None, environ={"OTEL_SDK_DISABLED": "1", "OTEL_TRACES_EXPORTER": "zipkin"}) == (
        None,
        None,
    )


def test_env_exporter_and_traces_endpoint() -> None:
    tel, _ = from_tables({}, environ={"OTEL_TRACES_EXPORTER": "console"})
    assert tel is not None and tel.exporter == "console"
    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/custom",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://d",
    }
    tel, _ = from_tables({}, environ=env)
    assert tel is not None and tel.endpoint == "http://c:4318/custom"
    tel, _ = from_tables({"endpoint": "http://file:4318"}, environ=env)  # the file wins
    assert tel is not None and tel.endpoint == "http://file:4318/v1/traces"


def test_project_config_may_only_label(home: Path) -> None:
    root = home.parent / "root"
    project = write(root / ".stockade" / "config.toml", '[telemetry]\nendpoint = "http://evil.example"\n')
    with pytest.raises(ConfigError) as info:
        load(roots=[str(root)], home=str(home), environ={})
    assert info.value.file == str(project) and info.value.key == "telemetry.endpoint"
    write(project, '[audit]\npath = "/tmp/x.jsonl"\n')
    with pytest.raises(ConfigError, match="audit file"):
        load(roots=[str(root)], home=str(home), environ={})
    write(project, '[telemetry.span_attributes]\nrepo = "demo"\n')
    assert load(roots=[str(root)], home=str(home), environ={}) == (None, None)  # cannot turn tracing on
    write(home / ".config" / "stockade" / "config.toml", '[telemetry]\nexporter = "none"\n')
    tel, _ = load(roots=[str(root)], home=str(home), environ={})
    assert tel is not None and dict(tel.span_attributes) == {"repo": "demo"}


def test_parse_layer_accepts_the_new_tables_and_still_suggests() -> None:
    layer = parse_layer("f.toml", {"telemetry": {"exporter": "none"}, "audit": {"path": "/tmp/a"}})
    assert layer.telemetry is not None and layer.telemetry.audit == {"path": "/tmp/a"}
    with pytest.raises(ConfigError, match="did you mean 'telemetry'"):
        parse_layer("f.toml", {"telemetri": {}})


# --- OTLP over HTTP to a collector stub on loopback ----------------------------------------------


@pytest.fixture
def collector() -> Iterator[tuple[str, list[Any]]]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    received: list[Any] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf":
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                received.append(request)
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def test_otlp_loopback_collector_receives_the_span(collector: tuple[str, list[Any]]) -> None:
    url, received = collector
    tel, _ = from_tables(
        {"endpoint": url, "span_attributes": {"team": "infra"}, "tracestate": {"acme": {"s": "1"}}},
        environ={"OTEL_SERVICE_NAME": "stockade-test"},
    )
    assert tel is not None and tel.exporter == "otlp"
    rec = Recorder.from_config(tel, None)
    span = rec.start("command", FACTS, parent_env={"TRACEPARENT": TRACEPARENT})
    span.end(exit_code=0, duration_s=0.25)
    rec.close(timeout_s=20)
    spans = [
        (resource_spans.resource, s)
        for request in received
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for s in scope_spans.spans
    ]
    assert len(spans) == 1
    resource, got = spans[0]
    assert got.name == "stockade.run python3"
    assert got.trace_id.hex() == PARENT_TRACE and got.parent_span_id.hex() == PARENT_SPAN
    assert got.trace_state == "acme=s:1"
    attrs = {a.key: a.value for a in got.attributes}
    assert attrs["team"].string_value == "infra"
    assert attrs["process.exit.code"].int_value == 0
    assert attrs["stockade.duration_ms"].double_value == 250.0
    service = {a.key: a.value.string_value for a in resource.attributes}["service.name"]
    assert service == "stockade-test"


# --- audit trail --------------------------------------------------------------------------------


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_audit_lines_are_json_without_env_or_argv(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    rec = Recorder.from_config(None, AuditConfig(str(path)))
    parent = {"TRACEPARENT": TRACEPARENT, "GITHUB_TOKEN": "ghp_secretsecret", "HOME": "/home/me"}
    for code in (0, 1):
        span = rec.start("command", FACTS, parent_env=parent)
        assert span.child_env() == {}  # no OTel: nothing to propagate
        span.event("stockade.denied", {"rule": "~/.ssh = deny", "what": "open ~/.ssh/id_ed25519"})
        span.end(exit_code=code, duration_s=0.5)
    text = path.read_text()
    assert text.count("\n") == 2
    assert "ghp_secret" not in text and "/home/me" not in text and "hunter2" not in text
    first, second = lines(path)
    assert first["kind"] == "command" and first["exit_code"] == 0 and second["exit_code"] == 1
    assert first["executable"] == "python3" and first["argc"] == 3 and "argv" not in first
    assert first["profile"] == "workspace" and first["roots"] == 2 and first["network"] == "off"
    assert first["duration_ms"] == 500.0 and first["timed_out"] is False
    assert first["denied_requests"] == 1 and first["denied"][0]["rule"] == "~/.ssh = deny"
    assert first["trace_id"] == PARENT_TRACE and first["parent_span_id"] == PARENT_SPAN
    assert first["time"].endswith("Z")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_audit_argv_when_opted_in_and_matches_the_span(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    path = tmp_path / "audit.jsonl"
    rec = recorder(exporter, AuditConfig(str(path), record_argv=True))
    span = rec.start("session", {**FACTS, "argv": ["sh", "-c", "echo 'a\nb' \"q\""]})
    span.event("stockade.write_stdin", {"bytes": 3})
    span.event("stockade.write_stdin", {"bytes": 4})
    span.end(exit_code=0)
    (line,) = lines(path)
    assert line["argv"] == ["sh", "-c", "echo 'a\nb' \"q\""]
    assert line["kind"] == "session" and line["events"] == {"stockade.write_stdin": 2}
    got = only_span(exporter)
    assert (
        line["trace_id"] == f"{got.context.trace_id:032x}"
        and line["span_id"] == f"{got.context.span_id:016x}"
    )
    assert "process.command_args" not in got.attributes  # the two opt-ins are separate


def test_audit_appends_whole_lines_from_many_threads(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    rec = Recorder.from_config(None, AuditConfig(str(path), record_argv=True))
    big = ["x" * 5000]

    def work() -> None:
        for _ in range(50):
            rec.start("command", {"argv": big}).end(exit_code=0)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(lines(path)) == 400


def test_audit_error_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    rec = Recorder.from_config(None, AuditConfig(str(path)))
    with pytest.raises(OSError), rec.start("command", FACTS):
        raise OSError("exec failed")
    assert lines(path)[0]["error"] == "OSError: exec failed"


def test_bad_audit_path_fails_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(StockadeError, match="audit file"):
        Recorder.from_config(None, AuditConfig(str(tmp_path / "missing" / "audit.jsonl")))


def test_stderr_hint() -> None:
    assert (
        stderr_hint("open /h/.ssh/id_rsa", "/h/.ssh = deny", "built-in", "workspace")
        == "stockade: blocked open /h/.ssh/id_rsa by rule `/h/.ssh = deny` (built-in; profile workspace)"
    )
    hint = stderr_hint("connect x:1", "evil\x1b]0;pwned\x07.test", "proxy", "workspace")
    assert "\x1b" not in hint and "\x07" not in hint and "\\x1b" in hint


def test_policy_hash_ignores_environment() -> None:
    plan = {"profile": "workspace", "rules": [["/repo", "write"]], "env": {"A": "1"}, "notes": []}
    same = {**plan, "env": {"A": "2", "TOKEN": "x"}}
    assert policy_hash(plan) == policy_hash(same) and len(policy_hash(plan)) == 16
    assert policy_hash(plan) != policy_hash({**plan, "rules": [["/repo", "read"]]})
