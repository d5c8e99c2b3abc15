"""Spawning sandboxed processes: the one spawn path every entry point shares."""

from typing import Any

from .process import Result, Sandboxed, prepare, run

__all__ = [
    "AsyncSession",
    "AsyncSessionManager",
    "Output",
    "Result",
    "Sandboxed",
    "Session",
    "SessionInfo",
    "SessionManager",
    "arun",
    "prepare",
    "run",
]


def __getattr__(name: str) -> Any:
    """Sessions load on first use: `stockade run` never pays for termios and threads."""
    if name in ("Output", "Session", "SessionInfo", "SessionManager"):
        from . import session

        return getattr(session, name)
    if name in ("AsyncSession", "AsyncSessionManager", "arun"):
        from . import aio

        return getattr(aio, name)
    raise AttributeError(name)
