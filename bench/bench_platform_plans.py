"""Rendering a Plan for another platform: the Seatbelt profile and the Windows ACL plans of a
typical workspace Plan.

    python bench/bench_platform_plans.py [--runs 2000]

The Plan is this host's own `workspace` Plan for the current directory (materialized once);
the figure is the median of five rounds of `--runs` renders, per render. Target: well under
a millisecond. The Windows renderer asks the filesystem through an FsView (home's children, glob
matches, link targets); here its answers are memoized after the first render, so the figure is
the translation itself, as for Seatbelt (which keeps each glob's regex after the first
render too).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import stockade
from stockade.backends.seatbelt import render
from stockade.backends.windows import HostFs, SidStore
from stockade.backends.windows import render as render_windows


class MemoFs:
    """The host's filesystem, each answer kept after the first ask."""

    def __init__(self) -> None:
        host = HostFs()
        self.kind = functools.cache(host.kind)
        self.realpath = functools.cache(host.realpath)
        self.listdir = functools.cache(host.listdir)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    plan = stockade.explain()
    fs, state = MemoFs(), SidStore()  # in memory: the SIDs are the derived ones
    rows = [
        ("seatbelt profile (macOS)", lambda: render(plan)),
        ("windows plan (elevated)", lambda: render_windows(plan, backend="elevated", state=state, fs=fs)),
        ("windows plan (restricted)", lambda: render_windows(plan, backend="restricted", state=state, fs=fs)),
    ]
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
