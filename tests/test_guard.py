"""The Landlock backend's guard: what Landlock cannot express, held by the launcher's supervisor.

Protected metadata inside a writable workspace (`.git/config`, hooks, `.stockade`), a denied
`.env` in it, and chmod/chown/utimes/xattrs anywhere (Landlock does not mediate them). Every
attempt below tries a different way through (aliases, renames, fds, O_TMPFILE, relative paths)
and the host is checked afterwards; the same command shows what stays allowed.
"""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

from conftest import Who

ATTEMPTS = r"""
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
results = {}

def attempt(label, fn):
    try:
        fn()
        results[label] = "ok"
    except OSError as exc:
        results[label] = errno.errorcode.get(exc.errno, str(exc.errno))

def append(path):
    with open(path, "a") as fh:
        fh.write("[core]\n\tfsmonitor = evil\n")

def exchange(a, b):  # renameat2(RENAME_EXCHANGE)
    if libc.renameat2(-100, a.encode(), -100, b.encode(), 2) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")

def tmpfile_into_hooks():
    fd = os.open(".git/hooks", os.O_TMPFILE | os.O_WRONLY, 0o755)
    os.write(fd, b"#!/bin/sh\n")
    src, dst = f"/proc/self/fd/{fd}".encode(), b".git/hooks/post-merge"
    if libc.linkat(-100, src, -100, dst, 0x400) != 0:  # AT_SYMLINK_FOLLOW (os.link uses link())
        raise OSError(ctypes.get_errno(), "linkat")

def new_listener():  # a filter of our own could take the guard's notifications first
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    allow = ctypes.create_string_buffer(b"\x06\x00\x00\x00\x00\x00\xff\x7f", 8)  # ret ALLOW
    libc.prctl(38, 1, 0, 0, 0)  # no_new_privs, which an unprivileged filter needs
    nr = {"x86_64": 317, "aarch64": 277}[os.uname().machine]
    if libc.syscall(nr, 1, 8, ctypes.byref(Fprog(1, ctypes.addressof(allow)))) < 0:
        raise OSError(ctypes.get_errno(), "seccomp")

open("alias-target", "w").write("x")
# Each attempt leaves what the next ones need in place when it succeeds (run unsandboxed too).
attempt("read .git/config", lambda: open(".git/config").read())  # allowed: read-only, not hidden
attempt("write config", lambda: append(".git/config"))
attempt("truncate config (O_TRUNC)", lambda: open(".git/config", "w").close())
attempt("truncate config (truncate)", lambda: os.truncate(".git/config", 0))
attempt("symlink alias", lambda: (os.symlink(".git/config", "alias"), append("alias")))
attempt("hard link alias", lambda: os.link(".git/config", "hard"))
attempt("chmod config", lambda: os.chmod(".git/config", 0o644))
attempt("fchmod config", lambda: os.fchmod(os.open(".git/config", os.O_RDONLY), 0o644))
attempt("chown config", lambda: os.chown(".git/config", os.getuid(), os.getgid()))
attempt("utime config", lambda: os.utime(".git/config", (0, 0)))
attempt("xattr config", lambda: os.setxattr(".git/config", "user.x", b"1"))
attempt("chmod outside", lambda: os.chmod(sys.argv[2], 0o600))
attempt("utime outside", lambda: os.utime(sys.argv[2], (0, 0)))
attempt("new hook", lambda: open(".git/hooks/pre-commit", "w").write("#!/bin/sh\n"))
attempt("hook via dir symlink", lambda: (os.symlink(".git/hooks", "hk"), open("hk/post-checkout", "w")))
attempt("hook via dangling symlink", lambda: (os.symlink(".git/hooks/pre-push", "dang"), open("dang", "w")))
attempt("hook via O_TMPFILE", tmpfile_into_hooks)
attempt("remove sample hook", lambda: os.unlink(".git/hooks/pre-commit.sample"))
attempt("mkdir in hooks", lambda: os.mkdir(".git/hooks/d"))
attempt("hook relative to cwd", lambda: (os.chdir(".git/hooks"), open("update", "w")))
os.chdir(sys.argv[1])
attempt("stockade config", lambda: os.mkdir(".stockade/x"))
attempt("read .env", lambda: open(".env").read())
attempt("link .env", lambda: os.link(".env", "env-copy"))
attempt("rename .env", lambda: os.rename(".env", "env-moved"))
attempt("exchange with config", lambda: exchange("alias-target", ".git/config"))
attempt("rename over config", lambda: os.rename("alias-target", ".git/config"))
attempt("rename config away", lambda: os.rename(".git/config", "stolen"))
attempt("rename .git", lambda: os.rename(".git", "old-git"))
# What stays allowed, through the same guard:
open("tool.sh", "w").write("#!/bin/sh\necho tool\n")
attempt("chmod workspace file", lambda: os.chmod("tool.sh", 0o755))
attempt("utime workspace file", lambda: os.utime("tool.sh", (0, 0)))
attempt("link and rename", lambda: (os.link("tool.sh", "t2"), os.rename("t2", "t3"), os.unlink("t3")))
attempt("mkdir and rmdir", lambda: (os.mkdir("d"), os.rmdir("d")))
attempt("symlink in workspace", lambda: (os.symlink("tool.sh", "s"), open("s").read()))
def fifo():
    os.mkfifo("f")
    if os.fork() == 0:
        open("f", "w").write("through")
        os._exit(0)
    results["fifo read"] = open("f").read()
    os.wait()
attempt("fifo", fifo)
attempt("own notify filter", new_listener)  # last: it stays installed in this process
print(json.dumps(results))
"""

