"""The CLI's own commands: doctor, explain (table and JSON), profiles, and full-access."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import Who


def test_doctor_reports_this_host(who: Who, workspace: Path) -> None:
    done = who.stockade("doctor", cwd=workspace)
    assert done.returncode == 0, done.stdout
    assert "can sandbox here with bubblewrap" in done.stdout
    assert "landlock: ABI" in done.stdout
    done = who.stockade("doctor", cwd=workspace, env={"STOCKADE_BWRAP": "/nonexistent/bwrap"})
    assert done.returncode == 1 and "CANNOT sandbox" in done.stdout


def test_full_access_is_unconfined_and_says_so(who: Who, workspace: Path) -> None:
    outside = who.mkdtemp("free-")
    done = who.sandbox(f"echo x > {outside}/f && echo WROTE", workspace, "--profile", "full-access")
    assert "WROTE" in done.stdout
    explained = who.stockade("explain", "--profile", "full-access", cwd=workspace)
    assert "NO SANDBOX" in explained.stdout


def test_explain_is_readable_and_json(who: Who, repo: Path) -> None:
    done = who.stockade("explain", cwd=repo)
    assert done.returncode == 0, done.stderr
    assert "write" in done.stdout and f"{repo}/.git/config" in done.stdout
    assert "bubblewrap" in done.stdout
    done = who.stockade("explain", "--json", cwd=repo)
    data = json.loads(done.stdout)
    assert data["profile"] == "workspace" and data["network"] == "off"
    assert {"path": f"{repo}/.agents", "kind": "dir"} in data["placeholders"]


def test_profiles_lists_builtins(who: Who, workspace: Path) -> None:
    done = who.stockade("profiles", cwd=workspace)
    for name in ("read-only", "workspace", "full-access"):
        assert name in done.stdout


def _locate(path: str) -> str:
    """Which bwrap a fresh process picks with this PATH (find_bwrap is cached per process)."""
    code = (
        "from stockade.backends.locate import find_bwrap; b = find_bwrap(); print(b.origin, b.version_text)"
    )
    env = {k: v for k, v in os.environ.items() if k != "STOCKADE_BWRAP"}
    env["PATH"] = path
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def test_a_system_bwrap_is_preferred_only_when_new_enough(tmp_path: Path) -> None:
    bwrap = tmp_path / "bwrap"
    bwrap.write_text("#!/bin/sh\necho bubblewrap 0.9.0\n")
    bwrap.chmod(0o755)
    assert _locate(f"{tmp_path}:/usr/bin:/bin") == "system 0.9.0"
    bwrap.write_text("#!/bin/sh\necho bubblewrap 0.4.1\n")  # too old: the bundled one is used
    assert _locate(f"{tmp_path}:/usr/bin:/bin").startswith("bundled ")
