"""Per-command overhead of the sandbox, measured in one run against its baselines.

    python bench/bench_run.py [--runs N] [--cwd DIR]

Prints the median (and p90) wall time of:
  true         the unsandboxed command, spawned from Python
  raw bwrap    bwrap with exactly the namespaces, mounts and seccomp filter stockade uses
  stockade.run stockade.run(["true"]) from a warm Python process (config, Plan, placeholders, spawn)
  CLI          `stockade run -- true` as a new process (interpreter start-up included),
               next to `python -c pass` to show what the interpreter alone costs here
and the ratios stockade.run / raw bwrap and stockade.run / true.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import stockade
from stockade.backends import select_backend
from stockade.placeholders import Placeholders


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--cli-runs", type=int, default=40)
    ap.add_argument("--cwd", default=os.getcwd())
    args = ap.parse_args()

    plan = stockade.explain(cwd=args.cwd)
    backend = select_backend(plan)

    def raw_bwrap() -> None:
        spec = backend.launch(plan, ["true"])
        proc = subprocess.Popen(spec.argv, env=spec.env, pass_fds=spec.pass_fds)
        spec.after_spawn()
        proc.wait()
        backend.finish(spec, proc.returncode)

    def api() -> None:
        assert stockade.run(["true"], cwd=args.cwd, capture_output=False).returncode == 0

    results = {
        "true": timed(lambda: subprocess.run(["true"], check=True), args.runs),
        "raw bwrap": [],
        "stockade.run": [],
    }
    # Interleave the two sandboxed variants so drift on the machine hits both alike.
    with Placeholders(plan.placeholders):  # raw bwrap needs the same mount points to exist
        raw_bwrap()
        api()
        for _ in range(args.runs):
            for name, fn in (("raw bwrap", raw_bwrap), ("stockade.run", api)):
                start = time.perf_counter()
                fn()
                results[name].append(time.perf_counter() - start)
    cli = [sys.executable, "-m", "stockade", "run", "--", "true"]
    results["CLI (python -m stockade run -- true)"] = timed(
        lambda: subprocess.run(cli, cwd=args.cwd, check=True), args.cli_runs
    )
    # The interpreter's own start-up, for reading the CLI figure: stockade's share is the difference.
    results["python -c pass (interpreter start-up)"] = timed(
        lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), args.cli_runs
    )

    print(f"stockade per-command overhead ({args.runs} runs; CLI {args.cli_runs}; cwd {args.cwd})")
    print(f"backend: {backend.describe()}")
    med = {}
    for name, samples in results.items():
        med[name] = statistics.median(samples)
        p90 = statistics.quantiles(samples, n=10)[-1]
        print(f"  {name:38} median {med[name] * 1000:7.2f} ms   p90 {p90 * 1000:7.2f} ms")
    print(f"  stockade.run / raw bwrap : {med['stockade.run'] / med['raw bwrap']:.2f}x  (target <= 1.2x)")
    print(f"  stockade.run / true      : {med['stockade.run'] / med['true']:.2f}x")
    cli_own = med["CLI (python -m stockade run -- true)"] - med["python -c pass (interpreter start-up)"]
    print(f"  CLI minus interpreter start-up: {cli_own * 1000:.2f} ms")


if __name__ == "__main__":
    main()
