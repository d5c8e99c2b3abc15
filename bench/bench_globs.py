"""Deny-glob expansion on a large tree: first and repeated expansion against one plain os.walk.

    python bench/bench_globs.py [--runs 15] [--dirs 10000] [--files 100000]

Generates a tree (by default 100,000 files in 10,000 directories, a few of them secrets),
then measures, each as the median of --runs runs with the OS page cache warm for all three:
  - os.walk over the tree (the baseline: one plain walk, doing nothing with what it lists);
  - the first expansion of 15 deny globs (stockade's in-process cache emptied before each run);
  - a repeated expansion over the unchanged tree (cache kept: one stat per directory);
  - the same in a new process: the in-memory cache emptied, the on-disk one loaded (what each
    `stockade run` from the shell pays).
Targets (issue 3): first <= 1x os.walk, repeated >= 5x faster than first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

from stockade import globs
from stockade.globcache import DiskStore

PATTERNS = [
    "**/.env",
    "**/.env.*",
    "**/*.pem",
    "**/*.key",
    "**/id_rsa*",
    "**/id_ed25519*",
    "**/.npmrc",
    "**/.pypirc",
    "**/credentials.json",
    "**/secrets.*",
    "**/*.p12",
    "**/*.pfx",
    "**/.netrc",
    "**/service-account*.json",
    "**/.git-credentials",
]


def make_tree(base: str, dirs: int, files: int) -> int:
    """dirs leaf directories three levels deep, files spread evenly; returns secrets planted."""
    per_dir = max(1, files // dirs)
    top = max(1, round(dirs ** (1 / 3)))
    planted = 0
    for i in range(dirs):
        d = os.path.join(base, f"pkg{i % top}", f"mod{(i // top) % top}", f"leaf{i}")
        os.makedirs(d, exist_ok=True)
        for j in range(per_dir):
            name = f"file{j}.py"
            if j == 0 and i % 500 == 0:
                name, planted = (".env", planted + 1) if i % 1000 == 0 else ("server.pem", planted + 1)
            with open(os.path.join(d, name), "w") as fh:
                fh.write("x")
    return planted


def median_ms(fn: Callable[[], object], runs: int, before: Callable[[], None] = lambda: None) -> float:
    times = []
    for _ in range(runs):
        before()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--dirs", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=100_000)
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="stockade-bench-globs-", dir="/var/tmp")
    try:
        planted = make_tree(base, args.dirs, args.files)
        n_dirs = sum(1 for _ in os.walk(base))
        n_files = sum(len(f) for _, _, f in os.walk(base))
        # Directories changed in the last two seconds are never cached (coarse timestamps);
        # a real checkout is older than that.
        time.sleep(globs.RACY_NS / 1e9 + 0.1)
        patterns = [os.path.join(base, p) for p in PATTERNS]
        found = globs.expand_all(patterns, 8)
        assert sum(len(v) for v in found.values()) == planted, "the expansion missed planted secrets"

        def walk() -> None:
            for _ in os.walk(base):
                pass

        def expand() -> None:
            globs.expand_all(patterns, 8)

        baseline = median_ms(walk, args.runs)
        first = median_ms(expand, args.runs, before=globs._cache.clear)
        expand()
        repeated = median_ms(expand, args.runs)
        state = os.path.join(base, ".state")
        os.mkdir(state)
        globs.expand_all(patterns, 8, DiskStore(state))
        DiskStore(state).save(base)

        def expand_new_process() -> None:
            globs.expand_all(patterns, 8, DiskStore(state))

        fresh = median_ms(expand_new_process, args.runs, before=globs._cache.clear)
        print(f"tree: {n_files} files in {n_dirs} directories, {len(PATTERNS)} deny globs, {planted} matches")
        print(f"median of {args.runs} runs, page cache warm:")
        print(f"  os.walk (baseline)       {baseline:8.1f} ms")
        print(f"  first expansion          {first:8.1f} ms   {first / baseline:5.2f}x os.walk")
        print(
            f"  repeated expansion       {repeated:8.1f} ms   {repeated / baseline:5.2f}x os.walk, "
            f"{first / repeated:4.1f}x faster than first"
        )
        print(
            f"  repeated, new process    {fresh:8.1f} ms   {fresh / baseline:5.2f}x os.walk, "
            f"{first / fresh:4.1f}x faster than first (cache loaded from disk)"
        )
    finally:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
