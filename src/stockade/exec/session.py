"""Long-lived sessions: a sandboxed command that an agent starts, writes to and reads from later.

Every session is spawned through the same path as `stockade run` (Profile -> Plan -> Backend,
`Sandboxed`), on pipes (stdout and stderr apart) or on a PTY of its own (merged; resize and
Ctrl-C work). Exit is taken from the process, never from EOF: the sandbox ends every process it
started when the command ends, so a background grandchild holding the output pipe cannot keep
a finished session "running". Output is bounded: unread bytes beyond the cap are dropped from
the middle (first half and latest half kept) and the reader sees a marker saying how many.
"""

from __future__ import annotations

import atexit
import contextvars
import fcntl
import functools
import itertools
import os
import struct
import subprocess
import termios
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import StockadeError

if TYPE_CHECKING:
    from ..telemetry import Recorder
from .process import Sandboxed, prepare, recorder_for

BUFFER_CAP = 1 << 20  # unread bytes kept per stream
READ_CAP = 64 * 1024  # returned per read
MAX_YIELD_MS = 30_000


def marker(dropped: int) -> bytes:
    return f"\n[... {dropped} bytes of output dropped ...]\n".encode()


class OutputBuffer:
    """Unread output, at most `cap` bytes: the oldest half and the newest half are kept."""

    def __init__(self, cap: int = BUFFER_CAP) -> None:
        self.half = cap // 2
        self.head, self.tail = bytearray(), bytearray()
        self.dropped = 0

    def append(self, data: bytes) -> None:
        room = self.half - len(self.head)
        if room > 0 and not self.tail and not self.dropped:
            self.head += data[:room]
            data = data[room:]
        self.tail += data
        if len(self.tail) > self.half:
            extra = len(self.tail) - self.half
            self.dropped += extra
            del self.tail[:extra]

    def __len__(self) -> int:
        return len(self.head) + len(self.tail)

    def take(self, limit: int = READ_CAP) -> bytes:
        """Everything unread (with a marker where bytes were dropped), at most about `limit`."""
        data, dropped = bytes(self.head), self.dropped
        if dropped:
            data += marker(dropped)
        data += bytes(self.tail)
        self.head.clear()
        self.tail.clear()
        self.dropped = 0
        if len(data) > limit:  # the same rule per call: the start and the latest, marked
            keep = limit // 2
            data = data[:keep] + marker(len(data) - 2 * keep) + data[-keep:]
        return data


@dataclass(frozen=True)
class Output:
    session: str
    stdout: str  # on a PTY: everything the terminal showed
    stderr: str  # empty on a PTY
    running: bool
    exit_code: int | None  # 128+N for a death by signal N


