"""Running the command (EXPERIMENTAL, Windows only): sandbox accounts, the write-restricted token,
and a job object that ends every process of the command when the helper ends.

restricted: the caller's own token, restricted. elevated: the sandbox account's token (LogonUserW
with the password `setup_account` generated and stored protected by DPAPI for the administrator
who ran it), restricted the same way, started with CreateProcessWithTokenW (which needs
SeImpersonatePrivilege: an elevated administrator). Either way the token is write-restricted:
its restricting SIDs (the plan's `token_sids`) are consulted for writes, so a write needs an ACE
for a workspace SID or the generic SID, whatever the account itself may do.

Only imported by `apply` after `Win32()` has checked the platform.
"""

from __future__ import annotations

import ctypes
import msvcrt  # type: ignore[import-not-found]  # Windows only, like this module
import os
import secrets
import subprocess
from ctypes import wintypes as wt

from ...errors import SandboxUnavailable, UnsupportedPolicy
from .apply import Win32
from .model import WindowsPlan
from .sids import SidStore

DISABLE_MAX_PRIVILEGE, LUA_TOKEN, WRITE_RESTRICTED = 0x1, 0x4, 0x8
TOKEN_ALL_ACCESS, LOGON32_LOGON_INTERACTIVE, LOGON32_PROVIDER_DEFAULT = 0xF01FF, 2, 0
CREATE_SUSPENDED, CREATE_UNICODE_ENVIRONMENT, STARTF_USESTDHANDLES = 0x4, 0x400, 0x100
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE, JOB_OBJECT_EXTENDED_LIMIT_INFORMATION = 0x2000, 9
GENERIC_READ, OPEN_EXISTING, FILE_FLAG_BACKUP_SEMANTICS, INFINITE = 0x80000000, 3, 0x02000000, 0xFFFFFFFF
UF_SCRIPT, UF_PASSWD_CANT_CHANGE, UF_DONT_EXPIRE_PASSWD, USER_PRIV_USER, NERR_USER_EXISTS = (
    0x1,
    0x40,
    0x10000,
    1,
    2224,
)


class SidAndAttributes(ctypes.Structure):
    _fields_ = [("Sid", ctypes.c_void_p), ("Attributes", wt.DWORD)]


class StartupInfo(ctypes.Structure):
    _fields_ = [
        ("cb", wt.DWORD),
        ("lpReserved", wt.LPWSTR),
        ("lpDesktop", wt.LPWSTR),
        ("lpTitle", wt.LPWSTR),
        *(
            (n, wt.DWORD)
            for n in (
                "dwX",
                "dwY",
                "dwXSize",
                "dwYSize",
                "dwXCountChars",
                "dwYCountChars",
                "dwFillAttribute",
                "dwFlags",
            )
        ),
        ("wShowWindow", wt.WORD),
        ("cbReserved2", wt.WORD),
        ("lpReserved2", ctypes.c_void_p),
        ("hStdInput", wt.HANDLE),
        ("hStdOutput", wt.HANDLE),
        ("hStdError", wt.HANDLE),
    ]


class ProcessInformation(ctypes.Structure):
    _fields_ = [
        ("hProcess", wt.HANDLE),
        ("hThread", wt.HANDLE),
        ("dwProcessId", wt.DWORD),
        ("dwThreadId", wt.DWORD),
    ]


class ExtendedLimits(ctypes.Structure):
    """JOBOBJECT_EXTENDED_LIMIT_INFORMATION, flattened (basic limits, I/O counters, memory)."""

    _fields_ = [
        ("PerProcessUserTimeLimit", ctypes.c_int64),
        ("PerJobUserTimeLimit", ctypes.c_int64),
        ("LimitFlags", wt.DWORD),
        ("MinimumWorkingSetSize", ctypes.c_size_t),
        ("MaximumWorkingSetSize", ctypes.c_size_t),
        ("ActiveProcessLimit", wt.DWORD),
        ("Affinity", ctypes.c_size_t),
        ("PriorityClass", wt.DWORD),
        ("SchedulingClass", wt.DWORD),
        ("IoCounters", ctypes.c_uint64 * 6),
        ("ProcessMemoryLimit", ctypes.c_size_t),
        ("JobMemoryLimit", ctypes.c_size_t),
        ("PeakProcessMemoryUsed", ctypes.c_size_t),
        ("PeakJobMemoryUsed", ctypes.c_size_t),
    ]


