"""WindowsBackend: the Backend protocol over a rendered WindowsPlan (experimental, Windows only).

`launch()` does not spawn the command itself: it renders the plan, writes it as JSON into a
private directory and returns the spec of the applier helper (`python -m
stockade.backends.windows.apply`), which reconciles the ACEs, sets the firewall rules, builds the
write-restricted token and runs the command in a job object that ends the whole tree with it.
So every entry point still goes through the one spawn path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile

from ... import hostdirs
from ...errors import SandboxUnavailable, UnsupportedPolicy
from ...plan import Plan
from ..base import LaunchSpec, ProxyEndpoint
from .model import Backend, WindowsPlan
from .paths import HostFs
from .render import render
from .sids import SidStore, default_state_file

STARTED = "started"  # written by the helper right before the command starts
NOT_STARTED = 125  # the helper's exit status when the command never ran (apply.NOT_STARTED)


def with_private_tmp(plan: Plan, directory: str | None = None) -> Plan:
    """The Plan's scratch entry (no tmp granted) made real: `directory`, a fresh one per run,
    writable, with every tmp variable pointing there. Without `directory`, the entry's own
    (nominal) path: what `check()` and `explain` render, with the same refusals as a run."""
    scratch = next((r for r in plan.rules if r.kind == "scratch"), None)
    if scratch is None:
        return plan
    path = directory or scratch.path
    rule = dataclasses.replace(scratch, path=path, lexical=path, kind="dir")
    rules = tuple(sorted((rule if r is scratch else r for r in plan.rules), key=lambda r: r.path))
    env = {**plan.env, **hostdirs.tmp_env(path, "nt")}
    return dataclasses.replace(plan, rules=rules, tmpdir=path, env=env)


class WindowsBackend:
    """ACLs + a write-restricted token (+ a sandbox account when `mode` is "elevated")."""

    name = "windows"
    proxy_over_tcp = True  # the firewall lets the sandbox account reach this loopback port alone

    def __init__(self, mode: Backend = "elevated", state_file: str | None = None) -> None:
        self.mode: Backend = mode
        self.state_file = state_file or default_state_file()

    def describe(self) -> str:
        return (
            f"windows ({self.mode}: ACLs, capability SIDs, write-restricted token) "
            "(experimental: not yet verified on Windows by this project)"
        )

    def render(self, plan: Plan, proxy_ports: tuple[int, ...] = ()) -> WindowsPlan:
        return render(
            plan, backend=self.mode, state=SidStore(self.state_file), fs=HostFs(), proxy_ports=proxy_ports
        )

    def check(self, plan: Plan) -> None:
        if sys.platform != "win32":  # before anything else: nothing of it may run elsewhere
            raise SandboxUnavailable(f"the Windows backend runs on Windows only (this is {sys.platform})")
        ports = (ProxyEndpoint.PORT,) if plan.network == "proxy" else ()  # launch() has the real one
        refusals = self.render(with_private_tmp(plan), ports).refusals
        if refusals:
            raise UnsupportedPolicy("; ".join(refusals))

    def launch(
        self, plan: Plan, argv: list[str], endpoint: ProxyEndpoint | None = None, *, tty: bool = False
    ) -> LaunchSpec:
        self.check(plan)
        ports: tuple[int, ...] = ()
        if plan.network == "proxy":
            if endpoint is None or endpoint.tcp_port is None:
                raise UnsupportedPolicy("network = proxy, but no proxy listens on a loopback port for it")
            ports = (endpoint.tcp_port,)
        private = tempfile.mkdtemp(prefix="stockade-win-", dir=os.path.dirname(self.state_file) or None)
        remove_after = [private]
        scratch = next((r.path for r in plan.rules if r.kind == "scratch"), None)
        if scratch is not None:
            remove_after.append(tempfile.mkdtemp(prefix="stockade-tmp-", dir=os.path.dirname(scratch)))
            plan = with_private_tmp(plan, remove_after[-1])
        windows_plan = self.render(plan, ports)
        plan_file = os.path.join(private, "plan.json")
        with open(plan_file, "w", encoding="utf-8") as fh:
            json.dump(windows_plan.to_json(), fh)
        env = dict(plan.env) | (endpoint.environment(None) if endpoint is not None and ports else {})
        count = int(env.get("GIT_CONFIG_COUNT", "0") or 0)
        for root in windows_plan.safe_directory:  # through the environment, never a file
            env[f"GIT_CONFIG_KEY_{count}"], env[f"GIT_CONFIG_VALUE_{count}"] = "safe.directory", root
            count += 1
        if count:
            env["GIT_CONFIG_COUNT"] = str(count)
        helper = [sys.executable, "-m", "stockade.backends.windows.apply"]
        helper += [
            "--plan",
            plan_file,
            "--state",
            self.state_file,
            "--started",
            os.path.join(private, STARTED),
        ]
        return LaunchSpec(
            argv=[*helper, "--", *argv], env=env, cwd=plan.cwd, supervisor=True, remove_after=remove_after
        )

    def finish(self, spec: LaunchSpec, returncode: int) -> int | None:
        """The command's status once it started; the plan file and the private tmp go either way.
        The applier's NOT_STARTED (it printed why) means the sandbox could not be set up."""
        started = bool(spec.remove_after) and os.path.exists(os.path.join(spec.remove_after[0], STARTED))
        for path in spec.remove_after:
            shutil.rmtree(path, ignore_errors=True)
        if started:
            return returncode
        if returncode == NOT_STARTED:
            raise SandboxUnavailable("the Windows sandbox could not be set up (the reason is above)")
        return None

    def kill(self, spec: LaunchSpec, pid: int) -> None:
        """Ending the helper closes its job object, which ends every process the command started."""
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            os.kill(pid, signal.SIGTERM)

    def cleanup(self, spec: LaunchSpec, pid: int) -> None:
        """Nothing is left: the job object died with the helper (JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE).
        The private directories go in finish(), after it has read the helper's marker."""
