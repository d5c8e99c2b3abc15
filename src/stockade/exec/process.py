"""One-shot processes: the single place where a sandboxed command is spawned.

Every process inside ends with the sandbox: bwrap's own pid namespace dies with its init, and
`--die-with-parent` kills that init when stockade (or the thread that spawned it) goes away.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from ..backends import Backend, select_backend
from ..errors import SandboxUnavailable
from ..placeholders import Placeholders
from ..plan import Context, Plan, materialize
from ..policy.load import Overrides, load_profile

if TYPE_CHECKING:  # the proxy is imported only when a command uses it
    from ..backends.base import LaunchSpec
    from ..net.proxy import Event
    from .proxy import RunningProxy

File = int | IO[Any] | None


@dataclass(frozen=True)
class Result:
    returncode: int  # a signal death is 128+N, as a shell reports it
    stdout: Any
    stderr: Any
    timed_out: bool
    plan: Plan


def prepare(
    *,
    cwd: str | None = None,
    profile: str | None = None,
    roots: Sequence[str] = (),
    writable: Sequence[str] = (),
    read: Sequence[str] = (),
    deny: Sequence[str] = (),
    network: str | None = None,
    env: Sequence[str] = (),
    config: str | None = None,
    host_env: Mapping[str, str] | None = None,
    backend: str | None = None,
    allow_domains: Sequence[str] = (),
    deny_domains: Sequence[str] = (),
) -> Plan:
    """Parse and materialize: config files + options -> Profile -> Plan."""
    ctx = Context.current(cwd, roots, host_env)
    overrides = Overrides(
        tuple(writable),
        tuple(read),
        tuple(deny),
        network,
        tuple(env),
        backend,
        tuple(allow_domains),
        tuple(deny_domains),
    )
    prof = load_profile(
        profile,
        roots=list(ctx.workspace_roots),
        home=ctx.home,
        cwd=ctx.cwd,
        config=config,
        overrides=overrides,
    )
    return materialize(prof, ctx)


class Sandboxed:
    """A running sandboxed command. Use as a context manager so everything is cleaned up."""

    def __init__(
        self,
        plan: Plan,
        argv: Sequence[str],
        *,
        stdin: File = None,
        stdout: File = None,
        stderr: File = None,
        backend: Backend | None = None,
        network_log: Callable[[Event], None] | None = None,
        tty: bool = False,
    ) -> None:
        """`tty`: stdin is a PTY slave of this command's own (a session), to be its terminal."""
        if not argv:
            raise ValueError("no command given")
        self.plan = plan
        self.timed_out = False
        self._placeholders = Placeholders(plan.placeholders)
        self._proxy: RunningProxy | None = None
        self.spec: LaunchSpec | None = None
        if plan.unconfined:
            self.backend = None
            self.proc = subprocess.Popen(
                list(argv), cwd=plan.cwd, env=plan.env, stdin=stdin, stdout=stdout, stderr=stderr
            )
            return
        self.backend = backend or select_backend(plan)
        self.backend.check(plan)
        self._placeholders.__enter__()
        try:
            endpoint = None
            if plan.network == "proxy":
                from .proxy import start_proxy

                self._proxy = start_proxy(plan, network_log)
                endpoint = self._proxy.endpoint
            self.spec = self.backend.launch(plan, list(argv), endpoint, tty=tty)
            try:
                self.proc = subprocess.Popen(
                    self.spec.argv,
                    env=self.spec.env,
                    cwd=self.spec.cwd,
                    pass_fds=self.spec.pass_fds,
                    stdin=stdin,
                    stdout=stdout,
                    stderr=stderr,
                    preexec_fn=self.spec.preexec,  # None (fast spawn) unless no launcher exists
                )
            finally:
                self.spec.after_spawn()
        except BaseException:
            if self.spec is not None and self.spec.cgroup is not None:
                self.spec.cgroup.remove()
            self._stop_proxy()
            self._placeholders.__exit__(None, None, None)
            raise

    def _stop_proxy(self) -> None:
        if self._proxy is not None:
            self._proxy.close()
            self._proxy = None

    def kill(self) -> None:
        """End the whole tree now, the way the backend can (a pid namespace, or a session)."""
        if self.backend is None:
            if self.proc.poll() is None:
                self.proc.kill()
            return
        if self.proc.returncode is None and self.spec is not None:
            self.backend.kill(self.spec, self.proc.pid)

    def finish(self) -> int:
        """Wait, tidy up, and return the command's exit status (128+N for a signal)."""
        rc = self.proc.wait()
        try:
            if self.backend is None or self.spec is None:
                return 128 - rc if rc < 0 else rc
            self.backend.cleanup(self.spec, self.proc.pid)  # what the command left running in the background
            code = self.backend.finish(self.spec, rc)
        finally:
            if self.spec is not None and self.spec.cgroup is not None:
                self.spec.cgroup.remove()
            self._stop_proxy()  # after the command: it ends every tunnel still open
            self._placeholders.__exit__(None, None, None)
        if code is not None:
            return code
        if self.timed_out or rc < 0:
            return 128 - rc if rc < 0 else rc
        # The sandbox never started the command: a host that cannot sandbox, or a command
        # that could not be executed. Tell them apart by asking the doctor.
        from ..doctor import diagnose, explain_launch_failure

        if not diagnose().can_sandbox:
            raise SandboxUnavailable(explain_launch_failure(""))
        return 127

    def __enter__(self) -> Sandboxed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self.finish()


def run(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    profile: str | None = None,
    roots: Sequence[str | os.PathLike[str]] = (),
    writable: Sequence[str | os.PathLike[str]] = (),
    read: Sequence[str | os.PathLike[str]] = (),
    deny: Sequence[str] = (),
    network: str | None = None,
    env: Sequence[str] = (),
    config: str | None = None,
    timeout: float | None = None,
    input: bytes | str | None = None,
    capture_output: bool = True,
    text: bool = True,
    stdin: File = None,
    stdout: File = None,
    stderr: File = None,
    host_env: Mapping[str, str] | None = None,
    backend: str | None = None,
    allow_domains: Sequence[str] = (),
    deny_domains: Sequence[str] = (),
    network_log: Callable[[Event], None] | None = None,
) -> Result:
    """Run `argv` in the sandbox and wait for it, like subprocess.run (output captured by default)."""
    plan = prepare(
        cwd=os.fspath(cwd) if cwd is not None else None,
        profile=profile,
        roots=[os.fspath(r) for r in roots],
        writable=[os.fspath(w) for w in writable],
        read=[os.fspath(r) for r in read],
        deny=deny,
        network=network,
        env=env,
        config=config,
        host_env=host_env,
        backend=backend,
        allow_domains=allow_domains,
        deny_domains=deny_domains,
    )
    if capture_output:
        stdout = stderr = subprocess.PIPE
    if input is not None:
        stdin = subprocess.PIPE
        if text and isinstance(input, str):
            input = input.encode()
    elif stdin is None:
        stdin = subprocess.DEVNULL
    sandboxed = Sandboxed(plan, argv, stdin=stdin, stdout=stdout, stderr=stderr, network_log=network_log)
    try:
        out, err = sandboxed.proc.communicate(input, timeout=timeout)  # type: ignore[arg-type]
    except subprocess.TimeoutExpired:
        sandboxed.timed_out = True
        sandboxed.kill()
        out, err = sandboxed.proc.communicate()
    except BaseException:
        sandboxed.kill()
        sandboxed.finish()
        raise
    code = sandboxed.finish()
    if text:
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        err = err.decode(errors="replace") if isinstance(err, bytes) else err
    return Result(code, out, err, sandboxed.timed_out, plan)
