"""Backends turn a Plan into an enforced process; one module per mechanism.

`auto` picks the strongest one the host allows: bubblewrap (namespaces: private mounts, pid
and network) where it can start a sandbox, else Landlock + seccomp, if it can hold the Plan
exactly. Neither: SandboxUnavailable with both reasons; nothing ever runs unsandboxed. On
Windows `auto` is the (experimental) Windows backend.
"""

from __future__ import annotations

import os
import sys

from ..errors import SandboxUnavailable, UnsupportedPolicy
from ..plan import Plan
from .base import Backend, LaunchSpec

_made: dict[str, Backend] = {}
_bwrap_works: bool | None = None


def _make(name: str) -> Backend:
    if name == "seatbelt":  # experimental; its check() refuses anywhere but macOS
        from .seatbelt import SeatbeltBackend

        return SeatbeltBackend()
    if name == "windows":  # experimental; its check() refuses anywhere but Windows
        from .windows import WindowsBackend

        return WindowsBackend()
    if name not in _made:
        if not sys.platform.startswith("linux"):
            raise SandboxUnavailable(f"stockade cannot sandbox on {sys.platform} yet; nothing was run")
        if name == "bwrap":
            from .bwrap import BwrapBackend

            _made[name] = BwrapBackend()
        else:
            from .landlock import LandlockBackend

            _made[name] = LandlockBackend()
    return _made[name]


def bwrap_starts() -> bool:
    """Does a real minimal bubblewrap sandbox start here? Probed once, then remembered (in the
    process, and in the state directory under everything the answer depends on)."""
    global _bwrap_works
    if _bwrap_works is None:
        from ..doctor import check_sandbox_try
        from ..state import find_state_dir
        from .locate import find_bwrap

        binary = find_bwrap()
        key = _host_key(binary.path if binary else "")
        base = find_state_dir()
        memo = os.path.join(base, "bwrap-starts") if base else None
        try:
            with open(memo or "", encoding="utf-8") as fh:
                saved_key, _, verdict = fh.read().rpartition("\n")
            if saved_key == key and verdict in ("yes", "no"):
                _bwrap_works = verdict == "yes"
                return _bwrap_works
        except OSError:
            pass
        _bwrap_works = check_sandbox_try(binary).ok
        if memo:
            tmp = f"{memo}.{os.getpid()}"
            try:
                with open(tmp, "w", encoding="utf-8") as fh:
                    fh.write(f"{key}\n{'yes' if _bwrap_works else 'no'}")
                os.replace(tmp, memo)
            except OSError:
                pass
    return _bwrap_works


def _host_key(bwrap: str) -> str:
    """What decides whether namespaces are allowed: kernel, boot, sysctls, our own confinement."""
    parts = [bwrap, os.uname().release]
    if bwrap:
        st = os.stat(bwrap)
        parts.append(f"{st.st_mtime_ns}:{st.st_ino}")
    for path in (
        "/proc/sys/kernel/random/boot_id",
        "/proc/sys/user/max_user_namespaces",
        "/proc/sys/kernel/unprivileged_userns_clone",
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
        "/proc/self/uid_map",
    ):
        try:
            with open(path, encoding="utf-8") as fh:
                parts.append(" ".join(fh.read().split()))
        except OSError:
            parts.append("-")
    with open("/proc/self/status", encoding="utf-8") as fh:
        parts += [ln.strip() for ln in fh if ln.startswith(("Seccomp", "NoNewPrivs", "CapEff"))]
    return "|".join(parts).replace("\n", " ")


def select_backend(plan: Plan) -> Backend:
    """The backend the Plan asked for, or for `auto` the strongest that works here."""
    if plan.backend != "auto":
        return _make(plan.backend)
    if sys.platform == "darwin":
        return _make("seatbelt")
    if sys.platform == "win32":
        return _make("windows")
    reasons = []
    try:
        backend = _make("bwrap")
        if bwrap_starts():
            return backend
        from ..doctor import explain_launch_failure

        reasons.append(f"bubblewrap: {explain_launch_failure('')}")
    except SandboxUnavailable as exc:
        reasons.append(f"bubblewrap: {exc}")
    try:
        backend = _make("landlock")
        backend.check(plan)
        return backend
    except (SandboxUnavailable, UnsupportedPolicy) as exc:
        reasons.append(f"landlock: {exc}")
    summary = "no backend can enforce this Plan here, so nothing was run:\n"
    raise SandboxUnavailable(summary + "\n".join(reasons))


__all__ = ["Backend", "LaunchSpec", "bwrap_starts", "select_backend"]
