"""Placeholders on Windows: the runs share them through LockFileEx (`stockade.filelock`) as they
do through flock(2) on POSIX. Checked in the official Windows CPython under Wine, whose LockFileEx
has shared and exclusive locks, with real processes and no stand-in for the lock; the lock's
semantics are checked on Linux natively too, with the same code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from wine import WinPython

# The same checks on both systems: two opens of one file conflict as two processes would
# (flock(2) locks an open file, LockFileEx a handle). ARGS[0] is the lock file.
LOCK_SEMANTICS = """
import threading, time
from stockade.filelock import FileLock
path = ARGS[0]
a, b = FileLock(path), FileLock(path)
assert a.try_exclusive(), "alone: exclusive"
assert a.try_exclusive(), "taken again by its holder"
assert not b.try_exclusive(), "held exclusively by another"
a.shared()  # exclusive -> shared
b.shared()  # shared beside shared
assert not a.try_exclusive(), "another holds it shared"
b.close()
assert a.try_exclusive(), "alone again"
got, b2 = threading.Event(), FileLock(path)
waiter = threading.Thread(target=lambda: (b2.shared(), got.set()))
waiter.start()
time.sleep(0.5)
assert not got.is_set(), "shared() waits while another holds it exclusively"
a.shared()  # the waiter gets in beside it
assert got.wait(20), "shared() got it once it was shared"
waiter.join()
a.close()
b2.close()
c = FileLock(path)
assert c.try_exclusive(), "closing released everything"
c.close()
print("lock-ok")
"""

# Runs in Windows CPython: ARGS = [workspace, items as JSON, marker files...]; `items` are
# stockade Placeholders under the workspace, named with "/" here and joined with "\\" there.
PRELUDE = """
import ctypes, json, os, sys, time
from stockade.placeholders import Placeholders
from stockade.plan import Placeholder
from stockade.state import state_dir
root = ARGS[0]
items = [Placeholder(os.path.join(root, *p.split("/")), k) for p, k in json.loads(ARGS[1])]

def wait_for(path):
    for _ in range(1200):
        if os.path.exists(path):
            return
        time.sleep(0.05)
    raise SystemExit(f"{path} never appeared")

def state():
    out = {}
    for item in items:
        if os.path.isdir(item.path):
            out[item.path] = "dir"
        elif os.path.isfile(item.path):
            with open(item.path, "rb") as fh:
                out[item.path] = "file:" + fh.read().decode()
    return out
