"""Windows CPython under Wine, for the tests of what stockade does with Windows paths.

The official embeddable CPython 3.11 for Windows runs under Wine (`scripts/wine-python.sh` gets
both), so `materialize`, the policy loader, the glob walk and the Windows renderer meet the real
`ntpath`, `os` and Win32 file APIs (drive letters, `\\`, case-insensitive names, TEMP) instead
of a simulation. Wine does not enforce ACLs: these tests prove the path logic and the Plans,
never the enforcement (that is `scripts/smoke-windows.ps1`, on Windows).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "wine-python.sh"

# Runs inside Windows Python: Wine rewrites USERPROFILE and TEMP from its registry, so the test's
# environment is applied here, then `code` runs (or the CLI, when `code` is empty).
BOOT = r"""
import json, os, sys
os.environ.update(json.loads(sys.argv[1]))
sys.path.insert(0, sys.argv[2])
if sys.argv[3]:
    exec(compile(sys.argv[3], "<test>", "exec"), {"__name__": "__main__", "ARGS": sys.argv[4:]})
else:
    from stockade.cli import main
    sys.exit(main(sys.argv[4:]))
"""


@dataclass
class WinPython:
    loader: str
    python: str
    prefix: Path  # the Wine prefix: `drive_c` below it is C:\
    env: dict[str, str]

    @property
    def drive_c(self) -> Path:
        return self.prefix / "drive_c"

    def win(self, path: Path | str) -> str:
        """The Windows name of a Linux path: C:\\ for the prefix's drive_c, Z:\\ for the rest."""
        path = Path(path).resolve()
        try:
            return "C:\\" + str(path.relative_to(self.drive_c.resolve())).replace("/", "\\").lstrip(".")
        except ValueError:
            return "Z:" + str(path).replace("/", "\\")

    def mkdtemp(self, prefix: str = "ws-") -> Path:
        """A fresh directory on C:\\ (what a Windows user's checkout looks like)."""
        top = self.drive_c / "stockade-tests"
        top.mkdir(exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=top))

    def run(
        self, code: str, *args: str, cwd: Path, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run Python `code` (ARGS holds `args`) in Windows CPython, in `cwd`, with `env` applied."""
        src = self.win(REPO / "src")
        env = {"PYTHONPATH": src, **(env or {})}  # for the processes it starts (the applier)
        argv = [self.loader, self.python, "-c", BOOT, json.dumps(env), src]
        return subprocess.run(
            [*argv, code, *args],
            cwd=cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,  # Wine's Python needs valid standard handles
            capture_output=True,
            text=True,
            timeout=120,
        )

    def stockade(
        self, *args: str, cwd: Path, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The `stockade` CLI, in Windows CPython."""
        return self.run("", *args, cwd=cwd, env=env)

    def plan(self, *args: str, cwd: Path, env: Mapping[str, str] | None = None) -> dict[str, object]:
        """`stockade explain --json` as data (fails the test on a non-zero exit)."""
        done = self.stockade("explain", "--json", *args, cwd=cwd, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)


def provision() -> Iterator[WinPython]:
    """Get Wine and Windows CPython (installing them as root), start one Wine server for the
    session, stop it after. Without them: fail under CI, else skip saying how to get them."""
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        message = f"Windows CPython under Wine is not available: {done.stderr.strip()[-400:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message + f" (run {SCRIPT.relative_to(REPO)} as root to get it)")
    loader, python = done.stdout.split("\n")[:2]
    prefix = Path(tempfile.mkdtemp(prefix="stockade-wine-", dir="/var/tmp"))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(prefix),
        "WINEPREFIX": str(prefix),
        "WINEDEBUG": "-all",
        "WINEDLLOVERRIDES": "mscoree,mshtml=",  # no Mono or Gecko prompts
        "LANG": "C.UTF-8",
    }
    server = os.path.join(os.path.dirname(loader), "wineserver")
    # One persistent server, started with no pipe of ours: a server that wine64 started on its
    # own would hold the test's stdout pipe open after the program exits.
    quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    # One persistent server, and the prefix's services, started with no pipe of ours: a process
    # that outlives its program would hold the test's stdout open.
    subprocess.run([server, "-p"], env=env, **quiet, check=True)
    subprocess.run([loader, "wineboot", "--init"], env=env, **quiet, timeout=300)  # C:\users, C:\windows
    try:
        yield WinPython(loader, python, prefix, env)
    finally:
        subprocess.run([server, "-k"], env=env, capture_output=True)
        subprocess.run(["rm", "-rf", str(prefix)], check=False)
