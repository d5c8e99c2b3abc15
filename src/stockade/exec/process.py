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
from ..errors import ConfigError, SandboxUnavailable
from ..placeholders import Placeholders
from ..plan import Context, Plan, materialize, nearest_access
from ..policy.load import Overrides, load_profile
from ..telemetry.recorder import NOOP_SPAN
from .denials import MAX_KEPT, Denial, from_event, read_reports

if TYPE_CHECKING:  # the proxy is imported only when a command uses it
    from ..backends.base import LaunchSpec
    from ..net.proxy import Event
    from ..telemetry import Recorder, Span
    from ..telemetry.recorder import NoopSpan
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
        recorder: Recorder | None = None,
        kind: str = "command",
        parent_env: Mapping[str, str] | None = None,
    ) -> None:
        """`tty`: stdin is a PTY slave of this command's own (a session), to be its terminal.
        `recorder` traces and audits it (a span of `kind`, parent from `parent_env`'s TRACEPARENT
        unless the caller has a current span)."""
        if not argv:
            raise ValueError("no command given")
        self.span: Span | NoopSpan = NOOP_SPAN
        problem: BaseException | None = None
        try:
            if not plan.unconfined:
                backend = backend or select_backend(plan)
        except BaseException as exc:
            problem = exc
        if recorder is not None and recorder.enabled:  # with the backend that runs it, or the reason
            self.span = recorder.start(kind, _facts(plan, argv, backend), parent_env)  # type: ignore[arg-type]
        try:
            if problem is not None:
                raise problem
            self._start(plan, argv, stdin, stdout, stderr, backend, network_log, tty)
        except BaseException as exc:
            self.span.end(error=f"{type(exc).__name__}: {exc}")
            raise

    def _start(
        self,
        plan: Plan,
        argv: Sequence[str],
        stdin: File,
        stdout: File,
        stderr: File,
        backend: Backend | None,
        network_log: Callable[[Event], None] | None,
        tty: bool,
    ) -> None:
        self.plan = plan
        self.timed_out = False
        self.denials: list[Denial] = []  # what the sandbox refused and by which rule, where it can tell
        self._placeholders = Placeholders(plan.placeholders)
        self._proxy: RunningProxy | None = None
        self.spec: LaunchSpec | None = None
        if plan.unconfined:
            self.backend = None
            self.proc = subprocess.Popen(
                list(argv),
                cwd=plan.cwd,
                env={**plan.env, **self.span.child_env()},
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
            )
            return
        self.backend = backend or select_backend(plan)
        self.backend.check(plan)
        self._placeholders.__enter__()
        try:
            endpoint = None
            if plan.network == "proxy":
                from .proxy import start_proxy

                tcp = getattr(self.backend, "proxy_over_tcp", False)  # no network namespace (Seatbelt)
                self._proxy = start_proxy(plan, self._on_network(network_log), tcp=tcp)
                endpoint = self._proxy.endpoint
            self.spec = self.backend.launch(plan, list(argv), endpoint, tty=tty)
            self.spec.env.update(self.span.child_env())  # TRACEPARENT: tools inside continue the trace
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
            if self.spec is not None and self.spec.report_fd is not None:
                os.close(self.spec.report_fd)
            self._stop_proxy()
            self._placeholders.__exit__(None, None, None)
            raise

    def _on_network(self, log: Callable[[Event], None] | None) -> Callable[[Event], None]:
        def on_event(event: Event) -> None:
            if not event.allowed and len(self.denials) < MAX_KEPT:
                self.denials.append(from_event(event.host, event.port, event.rule))
            if log is not None:
                log(event)

        return on_event

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
        try:
            code = self._finish()
        except BaseException as exc:
            self.span.end(error=f"{type(exc).__name__}: {exc}")
            raise
        for denial in self.denials:
            self.span.event("stockade.denied", {"what": denial.what, "rule": denial.rule})
        rc = self.proc.returncode
        self.span.end(exit_code=code, signal=-rc if rc < 0 else None, timed_out=self.timed_out)
        return code

    def _finish(self) -> int:
        rc = self.proc.wait()
        try:
            if self.backend is None or self.spec is None:
                return 128 - rc if rc < 0 else rc
            self.backend.cleanup(self.spec, self.proc.pid)  # what the command left running in the background
            code = self.backend.finish(self.spec, rc)
        finally:
            if self.spec is not None and self.spec.report_fd is not None:
                self.denials += read_reports(self.spec.report_fd, self.plan)
                self.spec.report_fd = None
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


def _facts(plan: Plan, argv: Sequence[str], backend: Backend | None) -> dict[str, object]:
    from ..telemetry import policy_hash

    name = "none" if plan.unconfined else (backend.name if backend else plan.backend)
    return {
        "profile": plan.profile,
        "backend": name,
        "network": plan.network,
        "roots": len(plan.roots),
        "policy_hash": policy_hash(plan),
        "argv": list(argv),
    }


def recorder_for(
    plan: Plan, config: str | None = None, audit: str | None = None, environ: Mapping[str, str] | None = None
) -> Recorder:
    """The Recorder the config files (and `--audit`) ask for, shared per configuration: off
    costs nothing. An audit file the command could rewrite is refused."""
    from ..telemetry import Recorder, load

    env = os.environ if environ is None else environ
    home = env.get("HOME") or os.path.expanduser("~")
    tel, aud = load(roots=plan.roots, home=home, config=config, audit_file=audit, environ=env)
    if aud is not None and not plan.unconfined:
        path = os.path.realpath(aud.path)
        if nearest_access({r.path: r.access for r in plan.rules}, path) == "write":
            raise ConfigError(
                f"the audit file {aud.path} is writable inside the sandbox under profile "
                f"{plan.profile!r}, so a command could rewrite the trail; put it outside the workspace",
                key="--audit" if audit else "audit.path",
            )
    return Recorder.shared(tel, aud)


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
    recorder: Recorder | None = None,
) -> Result:
    """Run `argv` in the sandbox and wait for it, like subprocess.run (output captured by default).

    Traced and audited as the config files' `[telemetry]` and `[audit]` say, unless `recorder`
    is given; the caller's current OpenTelemetry span is the parent."""
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
    if recorder is None:
        recorder = recorder_for(plan, config, environ=host_env)
    sandboxed = Sandboxed(
        plan,
        argv,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        network_log=network_log,
        recorder=recorder,
        parent_env=host_env if host_env is not None else os.environ,
    )
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
