"""A shared/exclusive lock on a file, so concurrent runs of stockade can tell whether they are alone.

POSIX uses flock(2) on the whole file. Windows has no flock: it uses LockFileEx on the file's
first byte (locking past the end of a file is allowed, so the file may stay empty). Both are tied
to the open file and released by the OS when the process dies, however it dies: a run killed
mid-way never leaves a lock behind.

Windows cannot convert a lock in place, so there every change of kind unlocks first, then locks.
flock(2) on Linux is not atomic either (the old lock is dropped before the new one is taken), so
callers must already be correct when another process slips in between; `placeholders` is.
"""

from __future__ import annotations

import os
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
try:
    import msvcrt
except ImportError:  # POSIX
    msvcrt = None  # type: ignore[assignment]

UNSUPPORTED: str | None = (
    None if fcntl is not None or msvcrt is not None else "this system has neither flock(2) nor LockFileEx"
)
"""Why no lock can be taken here, or None where `FileLock` works."""


class FileLock:
    """One open lock file. `shared()` and `try_exclusive()` replace the lock it held, if any."""

    def __init__(self, path: str) -> None:
        if UNSUPPORTED is not None:
            raise OSError(UNSUPPORTED)
        # O_CLOEXEC / O_NOINHERIT are Python's default: the sandboxed command never holds it.
        self.fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.held = False  # Windows: an UnlockFileEx is owed before the next lock

    def shared(self) -> None:
        """Hold a shared lock, waiting while another process holds it exclusively."""
        self._lock(exclusive=False, wait=True)

    def try_exclusive(self) -> bool:
        """Hold the lock alone if no other process holds it at all; never waits. When it fails,
        this file may hold no lock afterwards (flock(2) on Linux drops the old one too)."""
        return self._lock(exclusive=True, wait=False)

    def close(self) -> None:
        """Release the lock and the file (closing alone releases it too, on both systems)."""
        if self.fd is None:
            return
        try:
            if self.held and _windows is not None:
                _windows.unlock(self.fd)
        finally:
            os.close(self.fd)
            self.fd = None
            self.held = False

    def _lock(self, *, exclusive: bool, wait: bool) -> bool:
        assert self.fd is not None, "the lock file is closed"
        if fcntl is not None:
            how = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
            try:
                fcntl.flock(self.fd, how)  # converts a lock this file holds
            except BlockingIOError:
                return False
            return True
        assert _windows is not None
        if self.held:
            _windows.unlock(self.fd)
            self.held = False
        self.held = _windows.lock(self.fd, exclusive=exclusive, wait=wait)
        return self.held


class _Windows:
    """LockFileEx/UnlockFileEx through ctypes, on the handle behind a C runtime file descriptor."""

    EXCLUSIVE = 0x2  # LOCKFILE_EXCLUSIVE_LOCK
    FAIL_IMMEDIATELY = 0x1  # LOCKFILE_FAIL_IMMEDIATELY
    LOCK_VIOLATION = 33  # ERROR_LOCK_VIOLATION: someone else holds a conflicting lock

    def __init__(self) -> None:
        import ctypes
        from ctypes import wintypes

        class Overlapped(ctypes.Structure):
            # Synchronous handles too take the range's offset here (byte 0: all zeros).
            _fields_ = (
                ("Internal", ctypes.c_void_p),
                ("InternalHigh", ctypes.c_void_p),
                ("Offset", wintypes.DWORD),
                ("OffsetHigh", wintypes.DWORD),
                ("hEvent", wintypes.HANDLE),
            )

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
        self.ctypes: Any = ctypes
        self.overlapped = Overlapped
        dword, pointer = wintypes.DWORD, ctypes.POINTER(Overlapped)
        self.lock_file = kernel32.LockFileEx
        self.lock_file.argtypes = (wintypes.HANDLE, dword, dword, dword, dword, pointer)
        self.lock_file.restype = wintypes.BOOL
        self.unlock_file = kernel32.UnlockFileEx
        self.unlock_file.argtypes = (wintypes.HANDLE, dword, dword, dword, pointer)
        self.unlock_file.restype = wintypes.BOOL

    def lock(self, fd: int, *, exclusive: bool, wait: bool) -> bool:
        flags = (self.EXCLUSIVE if exclusive else 0) | (0 if wait else self.FAIL_IMMEDIATELY)
        handle = msvcrt.get_osfhandle(fd)  # type: ignore[union-attr]
        if self.lock_file(handle, flags, 0, 1, 0, self.ctypes.byref(self.overlapped())):
            return True
        error = self.ctypes.get_last_error()
        if not wait and error == self.LOCK_VIOLATION:
            return False
        raise self.ctypes.WinError(error)

    def unlock(self, fd: int) -> None:
        handle = msvcrt.get_osfhandle(fd)  # type: ignore[union-attr]
        if not self.unlock_file(handle, 0, 1, 0, self.ctypes.byref(self.overlapped())):
            raise self.ctypes.WinError(self.ctypes.get_last_error())


_windows = _Windows() if fcntl is None and msvcrt is not None else None
