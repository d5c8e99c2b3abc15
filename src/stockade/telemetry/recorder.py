"""Recorder: one span (and one audit line) per sandboxed command or session.

    rec = Recorder.from_config(tel, audit)        # validates the audit path; sets up OTel if on
    span = rec.start(kind="command", facts={...}, parent_env=os.environ)
    env.update(span.child_env())                  # TRACEPARENT/TRACESTATE for the command
    span.event("stockade.denied", {"rule": ..., "what": ..., "host": ..., "port": ...})
    span.end(exit_code=0, duration_s=1.2)         # ends the span, appends the audit line

This module never imports OpenTelemetry at import time: only `from_config` with telemetry
enabled does. With neither telemetry nor an audit file, `start` returns a shared no-op span.
stockade's TracerProvider is private to the Recorder and never installed globally, so an
application's own provider is never replaced; the caller's current span is still the parent.
"""

from __future__ import annotations

import atexit
import functools
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from . import tracestate as ts
from .audit import AuditLog, record
from .config import AuditConfig, TelemetryConfig

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

Kind = Literal["command", "session"]
FACT_KEYS = ("profile", "backend", "network", "roots", "policy_hash", "executable", "argc", "argv")
SPAN_NAMES = {"command": "stockade.run", "session": "stockade.session"}
# facts -> span attributes (OTel semantic conventions where they exist, stockade.* otherwise)
FACT_ATTRIBUTES = {"profile": "stockade.profile", "backend": "stockade.backend", "roots": "stockade.roots"}
FACT_ATTRIBUTES |= {"network": "stockade.network.mode", "policy_hash": "stockade.policy_hash"}
DENIED = "stockade.denied"
CLOSE_TIMEOUT_S = 3.0  # at exit, the longest stockade waits for a collector
MAX_DENIED_LISTED = 64  # denials listed in an audit line; the count is always exact


class NoopSpan:
    """What `start` returns when nothing is recorded: every call does nothing."""

    __slots__ = ()

    def child_env(self) -> dict[str, str]:
        return {}

    def event(self, name: str, attrs: Mapping[str, Any] | None = None) -> None:
        pass

    def end(self, **_: Any) -> None:
        pass

    def __enter__(self) -> NoopSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


NOOP_SPAN = NoopSpan()


def _otel_value(value: Any) -> Any:
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return str(value)


