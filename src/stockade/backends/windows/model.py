"""The Windows enforcement plan as plain data: what `render()` produces and the applier executes.

Keeping it data (not Win32 calls) is what lets Linux test the translation exactly: every ACE,
SID and firewall rule a Plan becomes can be asserted on, printed by `explain`, serialized to
JSON for the Windows-side helper, and compared with what is on disk (`reconcile`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal

from .paths import path_key

AceKind = Literal["allow", "deny"]
CAPABILITY_PREFIX = "S-1-15-3-"  # the SIDs stockade derives (sids.py): the only ones it manages
RESTRICTED_CODE = "S-1-5-12"  # granted by objects meant for restricted tokens (the NUL device)
Backend = Literal["elevated", "restricted"]


class Right(enum.Flag):
    """Rights by what tools need, not by Win32 bit; `mask()` gives the bits for allow or deny."""

    READ = enum.auto()
    WRITE = enum.auto()
    EXECUTE = enum.auto()
    DELETE = enum.auto()
    DELETE_CHILD = enum.auto()


ALL_RIGHTS = Right.READ | Right.WRITE | Right.EXECUTE | Right.DELETE | Right.DELETE_CHILD
WRITE_RIGHTS = Right.WRITE | Right.DELETE | Right.DELETE_CHILD
READ_RIGHTS = Right.READ | Right.EXECUTE

# Win32 file access bits (winnt.h).
FILE_READ_DATA, FILE_WRITE_DATA, FILE_APPEND_DATA, FILE_READ_EA = 0x1, 0x2, 0x4, 0x8
FILE_WRITE_EA, FILE_EXECUTE, FILE_DELETE_CHILD, FILE_READ_ATTRIBUTES = 0x10, 0x20, 0x40, 0x80
FILE_WRITE_ATTRIBUTES, DELETE, READ_CONTROL, SYNCHRONIZE = 0x100, 0x10000, 0x20000, 0x100000

# Deny masks leave out SYNCHRONIZE, READ_CONTROL and FILE_READ_ATTRIBUTES: denying those would
# break opening a file for anything at all (and stat), not just the access meant.
_DENY_BITS = {
    Right.READ: FILE_READ_DATA | FILE_READ_EA,
    Right.WRITE: FILE_WRITE_DATA | FILE_APPEND_DATA | FILE_WRITE_EA | FILE_WRITE_ATTRIBUTES,
    Right.EXECUTE: FILE_EXECUTE,
    Right.DELETE: DELETE,
    Right.DELETE_CHILD: FILE_DELETE_CHILD,
}
_ALLOW_EXTRA = {
    Right.READ: FILE_READ_ATTRIBUTES | READ_CONTROL | SYNCHRONIZE,
    Right.WRITE: SYNCHRONIZE,
    Right.EXECUTE: FILE_READ_ATTRIBUTES | SYNCHRONIZE,
    Right.DELETE: 0,
    Right.DELETE_CHILD: 0,
}


class Inherit(enum.Flag):
    """ACE inheritance flags, with their Win32 values (OBJECT_/CONTAINER_INHERIT_ACE, INHERIT_ONLY)."""

    NONE = 0
    OI = 0x1
    CI = 0x2
    IO = 0x8


SUBTREE = Inherit.OI | Inherit.CI  # the object and everything below it


def mask(rights: Right, kind: AceKind) -> int:
    """The access mask an ACE of these rights carries."""
    bits = 0
    for right in Right:
        if right in rights:
            bits |= _DENY_BITS[right] | (_ALLOW_EXTRA[right] if kind == "allow" else 0)
    return bits


def rights_of(bits: int, kind: AceKind) -> Right | None:
    """The rights an on-disk mask stands for, or None if it is not one `mask()` would write."""
    found = Right(0)
    for right in Right:
        if bits & _DENY_BITS[right] == _DENY_BITS[right]:
            found |= right
    return found if found and mask(found, kind) == bits else None


def _names(flag: enum.Flag) -> list[str]:
    return [m.name for m in type(flag) if m.value and m in flag and m.name]  # type: ignore[misc]


@dataclass(frozen=True)
class Ace:
    """One explicit ACE stockade owns: `principal` is a SID string (or `account:NAME` until the
    applier looks the sandbox account up)."""

    principal: str
    path: str
    kind: AceKind
    rights: Right
    inherit: Inherit = SUBTREE
    reason: str = field(default="", compare=False)

    def identity(self) -> tuple[str, str, str, int, int]:
        """What makes two ACEs the same on disk (paths compare as Windows does: case-folded)."""
        return (
            self.principal.upper(),
            path_key(self.path),
            self.kind,
            mask(self.rights, self.kind),
            self.inherit.value,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "principal": self.principal,
            "path": self.path,
            "kind": self.kind,
            "rights": _names(self.rights),
            "inherit": _names(self.inherit),
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ace:
        rights = Right(0)
        for name in data["rights"]:
            rights |= Right[name]
        inherit = Inherit.NONE
        for name in data["inherit"]:
            inherit |= Inherit[name]
        return cls(data["principal"], data["path"], data["kind"], rights, inherit, data.get("reason", ""))


@dataclass(frozen=True)
class FirewallRule:
    """An outbound Windows Firewall block rule scoped to one account (its SID, in the rule's
    LocalUser security descriptor). Block rules beat allow rules in Windows Firewall, so what
    stays reachable is expressed as the ranges left out, never as an allow rule."""

    name: str
    principal: str
    protocol: Literal["any", "tcp", "udp"]
    remote_addresses: tuple[str, ...]  # "any", single addresses or "a-b" ranges
    remote_ports: tuple[str, ...] = ()  # tcp/udp only: "n" or "a-b"; empty: every port
    action: Literal["block"] = "block"
    direction: Literal["out"] = "out"
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FirewallRule:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class CreateFirst:
    """A path that must exist before its ACE can be set (so it cannot be created inside)."""

    path: str
    kind: Literal["dir", "file", "commondir"]


@dataclass(frozen=True)
class WindowsPlan:
    """Everything needed to enforce one Plan on Windows. Non-empty `refusals`: do not run."""

    backend: Backend
    account: str | None  # the sandbox account (elevated), None: the caller's own account
    sids: dict[str, str] = field(hash=False)  # label -> SID, for explain
    token_sids: tuple[str, ...]  # the restricting SIDs of the command's write-restricted token
    aces: tuple[Ace, ...]
    firewall: tuple[FirewallRule, ...] = ()
    safe_directory: tuple[str, ...] = ()  # git safe.directory values, through the environment
    create_first: tuple[CreateFirst, ...] = ()
    verify_unreadable: tuple[str, ...] = ()  # no ACE may go there: check the account cannot read
    refusals: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def principals(self) -> frozenset[str]:
        """The principals this plan manages: reconciliation may only touch their ACEs (never the
        well-known SIDs a token also carries, such as restricted code)."""
        own = {sid for sid in self.token_sids if sid.startswith(CAPABILITY_PREFIX)}
        if self.account is not None:
            own.add(self.sids[f"account {self.account}"])
        return frozenset(own)

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "account": self.account,
            "sids": dict(self.sids),
            "token_sids": list(self.token_sids),
            "aces": [a.to_json() for a in self.aces],
            "firewall": [f.to_json() for f in self.firewall],
            "safe_directory": list(self.safe_directory),
            "create_first": [{"path": c.path, "kind": c.kind} for c in self.create_first],
            "verify_unreadable": list(self.verify_unreadable),
            "refusals": list(self.refusals),
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WindowsPlan:
        return cls(
            backend=data["backend"],
            account=data["account"],
            sids=dict(data["sids"]),
            token_sids=tuple(data["token_sids"]),
            aces=tuple(Ace.from_json(a) for a in data["aces"]),
            firewall=tuple(FirewallRule.from_json(f) for f in data["firewall"]),
            safe_directory=tuple(data["safe_directory"]),
            create_first=tuple(CreateFirst(c["path"], c["kind"]) for c in data["create_first"]),
            verify_unreadable=tuple(data["verify_unreadable"]),
            refusals=tuple(data["refusals"]),
            notes=tuple(data["notes"]),
        )

    def describe(self) -> str:
        """The plan as text, for `stockade explain --platform windows` (JSON: `to_json()`)."""
        label = {sid: name for name, sid in self.sids.items()}
        who = f"as {self.account}" if self.account else "as the caller"
        out = [f"windows plan ({self.backend}, {who}; experimental)"]
        out += [f"refused: {r}" for r in self.refusals]
        out.append("token (write-restricted): " + ", ".join(label.get(s, s) for s in self.token_sids))
        out += [f"  {name}: {sid}" for name, sid in self.sids.items()]
        for ace in self.aces:
            flags = "|".join(_names(ace.inherit)) or "this object only"
            rights = "|".join(_names(ace.rights))
            out.append(
                f"{ace.kind:5} {label.get(ace.principal, ace.principal)}: {rights} ({flags}) {ace.path}"
                f"  <- {ace.reason}"
            )
        for rule in self.firewall:
            ports = f" ports {','.join(rule.remote_ports)}" if rule.remote_ports else ""
            out.append(f"firewall: block {rule.protocol} to {','.join(rule.remote_addresses)}{ports}")
        out += [f"safe.directory: {d}" for d in self.safe_directory]
        out += [f"created first ({c.kind}): {c.path}" for c in self.create_first]
        out += [f"must already be unreadable (no ACE may go there): {p}" for p in self.verify_unreadable]
        out += [f"note: {n}" for n in self.notes]
        return "\n".join(out) + "\n"

    def with_account_sid(self, sid: str) -> WindowsPlan:
        """The same plan with the sandbox account's placeholder principal replaced by its SID."""
        if self.account is None:
            return self
        label = f"account {self.account}"
        old = self.sids[label]
        aces = tuple(
            Ace(sid if a.principal == old else a.principal, a.path, a.kind, a.rights, a.inherit, a.reason)
            for a in self.aces
        )
        rules = tuple(
            FirewallRule(**{**f.__dict__, "principal": sid if f.principal == old else f.principal})
            for f in self.firewall
        )
        return WindowsPlan(
            **{**self.__dict__, "sids": {**self.sids, label: sid}, "aces": aces, "firewall": rules}
        )
