"""What the Landlock guard costs on real work: the same commands on both backends, same run.

    python bench/bench_guard.py [--runs 15]

The guard answers mediated syscalls in the supervisor: writes and metadata changes when the
Plan has protected entries inside a writable root (always, with the `workspace` profile), and
every open when something in a writable root is denied (a `.env` is present). Each workload
runs unsandboxed, with the bwrap backend, and with the Landlock backend in a repo without and
with a `.env`; medians of interleaved runs, ratios against the unsandboxed command and bwrap.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import stockade

WRITE_FILES = (
    "import os\n"
    "os.makedirs('out', exist_ok=True)\n"
    "for i in range(500):\n"
    "    p = f'out/f{i}.tmp'\n"
    "    open(p, 'w').write('x' * 100)\n"
    "    os.replace(p, f'out/f{i}')\n"
)
WORKLOADS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "git status": ["git", "status", "--short"],
    "500 files written+renamed": [sys.executable, "-c", WRITE_FILES],
}


def make_repo(root: Path, with_env: bool) -> Path:
    repo = root / ("with-env" if with_env else "plain")
    (repo / "src").mkdir(parents=True)
    for i in range(300):
        (repo / "src" / f"m{i}.py").write_text(f"X = {i}\n")
    if with_env:
        (repo / ".env").write_text("TOKEN=secret\n")
    env = {f"GIT_{who}_{what}": "b" for who in ("AUTHOR", "COMMITTER") for what in ("NAME", "EMAIL")}
    for argv in (["git", "init", "-q"], ["git", "add", "src"], ["git", "commit", "-qm", "init"]):
        subprocess.run(argv, cwd=repo, check=True, env={**env, "PATH": "/usr/bin:/bin"})
    return repo


def sandboxed(argv: list[str], *, cwd: Path, backend: str) -> None:
    done = stockade.run(argv, cwd=cwd, backend=backend)
    if done.returncode != 0:
        raise SystemExit(f"{argv[:2]} failed under {backend}: {done.stderr}")


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-guard-", dir="/var/tmp"))
    plain, with_env = make_repo(root, False), make_repo(root, True)
    for name, argv in WORKLOADS.items():
        cases = {
            "unsandboxed": lambda a=argv: subprocess.run(a, cwd=plain, capture_output=True, check=True),
            "bwrap": lambda a=argv: sandboxed(a, cwd=plain, backend="bwrap"),
            "landlock, guard on writes": lambda a=argv: sandboxed(a, cwd=plain, backend="landlock"),
            "landlock, guard on opens (.env)": lambda a=argv: sandboxed(a, cwd=with_env, backend="landlock"),
        }
        for fn in cases.values():  # warm up: launcher build, page cache, glob cache
            fn()
        samples: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.runs):
            for label, fn in cases.items():
                samples[label].append(timed(fn))
        base, bwrap = (statistics.median(samples[k]) for k in ("unsandboxed", "bwrap"))
        print(f"{name} (median of {args.runs} interleaved runs)")
        for label, values in samples.items():
            med = statistics.median(values)
            print(f"  {label:34} {med:8.1f} ms  {med / base:5.2f}x unsandboxed  {med / bwrap:5.2f}x bwrap")
    subprocess.run(["rm", "-rf", str(root)], check=False)


if __name__ == "__main__":
    main()
