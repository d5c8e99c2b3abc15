"""What every backend provides: check(plan) refuses what it cannot enforce; launch() builds argv."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..plan import Plan
from .limits import PidsCgroup


@dataclass(frozen=True)
class ProxyEndpoint:
    """Where stockade's filtering proxy listens for one command (network "proxy")."""

    directory: str  # private, inside stockade's state directory; only it is shown inside
    socket: str  # the unix socket in it (a client speaks HTTP or SOCKS5 on it: ssh's helper)
    handoff: str  # the bridge passes each of the command's connections here, as an fd
    # The host loopback port the proxy also listens on, for a backend without a network
    # namespace (Seatbelt: its profile lets the command reach this port and nothing else).
    tcp_port: int | None = None

    PORT = 3128  # the proxy's port on the sandbox's own loopback (the bridge listens there)

    def environment(self, connect_helper: str | None) -> dict[str, str]:
        """The variables that point tools at the proxy. ssh tunnels through `connect_helper` on
        the unix socket, or, without one, through nc's HTTP CONNECT on the TCP port."""
        port = self.tcp_port or self.PORT
        http, socks = f"http://127.0.0.1:{port}", f"socks5h://127.0.0.1:{port}"
        java = " ".join(
            f"-D{scheme}.proxy{key}={value}"
            for scheme in ("http", "https")
            for key, value in (("Host", "127.0.0.1"), ("Port", port))
        )
        env = {name: http for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
        env |= {"ALL_PROXY": socks, "all_proxy": socks, "NO_PROXY": "localhost,127.0.0.1,::1"}
        env |= {"no_proxy": env["NO_PROXY"], "PIP_PROXY": http, "npm_config_proxy": http}
        env |= {"npm_config_https_proxy": http, "YARN_HTTP_PROXY": http, "YARN_HTTPS_PROXY": http}
        env |= {"JAVA_TOOL_OPTIONS": java + " -Dhttp.nonProxyHosts=localhost|127.0.0.1"}
        if connect_helper is not None:
            tunnel = f"{connect_helper} --connect {self.socket} %h %p"
        elif sys.platform == "win32":
            tunnel = f"connect -H 127.0.0.1:{port} %h %p"  # Git for Windows ships connect.exe
        else:
            tunnel = f"nc -X connect -x 127.0.0.1:{port} %h %p"  # BSD nc (macOS)
        env["GIT_SSH_COMMAND"] = f"ssh -o ProxyCommand='{tunnel}'"
        return env


@dataclass
class LaunchSpec:
    """Everything needed to spawn the sandboxed command, and to tidy up after it."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    pass_fds: tuple[int, ...] = ()
    status_fd: int | None = None  # read end: the backend's report of how the command ended
    close_after_spawn: list[int] = field(default_factory=list)
    preexec: Callable[[], None] | None = None  # only where no launcher binary can be used
    supervisor: bool = False  # the spawned process ends the whole sandbox when sent SIGTERM
    remove_after: list[str] = field(default_factory=list)  # private directories made for this run
    cgroup: PidsCgroup | None = None  # limits.processes where RLIMIT_NPROC cannot count it
    report_fd: int | None = None  # read end: "OP\tPATH\tPATH2" per call the backend refused

    def after_spawn(self) -> None:
        for fd in self.close_after_spawn:
            os.close(fd)
        self.close_after_spawn.clear()


class Backend(Protocol):
    name: str

    def check(self, plan: Plan) -> None:
        """Raise UnsupportedPolicy (with the reason) if this Plan cannot be enforced exactly."""

    def launch(
        self, plan: Plan, argv: list[str], endpoint: ProxyEndpoint | None = None, *, tty: bool = False
    ) -> LaunchSpec:
        """The spec of a process that runs `argv` under `plan`; `endpoint`: the proxy's (network
        "proxy"); `tty`: stdin is a PTY of the command's own, to become its terminal."""

    def finish(self, spec: LaunchSpec, returncode: int) -> int | None:
        """The command's exit status, or None if the sandbox never started it."""

    def describe(self) -> str:
        """One line for explain/doctor: which mechanism and binary."""

    def kill(self, spec: LaunchSpec, pid: int) -> None:
        """End everything the command started (the whole sandbox), now; `pid` is not reaped yet."""

    def cleanup(self, spec: LaunchSpec, pid: int) -> None:
        """After the spawned process was reaped: end whatever the command left running."""
