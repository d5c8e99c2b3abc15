"""stockade: run the shell commands of AI coding agents in an OS sandbox, under a policy as data.

import stockade
result = stockade.run(["pytest", "-q"], cwd="/path/repo", profile="workspace")
result.returncode, result.stdout, result.stderr
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError, SandboxUnavailable, StockadeError, UnsupportedPolicy
from .exec import Result, prepare, run
from .plan import Context, Plan, materialize

__all__ = [
    "AsyncSessionManager",
    "ConfigError",
    "Context",
    "Plan",
    "Result",
    "SandboxUnavailable",
    "SessionManager",
    "StockadeError",
    "UnsupportedPolicy",
    "arun",
    "explain",
    "materialize",
    "run",
]

explain = prepare  # the materialized Plan for these options, without running anything


def __getattr__(name: str) -> Any:
    """Sessions and the asyncio API load on first use."""
    if name in ("SessionManager", "AsyncSessionManager", "arun"):
        from . import exec as _exec

        return getattr(_exec, name)
    raise AttributeError(name)
