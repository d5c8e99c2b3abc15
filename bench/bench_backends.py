"""The two Linux backends side by side, same Plan, same run: what each adds to a command.

    python bench/bench_backends.py [--runs 300]

Uses a profile both can hold (read the system, write tmp, deny ~/.ssh) and prints the median of
`true` unsandboxed, raw bwrap (stockade's exact argv, no Python around it), and stockade.run
with backend bwrap and landlock, interleaved so drift on the machine hits all alike.
Target (issue 4): Landlock under 1.5 ms above the unsandboxed command.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import stockade
from stockade.backends.bwrap import BwrapBackend

PROFILE = """
[profiles.both]
extends = "read-only"
[profiles.both.filesystem]
":tmpdir" = "write"
":slash_tmp" = "write"
"~/.ssh" = "deny"
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=300)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stockade-bench-", dir="/var/tmp"))
    try:
        (work / "p.toml").write_text(PROFILE)
        opts = {"cwd": str(work), "config": str(work / "p.toml"), "profile": "both", "capture_output": False}
        plan = stockade.explain(cwd=str(work), config=str(work / "p.toml"), profile="both")
        bwrap = BwrapBackend()

        def raw_bwrap() -> None:
            spec = bwrap.launch(plan, ["true"])
            proc = subprocess.Popen(spec.argv, env=spec.env, pass_fds=spec.pass_fds)
            spec.after_spawn()
            proc.wait()
            bwrap.finish(spec, proc.returncode)

        variants = {
            "true (unsandboxed)": lambda: subprocess.run(["true"], check=True),
            "raw bwrap": raw_bwrap,
            "stockade.run backend=bwrap": lambda: stockade.run(["true"], backend="bwrap", **opts),
            "stockade.run backend=landlock": lambda: stockade.run(["true"], backend="landlock", **opts),
        }
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for fn in variants.values():
            fn()  # warm-up: caches, the launcher build
        for _ in range(args.runs):
            for name, fn in variants.items():
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
        med = {name: statistics.median(s) * 1000 for name, s in samples.items()}
        base = med["true (unsandboxed)"]
        print(f"median of {args.runs} interleaved runs, profile 'both' (read system, write tmp, deny ~/.ssh)")
        for name, ms in med.items():
            print(f"  {name:32} {ms:7.2f} ms   +{ms - base:6.2f} ms above true   {ms / base:5.2f}x true")
        landlock, via_bwrap = med["stockade.run backend=landlock"], med["stockade.run backend=bwrap"]
        print(f"  landlock / bwrap (both through stockade.run): {landlock / via_bwrap:.2f}x")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
