"""Spawning sandboxed processes: the one spawn path every entry point shares."""

import sys
from typing import Any

from ..errors import SandboxUnavailable
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


_SESSIONS = ("Output", "Session", "SessionInfo", "SessionManager", "AsyncSession", "AsyncSessionManager")
_SESSIONS += ("arun",)  # the asyncio module is built on sessions


def _unavailable(name: str) -> Any:
    """A stand-in that refuses when used, so `hasattr` and `from stockade import *` still work."""

    def refuse(*args: object, **kwargs: object) -> Any:
        raise SandboxUnavailable(
            f"{name}: sessions and the asyncio API are not available on Windows yet (sessions are "
            "built on POSIX terminals: pty, termios, fcntl); stockade.run and `stockade run` work there"
        )

    refuse.__name__ = refuse.__qualname__ = name
    return refuse


def __getattr__(name: str) -> Any:
    """Sessions load on first use: `stockade run` never pays for termios and threads."""
    if sys.platform == "win32" and name in _SESSIONS:
        return _unavailable(name)
    if name in ("Output", "Session", "SessionInfo", "SessionManager"):
        from . import session

        return getattr(session, name)
    if name in ("AsyncSession", "AsyncSessionManager", "arun"):
        from . import aio

        return getattr(aio, name)
    raise AttributeError(name)
