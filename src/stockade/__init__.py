"""stockade: run the shell commands of AI coding agents in an OS sandbox, under a policy as data.

import stockade
result = stockade.run(["pytest", "-q"], cwd="/path/repo", profile="workspace")
result.returncode, result.stdout, result.stderr
"""

from __future__ import annotations

from .errors import ConfigError, SandboxUnavailable, StockadeError, UnsupportedPolicy
from .exec import Result, prepare, run
from .plan import Context, Plan, materialize

__all__ = [
    "ConfigError",
    "Context",
    "Plan",
    "Result",
    "SandboxUnavailable",
    "StockadeError",
    "UnsupportedPolicy",
    "explain",
    "materialize",
    "run",
]

explain = prepare  # the materialized Plan for these options, without running anything