class UserInfo1(ctypes.Structure):
    _fields_ = [
        ("name", wt.LPWSTR),
        ("password", wt.LPWSTR),
        ("password_age", wt.DWORD),
        ("priv", wt.DWORD),
        ("home_dir", wt.LPWSTR),
        ("comment", wt.LPWSTR),
        ("flags", wt.DWORD),
        ("script_path", wt.LPWSTR),
    ]


class DataBlob(ctypes.Structure):
    _fields_ = [("cbData", wt.DWORD), ("pbData", ctypes.c_void_p)]


def lookup_account(w: Win32, name: str) -> str | None:
    sid, size = ctypes.create_string_buffer(68), wt.DWORD(68)
    domain, domain_size, use = ctypes.create_unicode_buffer(256), wt.DWORD(256), wt.DWORD()
    args = (None, name, sid, ctypes.byref(size), domain, ctypes.byref(domain_size), ctypes.byref(use))
    if not w.advapi32.LookupAccountNameW(*args):
        return None
    return w.sid_string(ctypes.addressof(sid))


def account_sid(w: Win32, name: str, state: SidStore) -> str:
    """The sandbox account's SID (remembered in the state file once looked up)."""
    sid = state.account_sid(name) or lookup_account(w, name)
    if sid is None:
        raise SandboxUnavailable(
            f"the sandbox account {name} does not exist; create it once, as administrator: python -m "
            f"stockade.backends.windows.apply --state {state.path} --setup {name}"
        )
    state.record_account(name, sid)
    return sid


def _cred_file(state: SidStore, name: str) -> str:
    return os.path.join(os.path.dirname(state.path or "."), f"{name}.cred")


def setup_account(w: Win32, name: str, state: SidStore) -> str:
    """Create (or reset the password of) a local sandbox account; its password never leaves DPAPI."""
    password = secrets.token_urlsafe(24) + "a1!"
    flags = UF_SCRIPT | UF_PASSWD_CANT_CHANGE | UF_DONT_EXPIRE_PASSWD
    info = UserInfo1(name, password, 0, USER_PRIV_USER, None, "stockade sandbox account", flags, None)
    err = w.netapi32.NetUserAdd(None, 1, ctypes.byref(info), None)
    if err == NERR_USER_EXISTS:
        err = w.netapi32.NetUserSetInfo(None, name, 1003, ctypes.byref(wt.LPWSTR(password)), None)
    if err:
        raise OSError(f"creating the account {name} failed (NET_API_STATUS {err}); run as administrator")
    data = password.encode("utf-16-le")
    blob_in, blob_out = DataBlob(len(data), ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p)), DataBlob()
    w.check(
        w.crypt32.CryptProtectData(ctypes.byref(blob_in), None, None, None, None, 0, ctypes.byref(blob_out))
    )
    try:
        with open(_cred_file(state, name), "wb") as fh:
            fh.write(ctypes.string_at(blob_out.pbData, blob_out.cbData))
    finally:
        w.kernel32.LocalFree(ctypes.c_void_p(blob_out.pbData))
    return account_sid(w, name, state)


def _password(w: Win32, state: SidStore, name: str) -> str:
    with open(_cred_file(state, name), "rb") as fh:
        data = fh.read()
    blob_in, blob_out = DataBlob(len(data), ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p)), DataBlob()
    w.check(
        w.crypt32.CryptUnprotectData(ctypes.byref(blob_in), None, None, None, None, 0, ctypes.byref(blob_out))
    )
    try:
        return ctypes.string_at(blob_out.pbData, blob_out.cbData).decode("utf-16-le")
    finally:
        w.kernel32.LocalFree(ctypes.c_void_p(blob_out.pbData))


def restricted_token(w: Win32, plan: WindowsPlan, base: wt.HANDLE) -> wt.HANDLE:
    """`base` with every privilege but traverse dropped and the plan's SIDs as restricting SIDs,
    consulted for writes only (WRITE_RESTRICTED)."""
    sids = [w.sid_buffer(s) for s in plan.token_sids]
    entries = (SidAndAttributes * len(sids))(
        *(SidAndAttributes(ctypes.cast(s, ctypes.c_void_p), 0) for s in sids)
    )
    token = wt.HANDLE()
    flags = DISABLE_MAX_PRIVILEGE | LUA_TOKEN | WRITE_RESTRICTED
    args = (base, flags, 0, None, 0, None, len(sids), entries, ctypes.byref(token))
    w.check(w.advapi32.CreateRestrictedToken(*args))
    return token


