"""Building a Plan must not need POSIX-only calls: what Windows lacks (uids, `pwd`) has a stand-in,
and the walks up a path end at any root, `C:\\` as well as `/`. Checked here on Linux."""

from __future__ import annotations

import ntpath
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from stockade import plan as plan_module
from stockade import state
from stockade.plan import Context, PathRule, _Builder, _user_name, home_dir, nearest_access


def test_home_is_userprofile_on_windows_and_home_elsewhere() -> None:
    both = {"USERPROFILE": "C:\\Users\\alice", "HOME": "/c/Users/alice"}
    assert home_dir(both, "nt") == "C:\\Users\\alice"
    assert home_dir({"HOME": "C:\\msys\\home\\alice"}, "nt") == "C:\\msys\\home\\alice"
    assert home_dir(both, "posix") == "/c/Users/alice"
    assert home_dir({"USERPROFILE": "C:\\Users\\alice"}, "posix") == os.path.expanduser("~")
    assert home_dir({"HOME": ""}, "posix") == os.path.expanduser("~")  # empty: as unset
    assert Context.current(env={"HOME": "/h"}).home == "/h"  # Linux: unchanged


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="simulates Windows on a POSIX host (uids)")
def test_without_a_uid_the_user_name_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = Context.current(env={"HOME": "/h", "USERNAME": "alice", "USER": "bob"})
    assert ctx.uid == os.getuid()  # Linux: the real uid, as before
    monkeypatch.delattr(os, "getuid")  # as on Windows
    assert Context.current(env={"HOME": "/h"}).uid == -1
    monkeypatch.setitem(sys.modules, "pwd", None)  # `import pwd` fails, as on Windows
    assert _user_name(ctx) == "alice"
    assert _user_name(Context.current(env={"HOME": "/h", "USER": "bob"})) == "bob"


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="simulates Windows on a POSIX host (uids)")
def test_no_uid_means_no_safe_directory_guess(tmp_path: Path) -> None:
    """Windows reports uid 0 for every file: comparing it with -1 would trust every root."""
    (tmp_path / ".git").mkdir()
    env: dict[str, str] = {}
    plan_module._safe_directory(env, (str(tmp_path),), -1)
    assert env == {}
    plan_module._safe_directory(env, (str(tmp_path),), os.getuid() + 1)  # another owner: trusted
    assert env == {
        "GIT_CONFIG_KEY_0": "safe.directory",
        "GIT_CONFIG_VALUE_0": str(tmp_path),
        "GIT_CONFIG_COUNT": "1",
    }


def test_walking_up_ends_at_a_drive_root_and_at_a_relative_path(monkeypatch: pytest.MonkeyPatch) -> None:
    win = {"C:\\Users\\alice\\repo": "write"}
    monkeypatch.setattr(plan_module, "os", SimpleNamespace(path=ntpath))  # plan.py's os.path on Windows
    assert nearest_access(win, "C:\\Users\\alice\\repo\\src\\a.py") == "write"
    assert nearest_access(win, "C:\\Users\\bob\\x") is None  # ends at the drive root, no endless loop
    assert nearest_access(win, "D:\\") is None
    builder = _Builder.__new__(_Builder)
    builder.entries = {"C:\\Users": PathRule("C:\\Users", "read", "dir", "test", "C:\\Users")}
    assert builder.effective("C:\\Users\\alice\\x") == "read" and builder.effective("D:\\x") is None
    monkeypatch.undo()
    assert nearest_access({"/": "read"}, "/usr/bin") == "read"  # Linux: as before
    assert nearest_access({"/usr": "read"}, "/etc/passwd") is None
    assert nearest_access({"/usr": "read"}, "relative/path") is None


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="simulates Windows on a POSIX host (uids)")
def test_without_uids_a_state_dir_candidate_is_judged_by_its_kind_alone(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # group/other-writable: never trusted where ownership can be checked
    assert not state._usable(str(shared), os.getuid())
    assert state._usable(str(shared), None)  # Windows: mode bits say nothing, ACLs decide
    link = tmp_path / "link"
    link.symlink_to(shared)
    assert not state._usable(str(link), None)  # never a symlink, with or without uids


def test_stockade_imports_without_the_posix_only_modules() -> None:
    """What Windows lacks (fcntl, pwd, termios, resource, grp) is imported where it is used,
    so `import stockade`, the CLI and the Windows backend load there."""
    code = textwrap.dedent(
        """
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name in {"fcntl", "pwd", "termios", "resource", "grp"}:
                    raise ImportError(f"no {name} here")
        sys.meta_path.insert(0, Block())
        for name in [n for n in sys.modules if n in {"fcntl", "pwd", "termios", "resource", "grp"}]:
            del sys.modules[name]
        import stockade, stockade.cli, stockade.backends.windows, stockade.placeholders
        import stockade.backends.seatbelt  # explain --platform macos renders anywhere
        print("imported")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "imported\n", done.stderr
