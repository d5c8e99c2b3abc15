"""Sessions: output throughput and write -> echo latency, against a plain pipe / PTY.

    python bench/bench_sessions.py [--megabytes 200] [--runs 200] [--backend bwrap]

Throughput: `cat` of an N MB file read through a session (pipes, reading as fast as it can)
against `cat` into a plain subprocess pipe; what the session's bounded buffer dropped because
the reader fell behind is reported too. Latency: a byte written to `cat` on a PTY until its echo
is read back, through a session and through a bare PTY; median and p99.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time

from stockade.exec import SessionManager
from stockade.exec.session import BUFFER_CAP


def direct_cat(path: str) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(["cat", path], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    while proc.stdout.read1(1 << 20):
        pass
    proc.wait()
    return time.perf_counter() - start


def session_cat(manager: SessionManager, path: str) -> tuple[float, int]:
    start = time.perf_counter()
    session = manager.start(["cat", path])
    got = 0
    while True:  # a reader that keeps up: take what is there, nap 1 ms when nothing was
        out = session.read(0, limit=BUFFER_CAP)
        got += len(out.stdout)
        if not out.running:
            break
        if not out.stdout:
            time.sleep(0.001)
    elapsed = time.perf_counter() - start
    manager.close(session.id)
    return elapsed, got


def percentile(values: list[float], q: float) -> float:
    return sorted(values)[min(int(len(values) * q), len(values) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--backend", default="bwrap")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-sessions-", dir="/var/tmp")
    data = os.path.join(work, "data")
    with open(data, "wb") as fh:
        line = os.urandom(40).hex().encode()[:63] + b"\n"  # text, as a command prints it
        fh.write(line * (args.megabytes << 14))
    manager = SessionManager(cwd=work, backend=args.backend, max_sessions=64)
    direct = statistics.median(direct_cat(data) for _ in range(3))
    runs = [session_cat(manager, data) for _ in range(3)]
    through = statistics.median(t for t, _ in runs)
    delivered = min(g for _, g in runs) / (args.megabytes << 20)
    print(f"cat of {args.megabytes} MB (median of 3):")
    rates = (args.megabytes / direct, args.megabytes / through)
    print(f"  plain pipe {rates[0]:7.0f} MB/s   through a session {rates[1]:7.0f} MB/s")
    print(f"  delivered to the reader: {delivered:.1%} (the rest dropped, marked, when it fell behind)")

    session = manager.start(["cat"], tty=True)
    session.read(300)
    latencies: list[float] = []
    for _ in range(args.runs):
        start = time.perf_counter()
        session.write("x")
        while "x" not in session.read(0).stdout:
            time.sleep(0.0001)
        latencies.append((time.perf_counter() - start) * 1000)
    manager.close_all()
    master, slave = os.openpty()
    proc = subprocess.Popen(["cat"], stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    bare: list[float] = []
    for _ in range(args.runs):
        start = time.perf_counter()
        os.write(master, b"x")
        while b"x" not in os.read(master, 4096):
            pass
        bare.append((time.perf_counter() - start) * 1000)
    proc.kill()
    proc.wait()
    os.close(master)
    print(f"write -> echo on a PTY ({args.runs} runs):")
    print(
        f"  session median {statistics.median(latencies):.3f} ms p99 {percentile(latencies, 0.99):.3f} ms;"
        f"  bare PTY median {statistics.median(bare):.3f} ms p99 {percentile(bare, 0.99):.3f} ms"
    )
    subprocess.run(["rm", "-rf", work], check=False)


if __name__ == "__main__":
    main()
