"""The asyncio face of sessions and one-shot runs: the same objects, awaited off the event loop.

Sessions already run on threads (a reader per stream, a waiter per process), so awaiting them
means handing the blocking calls (spawn, wait for output) to a worker thread; the event loop
never blocks and nothing is spawned any other way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from .process import Result, run
from .session import Output, Session, SessionInfo, SessionManager


async def arun(argv: Sequence[str], **kwargs: Any) -> Result:
    """`stockade.run` for asyncio code (same arguments)."""
    return await asyncio.to_thread(run, argv, **kwargs)


class AsyncSession:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.id = session.id

    @property
    def running(self) -> bool:
        return self.session.running

    @property
    def exit_code(self) -> int | None:
        return self.session.exit_code

    async def write(self, data: str | bytes) -> None:
        await asyncio.to_thread(self.session.write, data)

    async def read(self, yield_ms: float = 1000, limit: int | None = None) -> Output:
        if limit is None:
            return await asyncio.to_thread(self.session.read, yield_ms)
        return await asyncio.to_thread(self.session.read, yield_ms, limit)

    def resize(self, rows: int, cols: int) -> None:
        self.session.resize(rows, cols)

    def interrupt(self) -> None:
        self.session.interrupt()

    async def terminate(self) -> None:
        await asyncio.to_thread(self.session.terminate)


class AsyncSessionManager:
    """A SessionManager (same arguments, same fixed policy) for asyncio code."""

    def __init__(self, **kwargs: Any) -> None:
        self.manager = SessionManager(**kwargs)

    async def start(
        self,
        command: Sequence[str] | str,
        *,
        cwd: str | None = None,
        tty: bool = False,
        rows: int = 24,
        cols: int = 80,
        env: Mapping[str, str] | None = None,
    ) -> AsyncSession:
        session = await asyncio.to_thread(
            self.manager.start, command, cwd=cwd, tty=tty, rows=rows, cols=cols, env=env
        )
        return AsyncSession(session)

    def get(self, sid: str) -> AsyncSession:
        return AsyncSession(self.manager.get(sid))

    def list(self) -> list[SessionInfo]:
        return self.manager.list()

    async def close(self, sid: str) -> None:
        await asyncio.to_thread(self.manager.close, sid)

    async def close_all(self) -> None:
        await asyncio.to_thread(self.manager.close_all)

    async def __aenter__(self) -> AsyncSessionManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close_all()