def verify_unreadable(w: Win32, token: wt.HANDLE, paths: tuple[str, ...]) -> None:
    """Fail closed: what no ACE may reach (~/.ssh, keys) must already be unreadable for `token`."""
    w.kernel32.CreateFileW.restype = wt.HANDLE
    invalid = wt.HANDLE(-1).value
    w.check(w.advapi32.ImpersonateLoggedOnUser(token))
    try:
        for path in paths:
            args = (
                path,
                ctypes.c_uint32(GENERIC_READ),
                7,
                None,
                OPEN_EXISTING,
                FILE_FLAG_BACKUP_SEMANTICS,
                None,
            )
            handle = w.kernel32.CreateFileW(*args)
            if handle not in (None, invalid):
                w.kernel32.CloseHandle(wt.HANDLE(handle))
                raise UnsupportedPolicy(
                    f"{path} is readable by the sandbox account, and no ACE may go there (OpenSSH checks "
                    "them); make it private to you, or remove the entry"
                )
    finally:
        w.advapi32.RevertToSelf()


def _environment_block() -> ctypes.Array[ctypes.c_wchar]:
    items = sorted(os.environ.items(), key=lambda kv: kv[0].upper())
    return ctypes.create_unicode_buffer("".join(f"{k}={v}\0" for k, v in items) + "\0")


def run(w: Win32, plan: WindowsPlan, argv: list[str], state: SidStore, started: str | None) -> int:
    """Start `argv` under the plan's token inside a kill-on-close job; wait; its exit status."""
    if not argv:
        raise UnsupportedPolicy("no command given")
    base = wt.HANDLE()
    if plan.account is not None:
        args = (plan.account, ".", _password(w, state, plan.account), LOGON32_LOGON_INTERACTIVE)
        w.check(w.advapi32.LogonUserW(*args, LOGON32_PROVIDER_DEFAULT, ctypes.byref(base)))
    else:
        w.kernel32.GetCurrentProcess.restype = wt.HANDLE
        process = wt.HANDLE(w.kernel32.GetCurrentProcess())
        w.check(w.advapi32.OpenProcessToken(process, TOKEN_ALL_ACCESS, ctypes.byref(base)))
    token = restricted_token(w, plan, base)
    if plan.verify_unreadable:
        verify_unreadable(w, token, plan.verify_unreadable)
    w.kernel32.CreateJobObjectW.restype = wt.HANDLE
    job = wt.HANDLE(w.kernel32.CreateJobObjectW(None, None))
    limits = ExtendedLimits(LimitFlags=JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE)
    args = (job, JOB_OBJECT_EXTENDED_LIMIT_INFORMATION, ctypes.byref(limits), ctypes.sizeof(limits))
    w.check(w.kernel32.SetInformationJobObject(*args))
    info = StartupInfo(cb=ctypes.sizeof(StartupInfo), dwFlags=STARTF_USESTDHANDLES)
    handles = [msvcrt.get_osfhandle(fd) for fd in (0, 1, 2)]
    for handle in handles:
        os.set_handle_inheritable(handle, True)
    info.hStdInput, info.hStdOutput, info.hStdError = handles
    process_info = ProcessInformation()
    cmdline = ctypes.create_unicode_buffer(subprocess.list2cmdline(argv))
    flags, env, cwd = CREATE_SUSPENDED | CREATE_UNICODE_ENVIRONMENT, _environment_block(), os.getcwd()
    if plan.account is not None:
        args = (token, 0, None, cmdline, flags, env, cwd, ctypes.byref(info), ctypes.byref(process_info))
        w.check(w.advapi32.CreateProcessWithTokenW(*args))
    else:
        args = (
            token,
            None,
            cmdline,
            None,
            None,
            True,
            flags,
            env,
            cwd,
            ctypes.byref(info),
            ctypes.byref(process_info),
        )
        w.check(w.advapi32.CreateProcessAsUserW(*args))
    process, thread = wt.HANDLE(process_info.hProcess), wt.HANDLE(process_info.hThread)
    try:
        if not w.kernel32.AssignProcessToJobObject(job, process):
            w.kernel32.TerminateProcess(process, 1)  # never let it run outside the job
            raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
        if started:
            open(started, "w").close()
        w.kernel32.ResumeThread(thread)
        w.kernel32.WaitForSingleObject(process, ctypes.c_uint32(INFINITE))
        code = wt.DWORD()
        w.check(w.kernel32.GetExitCodeProcess(process, ctypes.byref(code)))
        return int(code.value)
    finally:
        for handle in (thread, process, token, base, job):  # closing the job ends what is left
            w.kernel32.CloseHandle(handle)
