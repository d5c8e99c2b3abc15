"""One filtering proxy per sandboxed command in network "proxy" mode, owned by that command.

Its socket lives in a private directory inside stockade's state directory, which every sandbox
hides; the bwrap backend shows just that directory to the command it belongs to. The proxy
ends with the command (every tunnel cut), and the directory is removed.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable

from ..backends.base import ProxyEndpoint
from ..errors import ConfigError
from ..net.proxy import Event, FilteringProxy, ProxyThread
from ..net.rules import HostRules, RuleError, parse_address
from ..plan import Plan
from ..state import state_dir

HOSTS_VARIABLE = "STOCKADE_PROXY_HOSTS"  # a hosts(5) file the proxy consults before DNS


class RunningProxy:
    def __init__(self, proxy: ProxyThread, endpoint: ProxyEndpoint) -> None:
        self.proxy, self.endpoint = proxy, endpoint

    @property
    def events(self) -> list[Event]:
        return self.proxy.proxy.events

    def close(self) -> None:
        self.proxy.close()
        shutil.rmtree(self.endpoint.directory, ignore_errors=True)


def start_proxy(
    plan: Plan, on_event: Callable[[Event], None] | None = None, *, tcp: bool = False
) -> RunningProxy:
    """The proxy for one command: on a unix socket (and its handoff socket, for the bridge), and
    with `tcp` also on an ephemeral loopback port, for a backend with no network namespace."""
    assert plan.proxy is not None
    rules = HostRules(plan.proxy.allow, plan.proxy.deny, plan.proxy.allow_local_binding)
    directory = tempfile.mkdtemp(prefix="proxy-", dir=state_dir())
    os.chmod(directory, 0o755)  # the command's (same) user reaches the socket; the state dir is 0700
    socket_path = os.path.join(directory, "proxy.sock")
    handoff_path = os.path.join(directory, "handoff.sock")
    proxy = FilteringProxy(rules, command=uuid.uuid4().hex[:12], hosts=_hosts(), on_event=on_event)
    unix = hasattr(socket, "AF_UNIX") and os.name != "nt"  # Windows: the loopback port alone
    try:
        loopback = ("127.0.0.1", 0) if tcp or not unix else None
        thread = ProxyThread(
            proxy,
            unix_path=socket_path if unix else None,
            tcp=loopback,
            handoff_path=handoff_path if unix else None,
        )
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    port = next((a[1] for a in thread.addresses if isinstance(a, tuple)), None)
    return RunningProxy(thread, ProxyEndpoint(directory, socket_path, handoff_path, port))


def _hosts() -> dict[str, list[str]]:
    path = os.environ.get(HOSTS_VARIABLE)
    if not path:
        return {}
    mapping: dict[str, list[str]] = {}
    try:
        with open(path) as fh:
            for number, line in enumerate(fh, 1):
                fields = line.split("#", 1)[0].split()
                if not fields:
                    continue
                if len(fields) < 2 or parse_address(fields[0]) is None:
                    why = f"line {number}: expected 'ADDRESS NAME...'"
                    raise ConfigError(why, file=path, key=HOSTS_VARIABLE)
                for name in fields[1:]:
                    mapping.setdefault(name, []).append(fields[0])
    except OSError as exc:
        raise ConfigError(f"cannot read it: {exc.strerror}", file=path, key=HOSTS_VARIABLE) from None
    except RuleError as exc:
        raise ConfigError(str(exc), file=path, key=HOSTS_VARIABLE) from None
    return mapping
