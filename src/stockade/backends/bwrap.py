"""Linux bubblewrap backend: namespaces, bind mounts and a seccomp filter.

Mount order is the Plan's path order (ancestors before descendants), so a more specific entry
always lands on top of its parent: that is how "the most specific path wins" is enforced.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal

from ..errors import SandboxUnavailable, UnsupportedPolicy
from ..plan import PathRule, Plan, nearest_access
from ..state import empty_file, state_dir
from . import hostsockets, limits, seccomp
from .base import LaunchSpec, ProxyEndpoint
from .locate import BwrapBinary, find_bwrap

EXIT_CODE = re.compile(rb'"exit-code"\s*:\s*(\d+)')  # bwrap's JSON status line
FRESH = ("/dev", "/proc")  # provided new by the sandbox; the Plan cannot grant inside them
NAMESPACES = ("--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try")


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


class BwrapBackend:
    name = "bwrap"

    def __init__(self, binary: BwrapBinary | None = None) -> None:
        binary = binary or find_bwrap()
        if binary is None:
            from ..doctor import explain_launch_failure

            raise SandboxUnavailable(explain_launch_failure(""))
        self.binary = binary

    def describe(self) -> str:
        b = self.binary
        return f"bubblewrap {b.version_text} ({b.origin}: {b.path})"

    def check(self, plan: Plan) -> None:
        for rule in plan.rules:
            if rule.access == "deny":
                continue  # inside a fresh /dev or /proc the host's file is not there anyway
            for top in FRESH:
                if rule.path != "/" and _under(rule.path, top):
                    raise UnsupportedPolicy(
                        f"{rule.reason}: {rule.path} is inside {top}, which the bubblewrap "
                        "backend always provides fresh (it cannot grant or deny paths there)"
                    )
        if why := limits.refusal(plan.limits, self.name):
            raise UnsupportedPolicy(why)

    def mounts(
        self, plan: Plan, endpoint: ProxyEndpoint | None = None, helper: str | None = None
    ) -> list[str]:
        """bwrap mount arguments for the Plan, host socket masks included; with an `endpoint`,
        its directory and the bridge binary are shown (read-only) inside the hidden state dir,
        and so is the launcher binary as a `helper` (the PTY's controlling terminal)."""
        by_path = {r.path: r for r in plan.rules}
        shown = [(endpoint.directory, "dir"), (self._bridge(), "file")] if endpoint is not None else []
        shown += [(helper, "file")] if helper is not None else []
        for path, kind in shown:
            by_path[path] = PathRule(path, "read", kind, "stockade's own helper", path)  # type: ignore[arg-type]
        args: list[str] = []
        root = by_path.get("/")
        if root is not None and root.access == "read":
            args += ["--ro-bind", "/", "/"]
        elif root is not None and root.access == "write":
            args += ["--bind", "/", "/"]
        args += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/dev/shm"]
        remount: list[str] = []
        for rule in self._host_masks(plan):
            by_path.setdefault(rule.path, rule)
        effective: dict[str, str] = {"/": root.access} if root else {}
        for path in sorted(by_path):
            if path == "/" or any(_under(path, top) for top in FRESH):
                continue
            parent = nearest_access(effective, os.path.dirname(path))
            effective[path] = by_path[path].access
            args += self._op(by_path[path], parent, by_path, remount)
        for rule in plan.rules:
            # A symlink the rule was named by (/bin -> usr/bin on merged-/usr systems) must exist
            # where nothing else makes it visible, or the path would vanish inside.
            lexical = rule.lexical
            if (
                lexical != rule.path
                and os.path.islink(lexical)
                and nearest_access(effective, lexical) is None
            ):
                args += ["--symlink", os.readlink(lexical), lexical]
                effective[lexical] = rule.access
        for sock in sorted(hostsockets.bound_paths()):
            if endpoint is not None and sock in (endpoint.socket, endpoint.handoff):
                continue  # ours: the one way out
            if nearest_access(effective, sock) in ("read", "write"):
                args += ["--ro-bind", empty_file(), sock]
        if root is None:
            # No entry for / : bwrap's own tmpfs is the root, holding only the mount points.
            # Read-only, so a write to a path under no entry fails instead of vanishing.
            remount.append("/")
        for path in remount:
            args += ["--remount-ro", path]
        return args

    def _host_masks(self, plan: Plan) -> list[PathRule]:
        """Hidden whole (like a deny) unless the Plan names them itself: host socket directories,
        and stockade's own state (a command must not rewrite the placeholder journal).

        A file that must stay readable inside one of them (a resolv.conf kept under /run) is
        re-bound on top, as any deeper entry would be.
        """
        env = {**os.environ, **plan.env}  # SSH_AUTH_SOCK is withheld from plan.env
        masks = [PathRule(d, "deny", "dir", "host socket directory", d) for d in hostsockets.socket_dirs(env)]
        state = os.path.realpath(state_dir())
        masks.append(PathRule(state, "deny", "dir", "stockade state", state))
        resolv = os.path.realpath("/etc/resolv.conf")
        if plan.network == "on" and os.path.isfile(resolv) and any(_under(resolv, m.path) for m in masks):
            masks.append(PathRule(resolv, "read", "file", "DNS configuration", "/etc/resolv.conf"))
        return masks

    def _op(
        self, rule: PathRule, parent: str | None, by_path: dict[str, PathRule], remount: list[str]
    ) -> list[str]:
        path = rule.path
        if rule.kind == "scratch":
            return ["--perms", "1777", "--tmpfs", path]
        if rule.access == "read":
            return [] if parent == "read" and not rule.pinned else ["--ro-bind", path, path]
        if rule.access == "write":
            return [] if parent == "write" and not rule.pinned else ["--bind", path, path]
        if parent in (None, "deny"):
            return []  # not visible anyway
        if rule.kind == "file":
            return ["--ro-bind", empty_file(), path]
        # A denied directory: an empty tmpfs no one can list or write; search (x) only when a
        # more specific entry below reopens something, so that path can still be reached.
        reopened = any(p.startswith(path + "/") and r.access != "deny" for p, r in by_path.items())
        remount.append(path)
        return ["--perms", "0111" if reopened else "0000", "--tmpfs", path]

    def _bridge(self) -> str:
        from . import llexec

        path = llexec.launcher()
        if path is None:
            why = llexec.launcher_problem()
            raise UnsupportedPolicy(f"network = proxy, limits and sessions need stockade's launcher: {why}")
        return path

    def launch(
        self, plan: Plan, argv: list[str], endpoint: ProxyEndpoint | None = None, *, tty: bool = False
    ) -> LaunchSpec:
        self.check(plan)
        env = plan.env
        helper = None
        rlimits, cgroup = limits.prepare_limits(plan.limits, self.name)
        if rlimits:  # set inside, right before the command: everything it starts inherits them
            helper = self._bridge()
            argv = [helper, "--limits", rlimits, "--", *argv]
        if tty:  # the PTY becomes the controlling terminal inside (bwrap's --new-session left none)
            helper = self._bridge()
            argv = [helper, "--ctty", *argv]
        if plan.network == "proxy":
            if endpoint is None:
                raise UnsupportedPolicy("network = proxy, but no proxy was started for this command")
            bridge = self._bridge()
            argv = [bridge, "--bridge", str(endpoint.PORT), endpoint.handoff, *argv]
            env = {**env, **endpoint.environment(bridge)}
        try:
            bpf = seccomp.build_filter(network=plan.network == "on")
        except RuntimeError as exc:  # an architecture we have no filter for: refuse, never run unfiltered
            raise UnsupportedPolicy(str(exc)) from None
        filter_r, filter_w = os.pipe()
        os.write(filter_w, bpf)
        os.close(filter_w)
        status_r, status_w = os.pipe()
        args = [self.binary.path, *NAMESPACES]
        if plan.network != "on":
            args.append("--unshare-net")
        args += [
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--seccomp",
            str(filter_r),
            "--json-status-fd",
            str(status_w),
            *self.mounts(plan, endpoint if plan.network == "proxy" else None, helper),
            "--chdir",
            os.path.realpath(plan.cwd),
            "--",
            *argv,
        ]
        if cgroup is not None:  # joined before bwrap starts: its whole tree is counted
            args = [self._bridge(), "--cgroup", cgroup.procs, "--", *args]
        return LaunchSpec(
            argv=args,
            env=env,
            cwd="/",
            pass_fds=(filter_r, status_w),
            status_fd=status_r,
            close_after_spawn=[filter_r, status_w],
            cgroup=cgroup,
        )

    def kill(self, spec: LaunchSpec, pid: int) -> None:
        """bwrap is the sandbox's init's parent: killing it takes the pid namespace down."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def cleanup(self, spec: LaunchSpec, pid: int) -> None:
        """Nothing is left: the pid namespace ended with the command."""

    def finish(self, spec: LaunchSpec, returncode: int) -> int | None:
        """bwrap reports "exit-code" only when the command was really exec'd."""
        if spec.status_fd is None:
            return returncode
        chunks = []
        while data := os.read(spec.status_fd, 65536):
            chunks.append(data)
        os.close(spec.status_fd)
        spec.status_fd = None
        found = EXIT_CODE.search(b"".join(chunks))
        return int(found.group(1)) if found else None