"""

ITEMS = [
    [".agents", "dir"],
    [".git/commondir", "commondir"],
    [".codex/deep/config.toml", "file"],  # with two missing parents
]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def ws(winpy: WinPython) -> tuple[Path, dict[str, str]]:
    """A workspace with a `.git` directory and a README, and the env giving a fresh state dir."""
    root = winpy.mkdtemp()
    (root / ".git").mkdir()
    (root / "README.md").write_text("hello\n")
    state = winpy.mkdtemp("state-")
    return root, {"XDG_STATE_HOME": winpy.win(state)}  # state_dir() is $XDG_STATE_HOME\stockade


def journals_of(env: dict[str, str], winpy: WinPython) -> list[Path]:
    """The placeholder journals in the state directory (one per run that created any)."""
    xdg = env["XDG_STATE_HOME"]
    assert xdg.startswith("C:\\")
    return sorted(winpy.drive_c.joinpath(*xdg[3:].split("\\"), "stockade").glob("placeholders*.journal"))


def run(winpy: WinPython, code: str, root: Path, env: dict[str, str], *args: str) -> str:
    done = winpy.run(PRELUDE + textwrap.dedent(code), winpy.win(root), *args, cwd=root, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def in_thread(fn: Callable[[], subprocess.CompletedProcess[str]]) -> tuple[threading.Thread, list]:
    out: list[subprocess.CompletedProcess[str]] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def wait_for(path: Path, thread: threading.Thread, out: list) -> None:
    deadline = time.monotonic() + 90
    while not path.exists():
        assert thread.is_alive(), out and out[0].stdout + out[0].stderr
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


# -- Linux, natively ---------------------------------------------------------------------------
def test_the_lock_on_linux(tmp_path: Path) -> None:
    code = textwrap.dedent(LOCK_SEMANTICS)
    done = subprocess.run(
        [sys.executable, "-c", f"import sys; ARGS = sys.argv[1:]\n{code}", str(tmp_path / "lock")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout == "lock-ok\n", done.stdout + done.stderr


def test_without_any_file_lock_placeholders_are_refused_with_the_reason(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name in {"fcntl", "msvcrt"}:
                    raise ModuleNotFoundError(f"no {name} here")  # what subprocess expects
        sys.meta_path.insert(0, Block())
        sys.modules.pop("fcntl", None)
        from stockade.errors import StockadeError
        from stockade.placeholders import Placeholders
        from stockade.plan import Placeholder
        try:
            Placeholders([Placeholder(sys.argv[1], "dir")]).__enter__()
        except StockadeError as exc:
            print(exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / ".agents")], capture_output=True, text=True, timeout=60
    )
    assert "neither flock(2) nor LockFileEx" in done.stdout and "nothing was run" in done.stdout, (
        done.stdout + done.stderr
    )
    assert not (tmp_path / ".agents").exists()


# -- Windows CPython under Wine ----------------------------------------------------------------
def test_the_lock_on_windows(winpy: WinPython) -> None:
    where = winpy.mkdtemp("lock-")
    done = winpy.run(textwrap.dedent(LOCK_SEMANTICS), winpy.win(where / "lock"), cwd=where)
    assert done.returncode == 0 and done.stdout.strip() == "lock-ok", done.stdout + done.stderr


def test_a_run_creates_its_placeholders_and_removes_them_after(
    winpy: WinPython, ws: tuple[Path, dict[str, str]]
) -> None:
    root, env = ws
    before = tree(root)
    out = run(
        winpy,
        """
        with Placeholders(items) as run:
            inside = state()
            with open(run.journal, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        after = os.path.exists(run.journal)
        print(json.dumps({"inside": inside, "journal": lines, "after": after, "state": state()}))
        """,
        root,
        env,
        json.dumps(ITEMS),
    )
    data = json.loads(out)
    win = winpy.win(root)
    assert data["inside"] == {
        f"{win}\\.agents": "dir",
        f"{win}\\.git\\commondir": "file:.\n",
        f"{win}\\.codex\\deep\\config.toml": "file:",
    }
    # Journaled with their Windows names, missing parents first, before each exists.
    assert data["journal"] == [
        f"dir\t{win}\\.agents",
        f"commondir\t{win}\\.git\\commondir",
        f"dir\t{win}\\.codex",
        f"dir\t{win}\\.codex\\deep",
        f"file\t{win}\\.codex\\deep\\config.toml",
    ]
    assert data["after"] is False and data["state"] == {}  # swept, and the run's journal is gone
    assert tree(root) == before


def test_a_name_that_differs_from_the_disk_only_in_case_is_not_a_symlink(
    winpy: WinPython, ws: tuple[Path, dict[str, str]]
) -> None:
    """Windows names are case-insensitive: realpath() gives the disk's case, and that must not
    read as "a parent directory is a symlink" (which refuses the run)."""
    root, env = ws
    before = tree(root)
    out = run(
        winpy,
        """
        items = [Placeholder(os.path.join(root.upper(), *p.split("/")), k) for p, k in json.loads(ARGS[1])]
        with Placeholders(items):
            print(json.dumps(state()))
        print(json.dumps(state()))
        """,
        root,
        env,
        json.dumps(ITEMS),
    )
    inside, after = (json.loads(line) for line in out.splitlines())
    assert len(inside) == 3 and after == {}
    assert tree(root) == before


def test_a_run_ending_does_not_remove_what_a_live_run_needs(
    winpy: WinPython, ws: tuple[Path, dict[str, str]]
) -> None:
    root, env = ws
    before = tree(root)
    ready, go = root.parent / f"{root.name}.ready", root.parent / f"{root.name}.go"
    holder = """
    with Placeholders(items):
        with open(ARGS[2], "w") as fh:
            fh.write("in")
        wait_for(ARGS[3])
        print(json.dumps(state()))  # still all there after the other run ended
    """
    thread, out = in_thread(
        lambda: winpy.run(
            PRELUDE + textwrap.dedent(holder),
            winpy.win(root),
            json.dumps(ITEMS),
            winpy.win(ready),
            winpy.win(go),
            cwd=root,
            env=env,
        )
    )
    try:
        wait_for(ready, thread, out)
        # A second run with one more placeholder starts and ends while the first is alive.
        second = run(
            winpy,
            """
            with Placeholders(items):
                print(json.dumps(state()))
            """,
            root,
            env,
            json.dumps([*ITEMS, [".stockade", "dir"]]),
        )
        assert len(json.loads(second)) == 4
        for name in (".agents", ".git/commondir", ".codex/deep/config.toml", ".stockade"):
            assert (root / name).exists(), f"{name} was removed while a run was using it"
        assert (root / ".git" / "commondir").read_text() == ".\n"
    finally:
        go.write_text("go")
        thread.join(120)
    assert out and out[0].returncode == 0, out and out[0].stdout + out[0].stderr
    assert len(json.loads(out[0].stdout)) == 3
    # The last run out swept everything, the other run's placeholder too.
    assert tree(root) == before
    assert journals_of(env, winpy) == []


def test_a_killed_run_leaves_its_journal_and_the_next_run_sweeps_it(
    winpy: WinPython, ws: tuple[Path, dict[str, str]]
) -> None:
    root, env = ws
    before = tree(root)
    killed = winpy.run(
        PRELUDE
        + textwrap.dedent(
            """
            kernel32 = ctypes.WinDLL("kernel32")
            kernel32.GetCurrentProcess.restype = ctypes.c_void_p
            kernel32.TerminateProcess.argtypes = (ctypes.c_void_p, ctypes.c_uint)
            with Placeholders(items):
                print(json.dumps(state()), flush=True)
                kernel32.TerminateProcess(kernel32.GetCurrentProcess(), 9)  # no __exit__, no finally
            print("not reached")
            """
        ),
        winpy.win(root),
        json.dumps(ITEMS),
        cwd=root,
        env=env,
    )
    assert killed.returncode == 9 and len(json.loads(killed.stdout)) == 3, killed.stdout + killed.stderr
    assert (root / ".agents").is_dir() and (root / ".codex" / "deep" / "config.toml").is_file()
    (left,) = journals_of(env, winpy)  # left behind
    assert b".agents" in left.read_bytes()

    # The next run (with other placeholders) holds the lock alone: it sweeps on its way in.
    out = run(
        winpy,
        """
        leftovers = state()
        items = [Placeholder(os.path.join(root, ".stockade"), "dir")]
        with Placeholders(items):
            print(json.dumps({"before": leftovers, "inside": state()}))
        """,
        root,
        env,
        json.dumps(ITEMS),
    )
    data = json.loads(out)
    assert len(data["before"]) == 3  # the killed run's, still there when it started
    assert data["inside"] == {f"{winpy.win(root)}\\.stockade": "dir"}  # and gone once it is in
    assert tree(root) == before
    assert journals_of(env, winpy) == []


def test_journals_of_dead_runs_are_swept_deepest_first_on_linux(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each run journals on its own; a sweep reads them all and removes children before parents,
    whichever run made which: run A made `.codex`, run B the file inside it."""
    import stockade.placeholders
    from stockade.placeholders import Placeholders
    from stockade.plan import Placeholder

    root = tmp_path / "ws"
    (root / ".codex").mkdir(parents=True)
    (root / ".codex" / "config.toml").write_bytes(b"")
    (root / ".kept").mkdir()
    (root / ".kept" / "user-file").write_text("the user's, not ours")
    state = tmp_path / "state" / "stockade"
    state.mkdir(parents=True, mode=0o700)
    monkeypatch.setattr(stockade.placeholders, "state_dir", lambda: str(state))  # (it is cached)
    (state / "placeholders.1-a.journal").write_text(f"dir\t{root}/.codex\ndir\t{root}/.kept\n")
    (state / "placeholders.2-b.journal").write_text(f"file\t{root}/.codex/config.toml\n")
    with Placeholders([Placeholder(str(root / ".agents"), "dir")]):
        assert sorted(p.name for p in root.iterdir()) == [".agents", ".kept"]
        assert len(list(state.glob("placeholders*.journal"))) == 1  # only this run's
    assert sorted(p.name for p in root.iterdir()) == [".kept"]  # not empty: never ours to remove
    assert list(state.glob("placeholders*.journal")) == []
