"""Filesystem enforcement for real, as root and as an unprivileged user.

Every "allow" uses what real tools do (rename, link, tempfile, sqlite, py_compile, pytest);
every "deny" tries to get through and checks the host afterwards.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
from pathlib import Path

import pytest
from conftest import Who, backend_who, failed

WRITES = textwrap.dedent(
    """
    import os, sqlite3, tempfile, sys, py_compile
    base = sys.argv[1]
    os.makedirs(f"{base}/a", exist_ok=True); os.makedirs(f"{base}/b", exist_ok=True)
    with open(f"{base}/a/f", "w") as fh: fh.write("data")
    os.replace(f"{base}/a/f", f"{base}/b/f")                 # atomic rename across directories
    os.link(f"{base}/b/f", f"{base}/a/hard")                 # hard link
    with open(f"{base}/b/f", "r+") as fh: fh.truncate(1)      # truncate
    with tempfile.TemporaryDirectory(dir=base) as d:          # tempfile with cleanup
        open(os.path.join(d, "x"), "w").close()
    with tempfile.NamedTemporaryFile(dir=base): pass
    for mode in ("DELETE", "WAL"):                            # sqlite journals
        db = sqlite3.connect(f"{base}/db-{mode}.sqlite")
        db.execute(f"PRAGMA journal_mode={mode}")
        db.execute("CREATE TABLE t (x)"); db.execute("INSERT INTO t VALUES (1)"); db.commit()
        assert db.execute("SELECT count(*) FROM t").fetchone() == (1,)
        db.close()
    with open(f"{base}/m.py", "w") as fh: fh.write("X = 1\\n")
    py_compile.compile(f"{base}/m.py", doraise=True)
    print("ALL-WRITES-OK")
    """
)


@pytest.fixture
def who(who: Who, backend: str) -> Who:
    """Every test here runs on both Linux backends (and as root and as a user)."""
    return backend_who(who, backend)


def test_real_tool_writes_work_in_root_writable_and_tmp(who: Who, workspace: Path) -> None:
    extra = who.mkdtemp("extra-")
    for target in (workspace, extra, Path("/tmp")):
        base = target / "w" if target != Path("/tmp") else Path(tempfile.mkdtemp(dir="/tmp"))
        who.created.append(base)  # removed at the end of the session
        who.own(base.parent if target != Path("/tmp") else base)
        done = who.stockade(
            "run", "--writable", str(extra), "--", who.python, "-c", WRITES, str(base), cwd=workspace
        )
        assert done.returncode == 0, (target, done.stderr)
        assert "ALL-WRITES-OK" in done.stdout
        assert (base / "b" / "f").read_text() == "d"
        assert (base / "m.py").exists()
        assert not list(base.glob("tmp*")), "TemporaryDirectory was not cleaned up"


def test_py_compile_module_and_real_pytest_run(who: Who, workspace: Path) -> None:
    (workspace / "test_sample.py").write_text("def test_ok():\n    assert 1 + 1 == 2\n")
    (workspace / "mod.py").write_text("Y = 2\n")
    who.own(workspace)
    done = who.stockade("run", "--", who.python, "-m", "py_compile", "mod.py", cwd=workspace)
    assert done.returncode == 0, done.stderr
    assert list((workspace / "__pycache__").glob("mod.*.pyc"))
    done = who.stockade(
        "run",
        "--",
        who.python,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "test_sample.py",
        cwd=workspace,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_writes_outside_the_roots_fail(who: Who, workspace: Path) -> None:
    outside = who.mkdtemp("outside-")
    home_file = Path(who.home) / f"stockade-probe-{os.getpid()}"
    script = (
        f"echo x > {outside}/f; echo rc=$?;"
        f"echo x > {home_file}; echo rc=$?;"
        "echo x > /etc/stockade-probe; echo rc=$?;"
        f"mkdir {outside}/d; echo rc=$?;"
    )
    done = who.sandbox(script, workspace, "--profile", "workspace")
    assert failed(done, 4), done.stdout + done.stderr
    assert not (outside / "f").exists()
    assert not home_file.exists()
    assert not Path("/etc/stockade-probe").exists()
    # The same writes work outside the sandbox as this identity, so the test can fail.
    assert who.run(["sh", "-c", f"echo x > {outside}/f"], workspace).returncode == 0


def test_read_only_profile_writes_nothing(who: Who, workspace: Path) -> None:
    done = who.sandbox(
        "echo x > inroot; echo rc=$?; echo y > $TMPDIR/scratch && echo tmp-ok",
        workspace,
        "--profile",
        "read-only",
    )
    assert failed(done, 1, then=["tmp-ok"]), done.stdout + done.stderr
    assert not (workspace / "inroot").exists()


def test_symlink_and_hardlink_pointing_outside_do_not_let_writes_out(who: Who, workspace: Path) -> None:
    outside = who.mkdtemp("outside-")
    victim = outside / "victim"
    victim.write_text("original")
    who.own(outside)
    os.symlink(victim, workspace / "link")
    code = textwrap.dedent(
        f"""
        import os, errno
        results = []
        try:
            open("link", "w").write("pwned"); results.append("symlink-write-ok")
        except OSError as e: results.append(errno.errorcode[e.errno])
        try:
            os.link("{victim}", "hard"); results.append("hardlink-ok")
        except OSError as e: results.append(errno.errorcode[e.errno])
        try:
            open("/proc/self/root{victim}", "w").write("pwned"); results.append("procroot-ok")
        except OSError as e: results.append(errno.errorcode[e.errno])
        print(" ".join(results))
        """
    )
    done = who.py(code, workspace)
    assert done.returncode == 0, done.stderr
    assert "-ok" not in done.stdout, done.stdout
    assert victim.read_text() == "original"


def test_denied_paths_cannot_be_read_even_through_a_symlink_alias(who: Who, workspace: Path) -> None:
    secrets = who.mkdtemp("secrets-")
    (secrets / "key").write_text("TOPSECRET")
    (secrets / "dir").mkdir()
    (secrets / "dir" / "inner").write_text("TOPSECRET")
    (workspace / "local.env").write_text("TOPSECRET")
    who.own(secrets)
    who.own(workspace)
    os.symlink(secrets / "key", workspace / "alias")
    script = (
        f"cat {secrets}/key; echo rc=$?; cat alias; echo rc=$?; ls {secrets}/dir; echo rc=$?;"
        f"cat {secrets}/dir/inner; echo rc=$?; cat local.env; echo rc=$?;"
        f"echo new > {secrets}/dir/planted; echo rc=$?; echo more >> local.env; echo rc=$?"
    )
    done = who.sandbox(
        script,
        workspace,
        "--deny",
        str(secrets / "key"),
        "--deny",
        str(secrets / "dir"),
        "--deny",
        str(workspace) + "/*.env",
    )
    assert "TOPSECRET" not in done.stdout
    assert failed(done, 7), done.stdout + done.stderr
    assert "Permission denied" in done.stderr
    assert not (secrets / "dir" / "planted").exists()
    assert (workspace / "local.env").read_text() == "TOPSECRET"
    # Outside the sandbox the same identity reads them fine.
    assert who.run(["cat", str(secrets / "key")], workspace).stdout == "TOPSECRET"


def test_write_reopened_under_a_denied_parent(who: Who, workspace: Path) -> None:
    (workspace / "private" / "cache").mkdir(parents=True)
    (workspace / "private" / "secret").write_text("TOPSECRET")
    who.own(workspace)
    script = (
        "cat private/secret; echo rc=$?; ls private; echo rc=$?; echo ok > private/cache/f && echo cache-ok"
    )
    done = who.sandbox(
        script,
        workspace,
        "--deny",
        str(workspace / "private"),
        "--writable",
        str(workspace / "private" / "cache"),
    )
    assert "TOPSECRET" not in done.stdout
    assert failed(done, 2, then=["cache-ok"]), done.stdout + done.stderr
    assert (workspace / "private" / "cache" / "f").read_text() == "ok\n"


def test_protected_metadata_cannot_be_written_or_created(who: Who, repo: Path) -> None:
    (repo / ".codex").mkdir()
    (repo / ".codex" / "config.toml").write_text("a = 1\n")
    who.own(repo)
    attempts = [
        "echo '[core] fsmonitor = evil' >> .git/config",
        "echo evil > .git/hooks/pre-commit",
        "echo evil > .git/info/attributes",
        "echo evil > .git/config.worktree",
        "echo ../evil > .git/commondir",
        "mkdir .agents/x",
        "echo x > .codex/config.toml",
        "mkdir -p .stockade && echo 'profile = \"full-access\"' > .stockade/config.toml",
        "mv .git .git-moved",
        "rm -rf .git",
        "mv .git/hooks .git/hooks-moved",
        "rm .git/config",
    ]
    script = "; ".join(f"({a}) 2>/dev/null; echo rc=$?" for a in attempts)
    done = who.sandbox(script, repo)
    assert failed(done, len(attempts)), (list(zip(attempts, done.stdout.split(), strict=False)), done.stderr)
    assert "fsmonitor" not in (repo / ".git" / "config").read_text()
    assert not (repo / ".git" / "hooks" / "pre-commit").exists()
    assert not (repo / ".git" / "commondir").exists()
    assert not (repo / ".git" / "config.worktree").exists()
    assert (repo / ".codex" / "config.toml").read_text() == "a = 1\n"
    # Placeholders are gone afterwards: the tree is as the user left it.
    for name in (".agents", ".stockade"):
        assert not (repo / name).exists(), name
    assert who.run(["git", "status", "--porcelain"], repo).stdout == ""


def test_two_roots_both_writable_each_protected(who: Who, workspace: Path) -> None:
    other = who.mkdtemp("other-")
    script = (
        f"echo a > {workspace}/f && echo a > {other}/f && echo both-ok;"
        f"mkdir {other}/.stockade/x 2>/dev/null; echo rc=$?;"
        f"mkdir {workspace}/.agents/x 2>/dev/null; echo rc=$?"
    )
    done = who.sandbox(script, workspace, "--root", str(workspace), "--root", str(other))
    assert done.stdout.split()[0] == "both-ok" and failed(done, 2, skip=1), done.stdout + done.stderr
    assert (other / "f").exists() and (workspace / "f").exists()
    assert not (other / ".stockade").exists()


def _wheel(dest: Path) -> Path:
    """A minimal pure-Python wheel, built by hand so the test needs no network and no builder."""
    import base64
    import hashlib
    import zipfile

    files = {
        "hello_stockade/__init__.py": b"GREETING = 'hi from a wheel'\n",
        "hello_stockade-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: hello-stockade\n"
        b"Version: 1.0\n",
        "hello_stockade-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("hello_stockade-1.0.dist-info/RECORD,,")
    path = dest / "hello_stockade-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("hello_stockade-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def test_venv_and_pip_install_inside_the_workspace(who: Who, workspace: Path) -> None:
    wheel = _wheel(workspace)
    who.own(workspace)
    script = (
        f"{who.python} -m venv .venv && .venv/bin/python -m pip install -q --no-index "
        f"--disable-pip-version-check {wheel.name} && "
        ".venv/bin/python -c 'import hello_stockade; print(hello_stockade.GREETING)'"
    )
    done = who.sandbox(script, workspace)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "hi from a wheel" in done.stdout
    assert list((workspace / ".venv").glob("lib/python3*/site-packages/hello_stockade/__init__.py"))


def test_minimal_profile_sees_only_system_dirs_and_the_workspace(who: Who, workspace: Path) -> None:
    """No `:root`: the sandbox starts from an empty root and only the listed trees appear."""
    config = workspace.parent / f"{workspace.name}-minimal.toml"
    config.write_text(
        '[profiles.minimal]\n[profiles.minimal.filesystem]\n":minimal" = "read"\n'
        '":workspace_roots" = "write"\n'
    )
    config.chmod(0o644)
    outside = who.mkdtemp("hidden-")
    (outside / "f").write_text("visible?")
    who.own(outside)
    home_file = Path(who.home) / f".stockade-probe-{os.getpid()}"
    home_file.write_text("private")
    os.chown(home_file, who.uid, who.gid)
    script = (
        f"cat /etc/hostname >/dev/null && echo etc-ok; ls {outside}; echo rc=$?; "
        f"cat {home_file}; echo rc=$?; echo x > made && echo write-ok; "
        f"{who.python} -c 'print(\"python-ok\")'"
    )
    done = who.sandbox(script, workspace, "--config", str(config), "--profile", "minimal")
    lines = done.stdout.split()
    assert lines[0] == "etc-ok", done.stdout + done.stderr
    assert failed(done, 2, skip=1, then=["write-ok", "python-ok"]), done.stdout + done.stderr
    assert "private" not in done.stdout
    assert (workspace / "made").exists()
    config.unlink()
    home_file.unlink()


def test_placeholders_shared_by_concurrent_runs_and_swept_after_sigkill(who: Who, repo: Path) -> None:
    """A quick run finishing must not unprotect a long one; a killed run leaves nothing for good."""
    import signal
    import subprocess
    import time

    ready = repo / "ready"
    long_script = f"touch {ready}; sleep 2; mkdir .agents/x 2>/dev/null; echo rc=$?"
    argv = [who.python, "-m", "stockade", "run", "--", "sh", "-c", long_script]
    slow = subprocess.Popen(
        argv, cwd=repo, env=who.env(), text=True, stdout=subprocess.PIPE, **who._popen_kw()
    )  # type: ignore[call-overload]
    while not ready.exists():
        time.sleep(0.05)
    assert who.sandbox("true", repo).returncode == 0  # a second run starts and ends meanwhile
    out, _ = slow.communicate(timeout=30)
    assert out.strip().startswith("rc=") and out.strip() != "rc=0", out
    assert not (repo / ".agents").exists()

    killed = subprocess.Popen(
        [who.python, "-m", "stockade", "run", "--", "sh", "-c", f"touch {ready}2; sleep 30"],
        cwd=repo,
        env=who.env(),
        **who._popen_kw(),
    )  # type: ignore[call-overload]
    while not (repo / "ready2").exists():
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait(10)
    assert (repo / ".agents").is_dir()  # left behind by the killed run...
    time.sleep(0.5)  # ...until its sandbox is gone and the next run sweeps it
    assert who.sandbox("true", repo).returncode == 0
    assert not (repo / ".agents").exists() and not (repo / ".git" / "commondir").exists()


def test_home_credentials_are_hidden_by_default_and_overridable(who: Who, workspace: Path) -> None:
    home = Path(who.home)
    made: list[Path] = []
    for d in (home / ".ssh", home / ".aws"):
        if not d.exists():
            d.mkdir(mode=0o700)
            os.chown(d, who.uid, who.gid)
            made.append(d)
    key, hosts, creds = (
        home / ".ssh" / "id_stockade_test",
        home / ".ssh" / "known_hosts",
        home / ".aws" / "credentials",
    )
    probes = [p for p in (key, hosts, creds) if not p.exists()]
    for path, text in ((key, "PRIVATE KEY"), (hosts, "github.com ssh-ed25519 AAAA"), (creds, "aws_secret")):
        if path in probes:
            path.write_text(text)
            os.chown(path, who.uid, who.gid)
    try:
        done = who.sandbox(
            f"cat {key}; echo rc=$?; cat {creds}; echo rc=$?; ls {home}/.ssh; echo rc=$?; "
            f"cat {hosts} >/dev/null && echo hosts-ok",
            workspace,
        )
        assert "PRIVATE KEY" not in done.stdout and "aws_secret" not in done.stdout
        assert failed(done, 3, then=["hosts-ok"]), done.stdout + done.stderr
        assert who.run(["cat", str(key)], workspace).stdout == "PRIVATE KEY"  # readable outside
        config = workspace / "aws.toml"
        config.write_text(
            '[profiles.aws]\nextends = "workspace"\n[profiles.aws.filesystem]\n"~/.aws" = "read"\n'
        )
        done = who.sandbox(f"cat {creds}", workspace, "--config", str(config), "--profile", "aws")
        assert "aws_secret" in done.stdout, done.stderr
    finally:
        for path in probes:
            path.unlink()
        for d in made:
            d.rmdir()


def test_a_root_whose_name_looks_like_a_glob_is_that_directory_only(who: Who, workspace: Path) -> None:
    """`p[1]` as a pattern matches `p1`: joined unescaped, the root's own `.env` stayed readable,
    the root read-only and its sibling `p1` writable. Names of roots are never patterns."""
    root, sibling, out = workspace / "p[1]", workspace / "p1", workspace / "out*[x]"
    for d in (root, sibling, out):
        d.mkdir()
    (root / ".env").write_text("TOPSECRET")
    (root / "key.pem").write_text("TOPSECRET")
    who.own(workspace)
    script = (
        "cat .env; echo rc=$?; cat key.pem; echo rc=$?; echo x > ../p1/planted; echo rc=$?;"
        "echo ok > made && echo made; echo ok > '../out*[x]/made' && echo extra"
    )
    done = who.sandbox(script, root, "--root", str(root), "--deny", "*.pem", "--writable", str(out))
    assert "TOPSECRET" not in done.stdout
    assert failed(done, 3, then=["made", "extra"]), done.stdout + done.stderr
    assert not (sibling / "planted").exists()
    assert (root / "made").read_text() == "ok\n" and (out / "made").read_text() == "ok\n"
