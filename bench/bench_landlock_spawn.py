"""Per-command cost of confining a command with Landlock + seccomp, by launch mechanism.

    python bench/bench_landlock_spawn.py [--runs N] [--big-mb MB]

Prints the median wall time of spawning and reaping `true`:
  true       unsandboxed, plain subprocess (vfork)
  launcher   through the compiled llexec, with a real ruleset and the seccomp filter
  preexec    through the ctypes preexec_fn fallback (forces fork())
first from this small process, then from one holding --big-mb of touched memory (fork copies
the page tables, so its cost grows with the parent; vfork does not). The ruleset build in
the parent (create_ruleset + add_rule for ~20 paths) is timed on its own. Target: under 1.5 ms
above the unsandboxed command.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import struct
import subprocess
import time
from collections.abc import Callable

from stockade.backends import llexec
from stockade.backends.seccomp import build_filter

SYS_CREATE_RULESET, SYS_ADD_RULE = 444, 445
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
READ = EXECUTE | READ_FILE | READ_DIR
PATHS = [  # a typical workspace Plan's size: system read-only, a few writable trees and devices
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/opt", "/srv", "/var/lib", "/var/cache",
    "/home", "/root", "/proc", "/sys", "/run", "/tmp", "/var/tmp", "/dev/null", "/dev/zero",
    "/dev/urandom", "/dev/tty", "/dev/pts",
]  # fmt: skip
WRITABLE = {"/tmp", "/var/tmp", "/dev/null", "/dev/zero", "/dev/urandom", "/dev/tty", "/dev/pts"}
FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | (1 << 14) | (1 << 15)

libc = ctypes.CDLL(None, use_errno=True)


# What the guard reads per command: every granted path (as 'R'/'W') and a few guarded ones.
GUARD_ENTRIES = (
    b"".join(f"{'W' if p in WRITABLE else 'R'}\0{READ}\0{p}\0".encode() for p in PATHS)
    + b"G\0"
    + str(READ).encode()
    + b"\0/etc/hostname\0"
)


def build_ruleset() -> int:
    """Every filesystem right of ABI 5+ handled; the PATHS granted as a real backend would."""
    abi = libc.syscall(SYS_CREATE_RULESET, None, 0, 1)
    handled = (1 << (13 if abi == 1 else 14 if abi == 2 else 15 if abi < 5 else 16)) - 1
    attr = ctypes.create_string_buffer(struct.pack("=Q", handled), 8)
    fd = libc.syscall(SYS_CREATE_RULESET, attr, 8, 0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    for path in PATHS:
        try:
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        allowed = handled if path in WRITABLE else READ
        if not os.path.isdir(path):
            allowed &= FILE_ONLY
        rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed & handled, pfd), 12)
        ok = libc.syscall(SYS_ADD_RULE, fd, 1, rule, 0) == 0
        os.close(pfd)
        if not ok:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}")
    return fd


def median_ms(fn: Callable[[], object], runs: int) -> float:
    for _ in range(5):
        fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def spawners(true: str, ruleset_fd: int, bpf: bytes) -> dict[str, Callable[[], None]]:
    path = llexec.launcher()

    def plain() -> None:
        subprocess.Popen([true]).wait()

    def launcher(guard: bool = False) -> None:
        assert path is not None, llexec.launcher_problem()
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        filter_r, filter_w = os.pipe()
        os.write(filter_w, bpf)
        os.close(filter_w)
        fds = [status_w, ruleset_fd, filter_r]
        extra = {}
        if guard:  # the entries as a backend passes them, and the supervisor's own ruleset
            guard_fd = os.memfd_create("guard", os.MFD_CLOEXEC)
            os.write(guard_fd, GUARD_ENTRIES)
            os.lseek(guard_fd, 0, os.SEEK_SET)
            extra = {"guard_fd": guard_fd, "supervisor_ruleset_fd": os.dup(ruleset_fd)}
        argv = llexec.spec_argv(path, *fds, [true], **extra)
        proc = subprocess.Popen(argv, pass_fds=(*fds, *extra.values()))
        for fd in (status_w, filter_r, *extra.values()):
            os.close(fd)
        proc.wait()
        assert llexec.read_status(status_r) is None and proc.returncode == 0

    def preexec() -> None:
        proc = subprocess.Popen([true], preexec_fn=llexec.preexec(ruleset_fd, bpf))
        assert proc.wait() == 0

    return {"true": plain, "launcher": launcher, "+ guard": lambda: launcher(True), "preexec": preexec}


def report(title: str, runs: int, fns: dict[str, Callable[[], None]]) -> None:
    results = {name: median_ms(fn, runs) for name, fn in fns.items()}
    base = results["true"]
    print(f"\n{title}")
    for name, ms in results.items():
        extra = "" if name == "true" else f"   +{ms - base:6.3f} ms above true"
        print(f"  {name:9} {ms:7.3f} ms  x{ms / base:5.2f}{extra}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--big-mb", type=int, default=1024)
    args = ap.parse_args()

    true = shutil.which("true") or "/bin/true"
    start = time.perf_counter()
    path = llexec.launcher()
    took = 1000 * (time.perf_counter() - start)
    print(f"launcher: {path or llexec.launcher_problem()} (lookup/build {took:.1f} ms)")
    bpf = build_filter(network=False, shared_host=True)

    def one_ruleset() -> None:
        os.close(build_ruleset())

    took = median_ms(one_ruleset, args.runs)
    print(f"ruleset build ({len(PATHS)} paths, in the parent): {took:.3f} ms median")
    ruleset_fd = build_ruleset()
    fns = spawners(true, ruleset_fd, bpf)
    report(f"from this process (median of {args.runs})", args.runs, fns)

    big = bytearray(args.big_mb << 20)
    big[::4096] = b"\1" * len(range(0, len(big), 4096))  # touch every page
    report(f"from a process holding {args.big_mb} MB of touched memory", args.runs, fns)
    del big
    os.close(ruleset_fd)


if __name__ == "__main__":
    main()