REFUSED = [
    "write config", "truncate config (O_TRUNC)", "truncate config (truncate)", "symlink alias",
    "hard link alias", "rename config away", "rename over config", "exchange with config",
    "rename .git", "new hook", "hook via dir symlink", "hook via dangling symlink",
    "hook via O_TMPFILE", "remove sample hook", "mkdir in hooks", "hook relative to cwd",
    "stockade config", "chmod config", "fchmod config", "chown config", "utime config",
    "xattr config", "chmod outside", "utime outside", "read .env", "link .env", "rename .env",
    "own notify filter",
]  # fmt: skip
ALLOWED = [
    "chmod workspace file", "utime workspace file", "read .git/config", "link and rename",
    "mkdir and rmdir", "symlink in workspace", "fifo",
]  # fmt: skip


def digest(path: Path) -> str:
    """Contents, mode and mtime of every file below `path` (or of `path` itself)."""
    paths = sorted(path.rglob("*")) if path.is_dir() else [path]
    h = hashlib.sha256()
    for p in [path, *paths]:
        st = p.lstat()
        h.update(f"{p}:{stat.S_IMODE(st.st_mode)}:{st.st_mtime_ns}:{st.st_uid}".encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_guarded_entries_hold_against_every_way_through(who: Who, repo: Path) -> None:
    (repo / ".env").write_text("API_KEY=SECRET\n")
    (repo / ".stockade").mkdir()
    outside = who.mkdtemp("outside-") / "notes.txt"
    outside.write_text("mine")
    for path in (repo, outside.parent):
        who.own(path)
    assert (repo / ".git/hooks/pre-commit.sample").exists()
    # First, outside any sandbox: every one of those attempts would succeed.
    before = {p: digest(repo / p) for p in (".git/config", ".git/hooks", ".env", ".stockade")}
    before["outside"] = digest(outside)
    done = who.stockade(
        "run", "--backend", "landlock", "--", who.python, "-c", ATTEMPTS, str(repo), str(outside), cwd=repo
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    wrong = {k: v for k, v in results.items() if k in REFUSED and v == "ok"}
    assert not wrong, f"got through: {wrong}"
    assert all(results[k] == "ok" for k in ALLOWED if k != "fifo"), results
    assert results["fifo read"] == "through", results
    assert "SECRET" not in done.stdout
    after = {p: digest(repo / p) for p in (".git/config", ".git/hooks", ".env", ".stockade")}
    after["outside"] = digest(outside)
    assert after == before, "a guarded entry changed on the host"
    assert (repo / ".git").is_dir() and not (repo / "old-git").exists()
    assert stat.S_IMODE((repo / "tool.sh").stat().st_mode) == 0o755


def test_the_same_attempts_succeed_unsandboxed(who: Who, repo: Path) -> None:
    """The test above means something only because each attempt works without the sandbox."""
    (repo / ".env").write_text("API_KEY=SECRET\n")
    (repo / ".stockade").mkdir()
    outside = who.mkdtemp("outside-") / "notes.txt"
    outside.write_text("mine")
    for path in (repo, outside.parent):
        who.own(path)
    done = who.run([who.python, "-c", ATTEMPTS, str(repo), str(outside)], repo)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    unsupported = ("ENOTSUP", "EOPNOTSUPP")  # user xattrs, on a filesystem without them
    assert {k: v for k, v in results.items() if v != "ok" and v not in unsupported} == {
        "fifo read": "through"
    }, results
