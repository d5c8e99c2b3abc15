"""stockade's own per-user state directory (lock files, the empty file that masks denied paths)."""

from __future__ import annotations

import functools
import os
import stat

from .errors import SandboxUnavailable


def _uid() -> int | None:
    """The real uid; None on Windows, which has none (ownership is in ACLs there)."""
    return os.getuid() if hasattr(os, "getuid") else None


def _usable(path: str, uid: int | None) -> bool:
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return False
    # Never trust a directory someone else owns or a symlink: a mask could be swapped. Without
    # uids (Windows) mode bits say nothing: only the per-user candidates (home, XDG_*) are tried.
    owned = stat.S_ISDIR(st.st_mode)
    if uid is not None:
        owned = owned and st.st_uid == uid and not st.st_mode & 0o022
    return owned and os.access(path, os.W_OK)


@functools.cache
def find_state_dir() -> str | None:
    """The first usable candidate, or None."""
    uid = _uid()
    home = os.path.expanduser("~")  # USERPROFILE on Windows
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.join(home, ".local", "state")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    candidates = [os.path.join(xdg, "stockade")]
    if runtime:
        candidates.append(os.path.join(runtime, "stockade"))
    # Never tempfile.gettempdir(): it falls back to the cwd, which may be the workspace. Shared
    # directories only where ownership can be checked.
    if uid is not None:
        candidates += [os.path.join(base, f"stockade-{uid}") for base in ("/tmp", "/var/tmp")]
    return next((path for path in candidates if _usable(path, uid)), None)


def state_dir() -> str:
    found = find_state_dir()
    if found is not None:
        return found
    from .doctor import diagnose

    raise SandboxUnavailable(
        "no writable state directory for stockade (~/.local/state, $XDG_RUNTIME_DIR, /tmp, "
        f"/var/tmp); the sandbox could not be started, so nothing was run.\n{diagnose().render()}"
    )


@functools.cache
def empty_file() -> str:
    """An empty file no one may read: bind-mounted over denied files and host sockets."""
    path = os.path.join(state_dir(), "denied")
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and st.st_size == 0 and stat.S_IMODE(st.st_mode) == 0:
            return path
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0)
    os.close(fd)
    os.chmod(path, 0)
    return path
