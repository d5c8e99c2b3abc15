"""Telemetry: what recording one command costs, with tracing on (in-memory exporter) and off.

    python bench/bench_telemetry.py [--runs 20000] [--rounds 7]

One "command" is what `stockade run` will do per command: start a span from the facts with a
TRACEPARENT in the parent environment, take child_env(), add one event, end it. Measured for
the no-op recorder (nothing configured), tracing with an in-memory exporter (static attributes
and a tracestate upsert on), and the audit file alone, in the same process. Each round times
`--runs` commands; the figures are the median per command over the rounds, then on-minus-off.
Also reported once: importing the SDK and building a Recorder (paid once per process), and the
OTLP exporter's import. Target: under 0.3 ms per command.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from stockade.telemetry import AuditConfig, Recorder, from_tables

FACTS = {
    "profile": "workspace",
    "backend": "bwrap",
    "network": "off",
    "roots": 1,
    "policy_hash": "0123456789abcdef",
    "argv": ["pytest", "-q", "tests/"],
}
PARENT = {"TRACEPARENT": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "TRACESTATE": "rojo=1"}


def one_round(rec: Recorder, runs: int) -> float:
    """Seconds per command, averaged over `runs` commands."""
    start = time.perf_counter()
    for _ in range(runs):
        span = rec.start("command", FACTS, parent_env=PARENT)
        span.child_env()
        span.event(
            "stockade.denied", {"rule": "bad.test", "what": "connect", "host": "bad.test", "port": 443}
        )
        span.end(exit_code=0, duration_s=0.01)
    return (time.perf_counter() - start) / runs


def import_ms(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    print(f"import opentelemetry.sdk.trace (once per process): {import_ms('opentelemetry.sdk.trace'):.1f} ms")
    otlp = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
    print(f"import the OTLP/HTTP exporter (once per process):  {import_ms(otlp):.1f} ms")

    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    tel, _ = from_tables(
        {
            "exporter": "none",
            "span_attributes": {"team": "infra", "tier": 2},
            "tracestate": {"acme": {"s": "1"}},
        },
        environ={},
    )
    start = time.perf_counter()
    exporter = InMemorySpanExporter()
    traced = Recorder.from_config(tel, None, exporter=exporter)
    print(f"build a Recorder with tracing (once per config):   {(time.perf_counter() - start) * 1000:.2f} ms")
    off = Recorder.from_config(None, None)
    with tempfile.TemporaryDirectory() as tmp:
        audited = Recorder.from_config(None, AuditConfig(os.path.join(tmp, "audit.jsonl")))
        cases = {"off (no-op)": off, "tracing, in-memory": traced, "audit file only": audited}
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):  # interleaved, so drift hits every case alike
            for name, rec in cases.items():
                samples[name].append(one_round(rec, args.runs))
                exporter.clear()
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(f"\nper command, median of {args.rounds} rounds of {args.runs}:")
    for name, value in medians.items():
        print(f"  {name:20} {value * 1e6:9.2f} us")
    base = medians["off (no-op)"]
    for name in ("tracing, in-memory", "audit file only"):
        extra = (medians[name] - base) * 1000
        verdict = "OK" if extra < 0.3 else "OVER"
        print(f"overhead {name:20} {extra:.4f} ms per command (target < 0.3 ms: {verdict})")
    facts_ms = facts_cost(args.rounds)
    print(f"plus the facts of a real Plan (policy hash), only when recording: {facts_ms:.4f} ms")


def facts_cost(rounds: int) -> float:
    """`Sandboxed` also hashes the Plan for `stockade.policy_hash`: the workspace Plan of cwd."""
    import stockade
    from stockade.exec.process import _facts

    plan = stockade.explain()
    per = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(200):
            _facts(plan, ["pytest", "-q"], None)
        per.append((time.perf_counter() - start) / 200 * 1000)
    return statistics.median(per)


if __name__ == "__main__":
    main()