class Span:
    """One command or session being recorded. Thread-safe: sessions report from several threads."""

    def __init__(
        self, rec: Recorder, kind: Kind, facts: Mapping[str, Any], parent_env: Mapping[str, str] | None
    ):
        self._rec, self._kind, self._lock, self._ended = rec, kind, threading.Lock(), False
        self._denied: list[dict[str, Any]] = []  # the first MAX_DENIED_LISTED, for the audit line
        self._denied_count = 0
        self._events: dict[str, int] = {}
        unknown = set(facts) - set(FACT_KEYS)
        if unknown:
            raise ValueError(f"unknown facts {sorted(unknown)}; valid: {', '.join(FACT_KEYS)}")
        argv = [str(a) for a in facts.get("argv") or ()]
        self._facts = {k: facts[k] for k in FACT_KEYS[:5] if facts.get(k) is not None}
        self._facts["executable"] = facts.get("executable") or (os.path.basename(argv[0]) if argv else "")
        self._facts["argc"] = facts.get("argc", len(argv))
        self._argv, self.started, self._t0 = argv, time.time(), time.monotonic()
        self._otel = rec._otel.start(kind, self._facts, argv, parent_env) if rec._otel is not None else None
        self._parent = (
            ts.parse_traceparent(parent_env.get("TRACEPARENT")) if parent_env and self._otel is None else None
        )

    def child_env(self) -> dict[str, str]:
        """TRACEPARENT (this span as the parent) and TRACESTATE, for tools inside to continue."""
        if self._otel is None:
            return {}
        ctx = self._otel.get_span_context()
        env = {"TRACEPARENT": ts.format_traceparent(ctx.trace_id, ctx.span_id, ctx.trace_flags)}
        state = ts.format_header(list(ctx.trace_state.items()))
        if state:
            env["TRACESTATE"] = state
        return env

    def event(self, name: str, attrs: Mapping[str, Any] | None = None) -> None:
        """A span event, counted in the audit line; `stockade.denied` ones are listed there too."""
        clean = {k: _otel_value(v) for k, v in (attrs or {}).items() if v is not None}
        with self._lock:
            if self._ended:
                return
            if name == DENIED:
                self._denied_count += 1
                if len(self._denied) < MAX_DENIED_LISTED:
                    self._denied.append(clean)
            else:
                self._events[name] = self._events.get(name, 0) + 1
        if self._otel is not None:
            self._otel.add_event(name, clean)

    def end(
        self,
        *,
        exit_code: int | None = None,
        signal: int | None = None,
        timed_out: bool = False,
        duration_s: float | None = None,
        error: str | None = None,
    ) -> None:
        """End the span and append the audit line; later calls do nothing."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
        seconds = duration_s if duration_s is not None else time.monotonic() - self._t0
        outcome: dict[str, Any] = {"exit_code": exit_code, "signal": signal, "timed_out": timed_out}
        outcome["duration_ms"] = round(seconds * 1000, 3)
        outcome["denied_requests"] = self._denied_count
        if self._otel is not None:
            self._rec._otel.finish(self._otel, outcome, error)  # type: ignore[union-attr]
        audit = self._rec._audit
        if audit is not None:
            ids: dict[str, str] = {}
            if self._otel is not None:
                ctx = self._otel.get_span_context()
                ids = {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}
            elif self._parent is not None:  # no OTel: still name the caller's trace, for correlation
                ids = {"trace_id": f"{self._parent[0]:032x}", "parent_span_id": f"{self._parent[1]:016x}"}
            argv = self._argv if audit.config.record_argv else None
            line = record(self._kind, self.started, self._facts, outcome, argv, self._denied, self._events)
            audit.write({**line, **({"error": error} if error is not None else {}), **ids})

    def __enter__(self) -> Span:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        """An exception before `end` (a refused Plan, a failed launch) is recorded as the outcome."""
        if exc is not None:
            self.end(error=f"{exc_type.__name__ if exc_type else 'error'}: {exc}")
        else:
            self.end()


class Recorder:
    """Makes spans and audit lines for the commands and sessions of one stockade entry point."""

    def __init__(self, telemetry: _Otel | None = None, audit: AuditLog | None = None) -> None:
        self._otel = telemetry
        self._audit = audit

    @classmethod
    def from_config(
        cls,
        tel: TelemetryConfig | None,
        audit: AuditConfig | None,
        *,
        exporter: SpanExporter | None = None,
    ) -> Recorder:
        """Check the audit file and set up OpenTelemetry when enabled; raise before anything runs.

        `exporter` replaces the configured one (tests, benchmarks, embedding applications).
        """
        log = AuditLog(audit) if audit is not None else None
        if log is not None:
            log.check()
        otel = _Otel(tel, exporter) if tel is not None and tel.enabled else None
        return cls(otel, log)

    @classmethod
    def shared(cls, tel: TelemetryConfig | None, audit: AuditConfig | None) -> Recorder:
        """One Recorder per configuration in this process: the Python API and sessions ask per
        command, and a provider with its export thread per command would pile up."""
        key = (tel if tel is not None and tel.enabled else None, audit)
        with _SHARED_LOCK:
            rec = _SHARED.get(key)
            if rec is None:
                rec = _SHARED[key] = cls.from_config(*key)
        return rec

    @property
    def enabled(self) -> bool:
        return self._otel is not None or self._audit is not None

    def start(
        self, kind: Kind, facts: Mapping[str, Any], parent_env: Mapping[str, str] | None = None
    ) -> Span | NoopSpan:
        """Begin recording. The parent is the caller's current span, else TRACEPARENT in parent_env."""
        if self._otel is None and self._audit is None:
            return NOOP_SPAN
        if kind not in SPAN_NAMES:
            raise ValueError(f"kind must be 'command' or 'session', not {kind!r}")
        return Span(self, kind, facts, parent_env)

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Export what is buffered and stop, bounded (also run at exit); the CLI calls it last."""
        if self._otel is not None:
            self._otel.close(timeout_s)


_SHARED: dict[tuple[TelemetryConfig | None, AuditConfig | None], Recorder] = {}
_SHARED_LOCK = threading.Lock()


class _Otel:
    """The OpenTelemetry side: a private TracerProvider, its processors and the parent lookup."""

    def __init__(self, tel: TelemetryConfig, exporter: SpanExporter | None) -> None:
        try:
            from opentelemetry import context, trace
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import (
                BatchSpanProcessor,
                ConsoleSpanExporter,
                SimpleSpanProcessor,
            )

            if exporter is None and tel.exporter == "otlp":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            from ..errors import StockadeError

            raise StockadeError(
                f"telemetry is enabled but OpenTelemetry is not installed ({exc.name}); "
                "pip install 'stockade[otel]', or set enabled = false in [telemetry]"
            ) from None
        self.tel, self._trace, self._context = tel, trace, context
        static, sampler = _otel_classes()
        sdk = {"telemetry.sdk.language": "python", "telemetry.sdk.name": "opentelemetry"}
        resource = Resource({"service.name": tel.service_name, **sdk, **dict(tel.resource_attributes)})
        # A private provider: never set as the global one, so an application's stays in place.
        # shutdown_on_exit=False: the SDK's own exit hook could wait 10 s for a collector that
        # is down; ours (close) is bounded.
        self.provider = TracerProvider(
            sampler=sampler(tel.tracestate), resource=resource, shutdown_on_exit=False
        )
        self._closed = False
        atexit.register(self.close)
        if tel.span_attributes:
            self.provider.add_span_processor(static(dict(tel.span_attributes)))
        if exporter is not None:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        elif tel.exporter == "otlp":
            # Batched: exporting happens off the command's path; close() (or exit) flushes it.
            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=tel.endpoint)))
        elif tel.exporter == "console":
            import sys

            # stderr: the command's stdout is the user's data.
            self.provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
        self.tracer = self.provider.get_tracer("stockade")

    def parent(self, parent_env: Mapping[str, str] | None) -> Any:
        """The caller's current span if there is one, else TRACEPARENT/TRACESTATE, else a root."""
        trace = self._trace
        if trace.get_current_span().get_span_context().is_valid:
            return self._context.get_current()
        empty = self._context.Context()
        parsed = ts.parse_traceparent(parent_env.get("TRACEPARENT")) if parent_env else None
        if parsed is None:
            return empty
        trace_id, span_id, flags = parsed
        state = trace.TraceState(ts.parse(parent_env.get("TRACESTATE")))  # type: ignore[union-attr]
        remote = trace.SpanContext(trace_id, span_id, True, trace.TraceFlags(flags), state)
        return trace.set_span_in_context(trace.NonRecordingSpan(remote), empty)

    def start(
        self, kind: Kind, facts: Mapping[str, Any], argv: Sequence[str], parent_env: Mapping[str, str] | None
    ) -> Any:
        attrs = {"process.executable.name": facts["executable"], "process.args_count": facts["argc"]}
        if self.tel.record_argv and argv:
            attrs["process.command_args"] = list(argv)
        for fact, attr in FACT_ATTRIBUTES.items():
            if fact in facts:
                attrs[attr] = _otel_value(facts[fact])
        name = f"{SPAN_NAMES[kind]} {facts['executable']}".rstrip()
        return self.tracer.start_span(name, context=self.parent(parent_env), attributes=attrs)

    def finish(self, span: Any, outcome: Mapping[str, Any], error: str | None) -> None:
        names = {
            "exit_code": "process.exit.code",
            "signal": "stockade.signal",
            "timed_out": "stockade.timed_out",
        }
        names |= {"duration_ms": "stockade.duration_ms", "denied_requests": "stockade.denied_requests"}
        span.set_attributes({attr: outcome[k] for k, attr in names.items() if outcome[k] is not None})
        if error is not None:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error))
        span.end()

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Flush and shut down, waiting at most `timeout_s`: what is not exported by then is lost."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        stopper = threading.Thread(target=self.provider.shutdown, name="stockade-otel-close", daemon=True)
        stopper.start()
        stopper.join(timeout_s)


