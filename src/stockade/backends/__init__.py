"""Backends turn a Plan into an enforced process; one module per mechanism."""

from __future__ import annotations

import sys

from ..errors import SandboxUnavailable
from ..plan import Plan
from .base import Backend, LaunchSpec

_cached: Backend | None = None


def select_backend(plan: Plan) -> Backend:
    """The backend for this host. Only bubblewrap exists so far (Landlock comes with issue 4)."""
    global _cached
    if _cached is None:
        if not sys.platform.startswith("linux"):
            raise SandboxUnavailable(
                f"stockade cannot sandbox on {sys.platform} yet: only the Linux bubblewrap "
                "backend exists; nothing was run"
            )
        from .bwrap import BwrapBackend

        _cached = BwrapBackend()
    return _cached


__all__ = ["Backend", "LaunchSpec", "select_backend"]
