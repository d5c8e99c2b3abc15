"""The doctor reads the real host: it passes here, and fails for real where a sandbox cannot start."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import Who

from stockade.backends.locate import find_bwrap
from stockade.doctor import Check, Report, diagnose, explain_launch_failure

PROBE = (
    "from stockade.doctor import diagnose, explain_launch_failure\n"
    "r = diagnose()\n"
    "print(r.can_sandbox)\n"
    "print(r.render())\n"
    "print('--- explain')\n"
    "print(explain_launch_failure(''))\n"
)


def _probe(who: Who, cwd: Path, env: dict[str, str] | None = None, outer: Sequence[str] = ()) -> list[str]:
    """Run diagnose() in a fresh interpreter: find_bwrap() is cached per process."""
    done = who.run([*outer, who.python, "-c", PROBE], cwd, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _bwrap_for(who: Who, cwd: Path) -> str:
    """find_bwrap() as `who` sees it (root's bundled binary may not be executable by others)."""
    if os.getuid() == who.uid:
        return find_bwrap().path  # type: ignore[union-attr]
    done = who.run(
        [who.python, "-c", "from stockade.backends.locate import find_bwrap; print(find_bwrap().path)"], cwd
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_this_host_can_sandbox() -> None:
    report = diagnose()
    binary = find_bwrap()
    assert binary is not None
    assert report.can_sandbox, report.render()
    by_name = {c.name: c for c in report.checks}
    assert by_name["bubblewrap"].ok and by_name["sandbox start"].ok and by_name["seccomp"].ok
    landlock = by_name["landlock"]
    assert landlock.ok and not landlock.required
    assert int(landlock.detail.split()[1].rstrip(":")) >= 1, landlock.detail
    assert "fallback backend can run" in landlock.detail, landlock.detail
    text = report.render()
    assert binary.path in text and binary.version_text in text and binary.origin in text
    assert text.splitlines()[-1].startswith("verdict: `stockade run` can sandbox here with bubblewrap")
    assert "FAIL" not in text


def test_json_report_is_plain_data() -> None:
    data = json.loads(json.dumps(diagnose().to_json()))
    assert data["can_sandbox"] is True
    assert data["bwrap"]["path"] == find_bwrap().path  # type: ignore[union-attr]
    names = [c["name"] for c in data["checks"]]
    assert {"bubblewrap", "sandbox start", "seccomp", "landlock", "user.max_user_namespaces"} <= set(names)
    assert all(set(c) == {"name", "ok", "detail", "fix", "required"} for c in data["checks"])


def test_each_identity_can_sandbox(who: Who, workspace: Path) -> None:
    lines = _probe(who, workspace)
    assert lines[0] == "True", "\n".join(lines)
    assert any(line.startswith("ok    sandbox start:") for line in lines)
    assert _bwrap_for(who, workspace) in "\n".join(lines)


def test_missing_bwrap_fails_with_the_fix(who: Who, workspace: Path) -> None:
    lines = _probe(who, workspace, env={"STOCKADE_BWRAP": "/nonexistent/bwrap"})
    text = "\n".join(lines)
    assert lines[0] == "False", text
    assert "FAIL  bubblewrap: no usable bwrap" in text and "/nonexistent/bwrap: no such file" in text
    assert "fix: STOCKADE_BWRAP=/nonexistent/bwrap is not a working bwrap" in text
    assert "CANNOT sandbox here" in text
    explained = text.split("--- explain\n", 1)[1]
    assert "never ran" in explained and "fix: STOCKADE_BWRAP=/nonexistent/bwrap" in explained
    assert "ok    seccomp" not in explained, "the explanation lists only what failed"


def test_a_binary_that_is_not_bwrap_is_named(who: Who, workspace: Path) -> None:
    true = shutil.which("true")
    assert true
    lines = _probe(who, workspace, env={"STOCKADE_BWRAP": true})
    assert lines[0] == "False"
    assert f"env {true}: not a bubblewrap binary" in "\n".join(lines)


def test_no_nested_user_namespaces_fails_with_the_fix(who: Who, workspace: Path) -> None:
    outer = [_bwrap_for(who, workspace), "--unshare-user", "--disable-userns"]
    outer += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--"]
    lines = _probe(who, workspace, outer=outer)
    text = "\n".join(lines)
    assert lines[0] == "False", text
    assert "ok    bubblewrap" in text, "bwrap is there; it is the namespaces that are refused"
    failed = next(line for line in lines if line.startswith("FAIL  sandbox start:"))
    assert "Creating new namespace failed" in failed, failed
    after = lines[lines.index(failed) + 1]
    assert after.startswith("      fix: ") and "user namespace" in after, after
    assert "user.max_user_namespaces=15000" in text
    assert "info  nesting: already inside a user namespace" in text
    explained = text.split("--- explain\n", 1)[1]
    assert "FAIL  sandbox start" in explained and "fix:" in explained and "CANNOT sandbox" in explained


def test_uid_map_refusal_explains_sysctl_and_apparmor() -> None:
    text = explain_launch_failure("bwrap: setting up uid map: Permission denied\n")
    assert "never ran" in text
    assert "bwrap said: bwrap: setting up uid map: Permission denied" in text
    assert "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0" in text
    assert "apparmor_parser -r /etc/apparmor.d/stockade-bwrap" in text
    assert f"profile stockade-bwrap {find_bwrap().path} " in text  # type: ignore[union-attr]
    assert "sudo sysctl -w kernel.unprivileged_userns_clone=1" in text


@pytest.mark.parametrize(
    ("message", "fix"),
    [
        (
            "bwrap: No permissions to create a new namespace, likely because the kernel does not "
            "allow non-privileged user namespaces.",
            "kernel.unprivileged_userns_clone=1",
        ),
        ("bwrap: Creating new namespace failed: No space left on device", "user.max_user_namespaces=15000"),
        ("bwrap: Creating new namespace failed: Operation not permitted", "seccomp=unconfined"),
        ("bwrap: Failed to make / slave: Operation not permitted", "seccomp=unconfined"),
    ],
)
def test_known_bwrap_messages_map_to_fixes(message: str, fix: str) -> None:
    text = explain_launch_failure(message)
    assert f"bwrap said: {message}" in text
    assert any(line.startswith("      fix: ") and fix in line for line in text.splitlines()), text
    # This host itself is fine, and the explanation says so instead of blaming it.
    assert "the doctor's own test sandbox starts here" in text


def test_informational_checks_never_decide() -> None:
    info = Check("landlock", False, "not available (ENOSYS)", "a newer kernel", required=False)
    report = Report((Check("sandbox start", True, "started"), info))
    assert report.can_sandbox
    assert "info  landlock: not available (ENOSYS)\n      fix: a newer kernel" in report.render()
    failing = Report((Check("sandbox start", False, "refused", "do this\nor that"), info))
    assert not failing.can_sandbox
    assert "FAIL  sandbox start: refused\n      fix: do this\n      fix: or that" in failing.render()
    assert "CANNOT sandbox here (no usable bubblewrap)" in failing.render()


@pytest.mark.parametrize(
    ("system", "name", "script"),
    [("darwin", "Seatbelt", "scripts/smoke-macos.sh"), ("win32", "Windows", "scripts/smoke-windows.ps1")],
)
def test_macos_and_windows_say_experimental_and_point_at_their_smoke_script(
    system: str, name: str, script: str
) -> None:
    report = diagnose(system)
    text = report.render()
    assert f"info  status: the {name} backend is experimental, not verified by this project" in text
    assert f"      fix: run {script} here" in text
    assert (Path(__file__).parents[1] / script).is_file()
    verdict = text.splitlines()[-1]
    assert verdict.startswith("verdict: `stockade run` ") and f"the {name} backend, experimental" in verdict
    assert "bwrap" not in text and "bubblewrap" not in text  # none of the Linux checks
    data = json.loads(json.dumps(report.to_json()))
    assert data["backend"] == report.backend and data["bwrap"] is None
    assert [c["name"] for c in data["checks"]] == [name.lower(), "status"]
    if system == "win32":
        assert report.can_sandbox  # the status is informational: it never decides


def test_the_linux_report_is_the_default_here_and_names_no_experimental_backend() -> None:
    report = diagnose("linux")
    assert report.backend == "" and "backend" not in report.to_json()
    assert [c.name for c in report.checks] == [c.name for c in diagnose().checks]
    verdict = report.render().splitlines()[-1]
    assert verdict.startswith("verdict: `stockade run` can sandbox here with bubblewrap")