@functools.cache
def _otel_classes() -> tuple[type, Any]:
    """The SDK subclasses, defined on first use so that importing this module imports no OTel."""
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, SamplingResult
    from opentelemetry.trace import TraceState

    class StaticAttributes(SpanProcessor):
        """`span_attributes` on every span this provider starts, so every exported span has them."""

        def __init__(self, attrs: dict[str, Any]) -> None:
            self._attrs = attrs

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            span.set_attributes(self._attrs)

    class UpsertTracestate(Sampler):
        """ParentBased(ALWAYS_ON), with the configured tracestate members upserted into the span's."""

        def __init__(self, members: tuple[ts.Member, ...]) -> None:
            self._inner = ParentBased(ALWAYS_ON)
            self._members = members

        def should_sample(self, parent_context: Any, trace_id: int, name: str, *args: Any, **kw: Any) -> Any:
            result = self._inner.should_sample(parent_context, trace_id, name, *args, **kw)
            if not self._members:
                return result
            theirs = list(result.trace_state.items()) if result.trace_state else []
            state = TraceState(ts.upsert(theirs, self._members))
            return SamplingResult(result.decision, result.attributes, state)

        def get_description(self) -> str:
            return f"stockade.UpsertTracestate({self._inner.get_description()})"

    return StaticAttributes, UpsertTracestate


__all__ = ["NOOP_SPAN", "NoopSpan", "Recorder", "Span"]
