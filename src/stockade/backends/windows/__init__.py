"""Windows (experimental): a Plan rendered as ACLs, capability SIDs, a write-restricted token and
firewall rules, as data (`render`), reconciled with what is on disk (`reconcile`) and applied
through the Win32 API on Windows only (`apply`, imported lazily: it needs `ctypes.windll`).

Nothing here has run on Windows in this project yet; `scripts/smoke-windows.ps1` is what a
contributor runs there.
"""

from __future__ import annotations

from .backend import WindowsBackend, with_private_tmp
from .model import Ace, CreateFirst, FirewallRule, Inherit, Right, WindowsPlan, mask
from .paths import FsView, HostFs, path_key
from .reconcile import reconcile
from .render import render
from .sids import SidStore, derive_sid

__all__ = [
    "Ace",
    "CreateFirst",
    "FirewallRule",
    "FsView",
    "HostFs",
    "Inherit",
    "Right",
    "SidStore",
    "WindowsBackend",
    "WindowsPlan",
    "derive_sid",
    "mask",
    "path_key",
    "reconcile",
    "render",
    "with_private_tmp",
]
