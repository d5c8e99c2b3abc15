"""The applier (EXPERIMENTAL, Windows only): a WindowsPlan carried out through the Win32 API.

`WindowsBackend.launch()` runs it as `python -m stockade.backends.windows.apply --plan FILE
--state FILE --started FILE -- COMMAND...`. It reconciles the ACEs of the plan's principals with
what is on disk (`reconcile`), creates what must exist before its ACE, sets the firewall rules,
then runs the command under the write-restricted token in a job object (`winproc`) and exits with
its status (125 if the command never started). It imports the Windows DLLs only on Windows and
raises SandboxUnavailable anywhere else.

Nothing here has run on Windows in this project yet: `scripts/smoke-windows.ps1` is the check.
Deliberately plain: one DACL rewrite per changed path (the explicit ACEs of other principals are
kept byte for byte, in canonical order: explicit deny, then explicit allow; inherited ACEs are
recomputed by Windows), and an unusual ACL (no DACL, object or callback ACEs) is refused rather
than rewritten.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
from typing import Any

from ...errors import SandboxUnavailable, StockadeError, UnsupportedPolicy
from .backend import NOT_STARTED
from .model import Ace, Inherit, Right, WindowsPlan, mask, rights_of
from .paths import path_key
from .reconcile import desired_at, paths_touched, reconcile
from .sids import SidStore

SE_FILE_OBJECT, DACL_SECURITY_INFORMATION = 1, 0x4
PROTECTED_DACL, UNPROTECTED_DACL, SE_DACL_PROTECTED = 0x80000000, 0x20000000, 0x1000
ACL_REVISION, ACCESS_ALLOWED, ACCESS_DENIED, INHERITED_ACE, NO_PROPAGATE_INHERIT = 2, 0, 1, 0x10, 0x4

Entry = tuple[str, str, int, int, bytes]  # principal, allow|deny, ACE flags, access mask, raw ACE


class _AclHeader(ctypes.Structure):
    _fields_ = [
        ("AclRevision", ctypes.c_ubyte),
        ("Sbz1", ctypes.c_ubyte),
        ("AclSize", ctypes.c_ushort),
        ("AceCount", ctypes.c_ushort),
        ("Sbz2", ctypes.c_ushort),
    ]


class _AceHeader(ctypes.Structure):
    _fields_ = [("AceType", ctypes.c_ubyte), ("AceFlags", ctypes.c_ubyte), ("AceSize", ctypes.c_ushort)]


class Win32:
    """The DLLs, loaded only on Windows (the one place this module touches `ctypes.WinDLL`)."""

    def __init__(self) -> None:
        if sys.platform != "win32":
            raise SandboxUnavailable(
                "the Windows applier runs on Windows only; elsewhere `stockade explain --platform windows` "
                "prints the plan"
            )
        self.advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)  # type: ignore[attr-defined]
        self.kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
        self.netapi32 = ctypes.WinDLL("netapi32", use_last_error=True)  # type: ignore[attr-defined]
        self.crypt32 = ctypes.WinDLL("crypt32", use_last_error=True)  # type: ignore[attr-defined]
        self.kernel32.LocalFree.argtypes = [ctypes.c_void_p]

    def check(self, ok: int) -> None:
        if not ok:
            raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]

    def sid_string(self, psid: int) -> str:
        text = ctypes.c_wchar_p()
        self.check(self.advapi32.ConvertSidToStringSidW(ctypes.c_void_p(psid), ctypes.byref(text)))
        try:
            return str(text.value)
        finally:
            self.kernel32.LocalFree(ctypes.cast(text, ctypes.c_void_p))

    def sid_buffer(self, sid: str) -> ctypes.Array[ctypes.c_char]:
        psid = ctypes.c_void_p()
        self.check(self.advapi32.ConvertStringSidToSidW(ctypes.c_wchar_p(sid), ctypes.byref(psid)))
        try:
            size = self.advapi32.GetLengthSid(psid)
            return ctypes.create_string_buffer(ctypes.string_at(psid.value, size), size)
        finally:
            self.kernel32.LocalFree(psid)


def read_dacl(w: Win32, path: str) -> tuple[list[Entry], bool]:
    """The explicit ACEs on `path`, and whether its DACL is protected (inheritance off)."""
    pdacl, psd = ctypes.c_void_p(), ctypes.c_void_p()
    err = w.advapi32.GetNamedSecurityInfoW(
        ctypes.c_wchar_p(path),
        SE_FILE_OBJECT,
        DACL_SECURITY_INFORMATION,
        None,
        None,
        ctypes.byref(pdacl),
        None,
        ctypes.byref(psd),
    )
    if err:
        raise ctypes.WinError(err)  # type: ignore[attr-defined]
    try:
        control, revision = ctypes.c_ushort(), ctypes.c_ulong()
        w.check(w.advapi32.GetSecurityDescriptorControl(psd, ctypes.byref(control), ctypes.byref(revision)))
        if not pdacl.value:
            raise UnsupportedPolicy(
                f"{path} has no DACL (everyone may do anything); stockade will not replace it"
            )
        out: list[Entry] = []
        for i in range(_AclHeader.from_address(pdacl.value).AceCount):
            pace = ctypes.c_void_p()
            w.check(w.advapi32.GetAce(pdacl, i, ctypes.byref(pace)))
            header = _AceHeader.from_address(pace.value)  # type: ignore[arg-type]
            if header.AceFlags & INHERITED_ACE:
                continue  # recomputed by Windows from the parent on every write
            if header.AceType not in (ACCESS_ALLOWED, ACCESS_DENIED):
                raise UnsupportedPolicy(
                    f"{path} holds an ACE of type {header.AceType}; stockade will not rewrite it"
                )
            access = ctypes.c_uint32.from_address(pace.value + 4).value  # type: ignore[operator]
            sid = w.sid_string(pace.value + 8)  # type: ignore[operator]
            kind = "allow" if header.AceType == ACCESS_ALLOWED else "deny"
            out.append((sid, kind, header.AceFlags, access, ctypes.string_at(pace.value, header.AceSize)))
        return out, bool(control.value & SE_DACL_PROTECTED)
    finally:
        w.kernel32.LocalFree(psd)


def write_dacl(w: Win32, path: str, keep: list[Entry], ours: list[Ace], protected: bool) -> None:
    """Replace the explicit DACL of `path`: `keep` (other principals', as they were) and `ours`."""
    sids = [w.sid_buffer(a.principal) for a in ours]
    size = (8 + sum(len(e[4]) for e in keep) + sum(8 + len(s) for s in sids) + 3) & ~3
    acl = ctypes.create_string_buffer(size)
    w.check(w.advapi32.InitializeAcl(acl, size, ACL_REVISION))
    for kind in ("deny", "allow"):  # canonical order: explicit deny first, then explicit allow
        for _, k, _, _, raw in keep:
            if k == kind:
                w.check(w.advapi32.AddAce(acl, ACL_REVISION, ctypes.c_uint32(0xFFFFFFFF), raw, len(raw)))
        for ace, sid in zip(ours, sids, strict=True):
            if ace.kind == kind:
                add = w.advapi32.AddAccessDeniedAceEx if kind == "deny" else w.advapi32.AddAccessAllowedAceEx
                w.check(
                    add(
                        acl, ACL_REVISION, ace.inherit.value, ctypes.c_uint32(mask(ace.rights, ace.kind)), sid
                    )
                )
    flags = ctypes.c_uint32(DACL_SECURITY_INFORMATION | (PROTECTED_DACL if protected else UNPROTECTED_DACL))
    err = w.advapi32.SetNamedSecurityInfoW(
        ctypes.c_wchar_p(path), SE_FILE_OBJECT, flags, None, None, acl, None
    )
    if err:
        raise ctypes.WinError(err)  # type: ignore[attr-defined]


def _as_ace(path: str, entry: Entry) -> Ace:
    principal, kind, flags, access, _ = entry
    rights = rights_of(access, kind)  # type: ignore[arg-type]
    if rights is None or flags & NO_PROPAGATE_INHERIT:
        rights = Right(0)  # not one stockade writes: never equal to a wanted ACE, so it is replaced
    return Ace(principal, path, kind, rights, Inherit(flags & 0x0B))  # type: ignore[arg-type]


def _journal_path(state: SidStore) -> str | None:
    return None if state.path is None else state.path + ".applied.json"


def _load_journal(path: str | None) -> dict[str, Any]:
    try:
        with open(path or "", encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_journal(path: str | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


def apply_plan(plan: WindowsPlan, state: SidStore) -> WindowsPlan:
    """Make the disk and the firewall say what `plan` says; returns it with the account's SID in."""
    w = Win32()
    if plan.refusals:
        raise UnsupportedPolicy("; ".join(plan.refusals))
    if plan.account is not None:
        from .winproc import account_sid

        plan = plan.with_account_sid(account_sid(w, plan.account, state))
    for item in plan.create_first:
        if not os.path.lexists(item.path):
            if item.kind == "dir":
                os.mkdir(item.path)
            else:
                with open(item.path, "xb") as fh:
                    fh.write(b".\n" if item.kind == "commondir" else b"")
    scope = {p.upper() for p in plan.principals()}
    journal_file = _journal_path(state)
    journal = _load_journal(journal_file)
    applied: dict[str, list[str]] = journal.setdefault("paths", {})
    paths = {path_key(p): p for sid in scope for p in applied.get(sid, [])}
    paths |= {path_key(a.path): a.path for a in plan.aces}
    found: dict[str, tuple[list[Entry], bool]] = {}
    present: list[Ace] = []
    for key, path in paths.items():
        if os.path.lexists(path):
            found[key] = read_dacl(w, path)
            present += [_as_ace(path, e) for e in found[key][0] if e[0].upper() in scope]
    add, remove = reconcile(present, plan, scope)
    for path in paths_touched(add, remove):
        entries, protected = found[path_key(path)]
        keep = [e for e in entries if e[0].upper() not in scope]
        write_dacl(w, path, keep, desired_at(plan, path), protected)
    for sid in scope:
        applied[sid] = sorted({a.path for a in plan.aces if a.principal.upper() == sid}, key=path_key)
    apply_firewall(plan, journal.setdefault("firewall", {}))
    _save_journal(journal_file, journal)
    return plan


def _ps(text: str) -> str:
    """A PowerShell single-quoted string."""
    return "'" + text.replace("'", "''") + "'"


def apply_firewall(plan: WindowsPlan, done: dict[str, Any]) -> None:
    """Replace this account's stockade rules by the plan's (through the NetSecurity cmdlets: netsh
    cannot scope a rule to one account); skipped when they are already the plan's."""
    if plan.account is None:
        return
    wanted = [r.to_json() for r in plan.firewall]
    if done.get(plan.account) == wanted:
        return
    pattern = _ps(f"stockade {plan.account}*")
    script = [
        "$ErrorActionPreference = 'Stop'",
        "Get-NetFirewallRule -Group 'stockade' -ErrorAction SilentlyContinue | "
        f"Where-Object {{ $_.DisplayName -like {pattern} }} | Remove-NetFirewallRule",
    ]
    for rule in plan.firewall:
        addresses = ",".join(_ps("Any" if a == "any" else a) for a in rule.remote_addresses)
        line = (
            f"New-NetFirewallRule -DisplayName {_ps(rule.name)} -Group 'stockade' -Direction Outbound "
            f"-Action Block -Protocol {_ps(rule.protocol.upper() if rule.protocol != 'any' else 'Any')} "
            f"-RemoteAddress {addresses} -LocalUser {_ps(f'D:(A;;CC;;;{rule.principal})')}"
        )
        if rule.remote_ports:
            line += " -RemotePort " + ",".join(_ps(p) for p in rule.remote_ports)
        script.append(line + " | Out-Null")
    command = ["powershell.exe", "-NoProfile", "-NonInteractive", "-Command", "; ".join(script)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SandboxUnavailable(f"the firewall rules could not be set: {result.stderr.strip()}")
    done[plan.account] = wanted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stockade.backends.windows.apply")
    parser.add_argument("--plan", help="the WindowsPlan as JSON (written by WindowsBackend.launch)")
    parser.add_argument("--state", required=True, help="the SID state file")
    parser.add_argument("--started", help="created right before the command starts")
    parser.add_argument("--setup", metavar="ACCOUNT", help="create a sandbox account (as administrator)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        state = SidStore(args.state)
        if args.setup:
            from .winproc import setup_account

            print(setup_account(Win32(), args.setup, state))
            return 0
        with open(args.plan, encoding="utf-8") as fh:
            plan = apply_plan(WindowsPlan.from_json(json.load(fh)), state)
        from .winproc import run

        return run(Win32(), plan, command, state, started=args.started)
    except (StockadeError, OSError) as exc:
        if args.started and os.path.exists(args.started):
            print(f"stockade: {exc}", file=sys.stderr)
            return 1  # the command ran; this failure came after it
        print(f"stockade: {exc}; nothing was run", file=sys.stderr)
        return NOT_STARTED


if __name__ == "__main__":
    sys.exit(main())
