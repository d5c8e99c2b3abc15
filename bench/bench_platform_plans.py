"""Rendering a Plan for another platform: the Seatbelt profile of a typical workspace Plan.

    python bench/bench_platform_plans.py [--runs 2000]

The Plan is this host's own `workspace` Plan for the current directory (materialized once);
the figure is the median of five rounds of `--runs` renders, per render. Target: well under
a millisecond.
"""

from __future__ import annotations

import argparse
import statistics
import time

import stockade
from stockade.backends.macos import render


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    plan = stockade.explain()
    rows = [("seatbelt profile (macOS)", lambda: render(plan))]
    print(f"workspace Plan of the current directory: {len(plan.rules)} entries")
    for name, make in rows:
        rounds = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(args.runs):
                make()
            rounds.append((time.perf_counter() - start) / args.runs * 1000)
        print(f"  {name:28} {statistics.median(rounds):.4f} ms per render (median of 5 x {args.runs})")


if __name__ == "__main__":
    main()
