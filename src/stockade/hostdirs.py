"""The host's standard directories, per operating system: what `:minimal`, `:root`, `:tmpdir`
and `:slash_tmp` stand for, and where temporary files go.

Pure functions of the environment and `os.name`, so the Windows answers are tested anywhere
(and, through Windows CPython under Wine, on Windows' own path functions).
"""

from __future__ import annotations

import ntpath
import os
import sys
from collections.abc import Iterable, Mapping

POSIX_MINIMAL = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
# What a program needs to start on Windows: the system directory, the installed programs (their
# shared runtimes), never ProgramData (services keep keys there) nor another user's profile.
WINDOWS_MINIMAL = (
    ("SystemRoot", "C:\\Windows"),
    ("ProgramFiles", "C:\\Program Files"),
    ("ProgramFiles(x86)", "C:\\Program Files (x86)"),
)


def _get(env: Mapping[str, str], name: str, os_name: str) -> str | None:
    """An environment variable; on Windows its name is case-insensitive."""
    if os_name != "nt":
        return env.get(name) or None
    folded = name.casefold()
    return next((v for k, v in env.items() if k.casefold() == folded and v), None)


def minimal(env: Mapping[str, str], os_name: str = os.name) -> tuple[str, ...]:
    """`:minimal`: the system's start-up read set plus the running interpreter's prefixes."""
    if os_name == "nt":
        system = tuple(_get(env, name, os_name) or default for name, default in WINDOWS_MINIMAL)
    else:
        system = POSIX_MINIMAL
    prefixes = {sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable))}
    return tuple(dict.fromkeys((*system, *sorted(prefixes))))


def tmp_dir(env: Mapping[str, str], os_name: str = os.name) -> str | None:
    """The directory temporary files go to: TMPDIR on POSIX; TEMP, then TMP, on Windows (a
    TMPDIR there is usually a POSIX toolchain's `/tmp`, which Windows programs cannot use)."""
    names = ("TEMP", "TMP") if os_name == "nt" else ("TMPDIR",)
    return next((v for v in (_get(env, n, os_name) for n in names) if v), None)


def slash_tmp(os_name: str = os.name) -> str | None:
    """`:slash_tmp`: `/tmp`, which Windows does not have."""
    return None if os_name == "nt" else "/tmp"


def fallback_tmp(env: Mapping[str, str], os_name: str = os.name) -> str:
    """Where temporary files go when nothing names a directory."""
    if os_name == "nt":
        return ntpath.join(_get(env, "SystemRoot", os_name) or "C:\\Windows", "Temp")
    return "/tmp"


def fs_roots(paths: Iterable[str], os_name: str = os.name) -> list[str]:
    """`:root`: `/`; on Windows the root of every drive the given paths live on (there is no
    single root), in the order first named."""
    if os_name != "nt":
        return ["/"]
    out: dict[str, None] = {}
    for path in paths:
        drive = ntpath.splitdrive(path)[0]
        if drive:
            out[drive.upper() + "\\" if drive.endswith(":") else drive + "\\"] = None
    return list(out)


def tmp_env(tmpdir: str, os_name: str = os.name) -> dict[str, str]:
    """The variables that point programs at `tmpdir`: every one Python's tempfile reads on Windows
    (TMPDIR first, so a POSIX toolchain's `/tmp` cannot win there)."""
    return {"TMPDIR": tmpdir, "TEMP": tmpdir, "TMP": tmpdir} if os_name == "nt" else {"TMPDIR": tmpdir}
