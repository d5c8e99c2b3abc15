"""Tracing (OpenTelemetry, optional extra `stockade[otel]`) and an audit trail (JSON lines).

Importing this package imports no OpenTelemetry: only a Recorder with telemetry enabled does.
"""

from __future__ import annotations

from .audit import policy_hash, stderr_hint
from .config import AuditConfig, TelemetryConfig, from_tables, load
from .recorder import NOOP_SPAN, Recorder, Span

__all__ = [
    "NOOP_SPAN",
    "AuditConfig",
    "Recorder",
    "Span",
    "TelemetryConfig",
    "from_tables",
    "load",
    "policy_hash",
    "stderr_hint",
]
