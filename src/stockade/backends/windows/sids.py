"""The SIDs a Windows plan grants to: one capability SID per workspace root, one generic SID.

A workspace's SID must be the same on every run: its ACEs stay on disk between runs (setting
them again on a large tree is slow), and a later run must recognise them as its own to
reconcile them. So the SID is derived from the root's path (normalized and case-folded, as NTFS
compares names) and also written to a state file: if the derivation ever changes, the SIDs
already stamped on disk are still known. Distinct roots get distinct SIDs, which is what keeps
one workspace's command from writing into another's tree.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from typing import Any

from .model import CAPABILITY_PREFIX  # the capability authority: never a user or a group
from .paths import path_key

GENERIC_LABEL = "stockade: tmp and extra writable roots"
_CAP_SID = re.compile(r"^S-1-15-3(-\d{1,10}){8}$")
_ACCOUNT_SID = re.compile(r"^S-1-5-21(-\d{1,10}){4}$")  # a local account (machine SID + RID)


def derive_sid(label: str) -> str:
    """A capability SID from a label: eight 32-bit sub-authorities of its SHA-256."""
    digest = hashlib.sha256(label.encode("utf-8")).digest()
    subs = [int.from_bytes(digest[i : i + 4], "big") for i in range(0, 32, 4)]
    return CAPABILITY_PREFIX + "-".join(str(s) for s in subs)


def workspace_label(root: str) -> str:
    return "stockade workspace: " + path_key(root)


def default_state_file() -> str:
    """Where the SID map lives on Windows (beside stockade's other per-user state)."""
    base = os.environ.get("LOCALAPPDATA") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "stockade", "windows-sids.json")


class SidStore:
    """The `cap_sid` map (root key -> SID), the generic SID and the sandbox accounts' SIDs.

    `path` None keeps everything in memory (explain on Linux): the SIDs are the derived ones,
    the same a first run on Windows would get. Entries read from the file are checked: a
    planted entry naming Everyone or a user would otherwise receive the workspace's grants.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.cap_sid: dict[str, str] = {}
        self.generic: str | None = None
        self.accounts: dict[str, str] = {}
        self._load()

    def _load(self) -> None:
        data = self._read()
        self.cap_sid.update({k: v for k, v in data.get("cap_sid", {}).items() if _valid_cap(v)})
        generic = data.get("generic_sid")
        if self.generic is None and isinstance(generic, str) and _valid_cap(generic):
            self.generic = generic
        accounts = data.get("accounts", {})
        self.accounts.update(
            {k: v for k, v in accounts.items() if isinstance(v, str) and _ACCOUNT_SID.match(v)}
        )

    def _read(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return {}  # missing or damaged: the derived SIDs are the same anyway
        return data if isinstance(data, dict) and data.get("version") == 1 else {}

    def workspace_sid(self, root: str) -> str:
        """The root's capability SID: the stored one, else derived (and stored)."""
        key = path_key(root)
        if key not in self.cap_sid:
            self.cap_sid[key] = derive_sid(workspace_label(root))
            self.save()
        return self.cap_sid[key]

    def generic_sid(self) -> str:
        if self.generic is None:
            self.generic = derive_sid(GENERIC_LABEL)
            self.save()
        return self.generic

    def account_sid(self, name: str) -> str | None:
        return self.accounts.get(name.casefold())

    def record_account(self, name: str, sid: str) -> None:
        """Remember a sandbox account's SID once the applier has looked it up on Windows."""
        if not _ACCOUNT_SID.match(sid):
            raise ValueError(f"{sid!r} is not a local account SID")
        if self.accounts.get(name.casefold()) != sid:
            self.accounts[name.casefold()] = sid
            self.save()

    def known(self) -> frozenset[str]:
        """Every SID stockade has granted to (what a full cleanup may remove)."""
        return frozenset(
            {*self.cap_sid.values(), *self.accounts.values(), *([self.generic] if self.generic else [])}
        )

    def save(self) -> None:
        """Write atomically, merged with what another run wrote meanwhile (theirs kept for their keys)."""
        if self.path is None:
            return
        on_disk = SidStore.__new__(SidStore)
        on_disk.path, on_disk.cap_sid, on_disk.generic, on_disk.accounts = self.path, {}, None, {}
        on_disk._load()
        self.cap_sid = {**self.cap_sid, **on_disk.cap_sid}
        self.accounts = {**self.accounts, **on_disk.accounts}
        self.generic = on_disk.generic or self.generic
        data = {"version": 1, "cap_sid": self.cap_sid, "generic_sid": self.generic, "accounts": self.accounts}
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".sids.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _valid_cap(sid: object) -> bool:
    return isinstance(sid, str) and bool(_CAP_SID.match(sid))