class Session:
    def __init__(
        self, sid: str, argv: list[str], sandboxed: Sandboxed, tty: bool, master: int | None
    ) -> None:
        self.id, self.argv, self.tty = sid, argv, tty
        self.sandboxed = sandboxed
        self.started = self.last_used = time.monotonic()
        self.exit_code: int | None = None
        self._master = master
        self._cond = threading.Condition()
        self._out, self._err = OutputBuffer(), OutputBuffer()
        proc = sandboxed.proc
        sources = [(master, self._out)] if master is not None else []
        if master is None:
            assert proc.stdout is not None and proc.stderr is not None
            sources = [(proc.stdout.fileno(), self._out), (proc.stderr.fileno(), self._err)]
        self._readers = [threading.Thread(target=self._read, args=s, daemon=True) for s in sources]
        for reader in self._readers:
            reader.start()
        self._waiter = threading.Thread(target=self._wait, daemon=True)
        self._waiter.start()

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def _read(self, fd: int, buffer: OutputBuffer) -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the PTY's last slave closed
                data = b""
            if not data:
                return
            with self._cond:
                buffer.append(data)
                self._cond.notify_all()

    def _wait(self) -> None:
        code = self.sandboxed.finish()  # the whole sandbox is gone when this returns
        for reader in self._readers:
            reader.join(timeout=2)  # the last output, already written, still counts
        with self._cond:
            self.exit_code = code
            self._cond.notify_all()

    def write(self, data: str | bytes) -> None:
        if not self.running:
            raise StockadeError(f"session {self.id} has exited (status {self.exit_code}): nothing reads")
        raw = data.encode() if isinstance(data, str) else data
        self.sandboxed.span.event("stockade.write_stdin", {"bytes": len(raw)})
        stdin = self.sandboxed.proc.stdin
        fd = self._master if self._master is not None else stdin.fileno()  # type: ignore[union-attr]
        self.last_used = time.monotonic()
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view) :]

    def read(self, yield_ms: float = 1000, limit: int = READ_CAP) -> Output:
        """What came since the last read, waiting up to `yield_ms` (clamped to 0..30 s) unless
        the command exits first."""
        deadline = time.monotonic() + min(max(yield_ms, 0), MAX_YIELD_MS) / 1000
        with self._cond:
            while self.running and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            self.last_used = time.monotonic()
            out, err = self._out.take(limit), self._err.take(limit)
            code = self.exit_code
        return Output(self.id, out.decode(errors="replace"), err.decode(errors="replace"), code is None, code)

    def resize(self, rows: int, cols: int) -> None:
        if self._master is None:
            raise StockadeError(f"session {self.id} has no terminal to resize (start it with tty=True)")
        fcntl.ioctl(self._master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the terminal's foreground process group (the shell survives)."""
        if self._master is None:
            raise StockadeError(f"session {self.id} has no terminal: use terminate() instead")
        self.write(b"\x03")

    def terminate(self) -> None:
        """End the whole tree now."""
        self.sandboxed.kill()
        self._waiter.join(timeout=10)

    def close(self) -> None:
        self.terminate()
        for reader in self._readers:
            reader.join(timeout=5)
        if self._master is not None:
            os.close(self._master)
            self._master = None
        for stream in (self.sandboxed.proc.stdin, self.sandboxed.proc.stdout, self.sandboxed.proc.stderr):
            if stream is not None:
                stream.close()


@dataclass(frozen=True)
class SessionInfo:
    id: str
    argv: list[str]
    tty: bool
    running: bool
    exit_code: int | None
    seconds: float
    idle_seconds: float


class SessionManager:
    """Sessions under one fixed policy: profile, roots and config are set here, never per call.

    Limits: at most `max_sessions` at once (starting another closes the least recently used
    finished or idle one, never one of the `keep_newest` newest), an idle timeout and a
    wall-clock limit per session. Every session ends when the manager closes or Python exits.
    """

    def __init__(
        self,
        *,
        cwd: str | None = None,
        profile: str | None = None,
        roots: Sequence[str] = (),
        config: str | None = None,
        backend: str | None = None,
        max_sessions: int = 16,
        keep_newest: int = 4,
        idle_timeout: float = 1800,
        wall_limit: float | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.cwd, self.profile, self.roots = cwd, profile, tuple(roots)
        self.config, self.backend = config, backend
        self.max_sessions, self.keep_newest = max_sessions, keep_newest
        self.idle_timeout, self.wall_limit = idle_timeout, wall_limit
        self.recorder = recorder  # None: what the config files' [telemetry] and [audit] say
        self.sessions: dict[str, Session] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        _live.add(self)

    def start(
        self,
        command: Sequence[str] | str,
        *,
        cwd: str | None = None,
        tty: bool = False,
        rows: int = 24,
        cols: int = 80,
        env: Mapping[str, str] | None = None,
    ) -> Session:
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
        if not argv:
            raise StockadeError("no command given")
        plan = prepare(
            cwd=cwd or self.cwd,
            profile=self.profile,
            roots=self.roots,
            config=self.config,
            backend=self.backend,
            env=[f"{k}={v}" for k, v in (env or {}).items()],
        )
        self._enforce_limits(starting=True)
        master = slave = None
        if tty:
            master, slave = os.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            streams: dict[str, object] = {"stdin": slave, "stdout": slave, "stderr": slave}
        else:
            streams = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        try:
            if self.recorder is None:
                self.recorder = recorder_for(plan, self.config)
            spawn = functools.partial(
                Sandboxed, plan, argv, tty=tty, recorder=self.recorder, kind="session", **streams
            )  # type: ignore[arg-type]
            # The caller's context rides along: its current span is the session span's parent.
            sandboxed = _spawner().submit(contextvars.copy_context().run, spawn).result()
        except BaseException:
            if master is not None:
                os.close(master)
            raise
        finally:
            if slave is not None:
                os.close(slave)  # the command holds it now: EOF/EIO come when it is gone
        with self._lock:
            sid = str(next(self._ids))
            session = self.sessions[sid] = Session(sid, argv, sandboxed, tty, master)
        return session

    def get(self, sid: str) -> Session:
        self._enforce_limits()
        try:
            return self.sessions[sid]
        except KeyError:
            known = ", ".join(self.sessions) or "none"
            raise StockadeError(f"no session {sid!r} (open sessions: {known})") from None

    def list(self) -> list[SessionInfo]:
        self._enforce_limits()
        now = time.monotonic()
        return [
            SessionInfo(s.id, s.argv, s.tty, s.running, s.exit_code, now - s.started, now - s.last_used)
            for s in list(self.sessions.values())
        ]

    def close(self, sid: str) -> None:
        self.get(sid)  # a clear error for an unknown id
        self._close(sid)

    def _close(self, sid: str) -> None:
        with self._lock:
            session = self.sessions.pop(sid, None)
        if session is not None:
            session.close()

    def close_all(self) -> None:
        with self._lock:
            sessions, self.sessions = list(self.sessions.values()), {}
        for session in sessions:
            session.close()

    def _enforce_limits(self, starting: bool = False) -> None:
        now = time.monotonic()
        for session in list(self.sessions.values()):
            idle = now - session.last_used > self.idle_timeout
            too_long = self.wall_limit is not None and now - session.started > self.wall_limit
            if too_long and session.running:
                session.terminate()  # kept, so its output and status can still be read
            elif idle:
                self._close(session.id)
        if starting and len(self.sessions) >= self.max_sessions:
            by_age = sorted(self.sessions.values(), key=lambda s: s.started)
            candidates = by_age[: max(len(by_age) - self.keep_newest, 0)]
            if not candidates:
                raise StockadeError(f"{len(self.sessions)} sessions are open, all recent: close one first")
            victim = min(candidates, key=lambda s: (s.running, s.last_used))  # finished first, then LRU
            self._close(victim.id)


_live: weakref.WeakSet[SessionManager] = weakref.WeakSet()
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _spawner() -> ThreadPoolExecutor:
    """The one thread that spawns every session. The sandbox ends when the thread that spawned
    it ends (the parent-death signal is per thread), and callers' threads come and go: asyncio's
    workers, the MCP SDK's (reaped after 10 s idle). This one lives as long as the process."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stockade-spawner")
        return _pool


@atexit.register
def _close_everything() -> None:
    for manager in list(_live):
        manager.close_all()
