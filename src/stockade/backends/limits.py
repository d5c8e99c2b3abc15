"""Resource limits (`[limits]`): rlimits set by the launcher, and a pids cgroup where needed.

Every limit but `processes` is a per-process rlimit that the launcher sets right before it
execs the command, so everything the command starts inherits it. `processes` is harder:
RLIMIT_NPROC counts a user's processes in one user namespace, and the kernel ignores it for
uid 0. Under bubblewrap as an unprivileged user the sandbox has its own user namespace, so the
rlimit counts exactly the sandbox's processes. Everywhere else (root, or Landlock, which has no
namespace and would count every process of the user on the host) a pids cgroup carries it; a
host where stockade cannot create one refuses the Plan rather than run without the limit.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time

from ..errors import UnsupportedPolicy
from ..policy.model import Limits

RLIMIT_NAMES = {"memory": "as", "processes": "nproc", "cpu_seconds": "cpu", "file_size": "fsize"}
RLIMIT_NAMES["open_files"] = "nofile"
HELPERS = {"bwrap": 2, "landlock": 1}  # stockade's own processes in the cgroup: bwrap and its init,
# or the launcher's supervisor; `processes` counts the command's alone
_ids = itertools.count()


def rlimit_spec(limits: Limits, *, nproc: bool) -> str | None:
    """The launcher's --limits argument, or None when there is nothing to set."""
    items = [(k, v) for k, v in limits.items() if nproc or k != "processes"]
    return ",".join(f"{RLIMIT_NAMES[k]}={v}" for k, v in items) or None


def nproc_counts_sandbox_only(backend: str) -> bool:
    """RLIMIT_NPROC is exact only in a user namespace of the sandbox's own, as non-root."""
    return backend == "bwrap" and os.geteuid() != 0


def _own_cgroup(controller: str) -> str | None:
    """This process's cgroup directory for `controller` (v1), or its v2 directory ("")."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            return os.path.join(f"/sys/fs/cgroup/{controller}", path.lstrip("/"))
    for line in lines:
        if line.startswith("0::"):
            base = os.path.join("/sys/fs/cgroup", line[3:].lstrip("/"))
            try:
                with open(os.path.join(base, "cgroup.subtree_control")) as f:
                    if controller in f.read().split():
                        return base
            except OSError:
                return None
    return None


def pids_cgroup_problem() -> str | None:
    """Why no pids cgroup can be made here (None: one can)."""
    base = _own_cgroup("pids")
    if base is None:
        return "no pids cgroup controller is available to this process"
    if not os.access(base, os.W_OK):
        return f"the pids cgroup {base} is not writable by this user (no delegation)"
    return None


class PidsCgroup:
    """A pids cgroup for one command: pids.max is the limit plus stockade's own processes."""

    def __init__(self, processes: int, helpers: int) -> None:
        base = _own_cgroup("pids")
        if base is None or (why := pids_cgroup_problem()):
            raise UnsupportedPolicy(f"limits.processes: {why or 'no pids cgroup'}")
        self.path = os.path.join(base, f"stockade-{os.getpid()}-{next(_ids)}")
        os.mkdir(self.path)
        try:
            with open(os.path.join(self.path, "pids.max"), "w") as f:
                f.write(str(processes + helpers))
        except OSError:
            os.rmdir(self.path)
            raise
        self.procs = os.path.join(self.path, "cgroup.procs")

    def remove(self) -> None:
        """Kill whatever is still in it (nothing should be) and remove it."""
        for _ in range(100):
            try:
                with open(self.procs) as f:
                    pids = [int(p) for p in f.read().split()]
            except OSError:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.rmdir(self.path)
                return
            time.sleep(0.01)


def refusal(limits: Limits, backend: str) -> str | None:
    """Why `backend` cannot enforce these limits on this host (None: it can)."""
    if limits.processes is None or nproc_counts_sandbox_only(backend):
        return None
    why = pids_cgroup_problem()
    if why is None:
        return None
    if os.geteuid() == 0:
        rlimit = "as root the kernel ignores RLIMIT_NPROC"
    else:
        rlimit = "without a user namespace RLIMIT_NPROC would count every process of this user on the host"
    return f"limits.processes cannot be enforced by {backend} here: {rlimit}, and {why}"


def prepare_limits(limits: Limits, backend: str) -> tuple[str | None, PidsCgroup | None]:
    """The launcher's --limits argument and the cgroup to join (or refuse, with the reason)."""
    why = refusal(limits, backend)
    if why is not None:
        raise UnsupportedPolicy(why)
    if limits.processes is None or nproc_counts_sandbox_only(backend):
        return rlimit_spec(limits, nproc=True), None
    return rlimit_spec(limits, nproc=False), PidsCgroup(limits.processes, HELPERS[backend])
