"""Invariant 6: what runs inside cannot reach the host through side doors.

Each test first shows the door is open outside the sandbox (same identity), so it can fail.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Who

_names = itertools.count()
CONNECT_TCP = (
    "import socket, sys\n"
    "socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=3)\n"
    "print('CONNECTED')"
)
CONNECT_UNIX = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(3)
    s.connect(sys.argv[1].replace("@", "\\0", 1) if sys.argv[1].startswith("@") else sys.argv[1])
    print("CONNECTED")
    """
)


def _serve(server: socket.socket) -> None:
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        conn.close()


def _stop(server: socket.socket) -> None:
    server.shutdown(socket.SHUT_RDWR)  # wakes the accept() in the serving thread
    server.close()


@pytest.fixture
def tcp_listener() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_serve, args=(server,), daemon=True).start()
    yield server.getsockname()[1]
    _stop(server)


@pytest.fixture
def unix_listener(who: Who) -> Iterator[str]:
    path = str(who.mkdtemp("sock-") / "host.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chmod(path, 0o777)
    server.listen()
    threading.Thread(target=_serve, args=(server,), daemon=True).start()
    yield path
    _stop(server)


@pytest.fixture
def abstract_listener() -> Iterator[str]:
    name = f"stockade-test-{os.getpid()}-{next(_names)}"
    server = socket.socket(socket.AF_UNIX)
    server.bind("\0" + name)
    server.listen()
    threading.Thread(target=_serve, args=(server,), daemon=True).start()
    yield "@" + name
    _stop(server)


def _inside(who: Who, cwd: Path, code: str, *args: str, flags: tuple[str, ...] = ()) -> str:
    done = who.stockade("run", *flags, "--", who.python, "-c", code, *args, cwd=cwd)
    return done.stdout + done.stderr


def _outside(who: Who, cwd: Path, code: str, *args: str) -> str:
    done = who.run([who.python, "-c", code, *args], cwd)
    return done.stdout + done.stderr


def test_host_tcp_listener_unreachable_unless_network_on(
    who: Who, workspace: Path, tcp_listener: int
) -> None:
    port = str(tcp_listener)
    assert "CONNECTED" in _outside(who, workspace, CONNECT_TCP, port)
    assert "CONNECTED" not in _inside(who, workspace, CONNECT_TCP, port)
    assert "CONNECTED" in _inside(who, workspace, CONNECT_TCP, port, flags=("--network", "on"))


def test_loopback_inside_the_sandbox_works(who: Who, workspace: Path) -> None:
    code = textwrap.dedent(
        """
        import socket, threading
        server = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=lambda: server.accept()[0].sendall(b"pong"), daemon=True).start()
        client = socket.create_connection(server.getsockname(), timeout=3)
        print(client.recv(4).decode())
        """
    )
    assert "pong" in _inside(who, workspace, code)


def test_host_unix_socket_unreachable_also_with_network_on(
    who: Who, workspace: Path, unix_listener: str
) -> None:
    assert "CONNECTED" in _outside(who, workspace, CONNECT_UNIX, unix_listener)
    assert "CONNECTED" not in _inside(who, workspace, CONNECT_UNIX, unix_listener)
    assert "CONNECTED" not in _inside(who, workspace, CONNECT_UNIX, unix_listener, flags=("--network", "on"))


def test_host_unix_socket_in_a_writable_root_is_masked(who: Who, workspace: Path) -> None:
    path = str(workspace / "dev.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chmod(path, 0o777)
    server.listen()
    threading.Thread(target=_serve, args=(server,), daemon=True).start()
    try:
        assert "CONNECTED" in _outside(who, workspace, CONNECT_UNIX, path)
        assert "CONNECTED" not in _inside(who, workspace, CONNECT_UNIX, path)
    finally:
        _stop(server)


def test_host_abstract_socket_unreachable(who: Who, workspace: Path, abstract_listener: str) -> None:
    assert "CONNECTED" in _outside(who, workspace, CONNECT_UNIX, abstract_listener)
    assert "CONNECTED" not in _inside(who, workspace, CONNECT_UNIX, abstract_listener)


def test_unix_sockets_inside_keep_working(who: Who, workspace: Path) -> None:
    code = textwrap.dedent(
        """
        import multiprocessing, socket
        def square(x): return x * x
        if __name__ == "__main__":
            a, b = socket.socketpair(); a.sendall(b"hi"); assert b.recv(2) == b"hi"
            with multiprocessing.get_context("forkserver").Pool(2) as pool:
                print("POOL", sum(pool.map(square, range(10))))
        """
    )
    (workspace / "mp.py").write_text(code)
    who.own(workspace)
    done = who.stockade("run", "--", who.python, "mp.py", cwd=workspace)
    assert "POOL 285" in done.stdout, done.stderr


def test_no_signals_to_host_processes(who: Who, workspace: Path) -> None:
    victim = subprocess.Popen(["sleep", "60"], **who._popen_kw())  # type: ignore[call-overload]
    try:
        code = (
            f"import os\ntry:\n    os.kill({victim.pid}, 15); print('KILLED')\n"
            "except OSError as e: print(e.errno)"
        )
        out = _inside(who, workspace, code)
        assert "KILLED" not in out
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_proc_shows_only_the_sandbox(who: Who, workspace: Path) -> None:
    code = "import os; print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))"
    pids = eval(_inside(who, workspace, code).strip().splitlines()[-1])
    assert os.getpid() not in pids
    assert max(pids) < 10, pids


PTRACE = textwrap.dedent(
    """
    import ctypes, os, errno, time
    libc = ctypes.CDLL(None, use_errno=True)
    child = os.fork()
    if child == 0:
        time.sleep(5); os._exit(0)
    out = []
    for request, pid in ((16, child), (0, 0)):  # PTRACE_ATTACH, PTRACE_TRACEME
        rc = libc.ptrace(request, pid, None, None)
        out.append("OK" if rc == 0 else errno.errorcode[ctypes.get_errno()])
    os.kill(child, 9)
    print(*out)
    """
)


def test_ptrace_refused(who: Who, workspace: Path) -> None:
    out = _inside(who, workspace, PTRACE)
    assert out.split()[-2:] == ["EPERM", "EPERM"], out


TIOCSTI = textwrap.dedent(
    """
    import fcntl, os, termios, errno
    master, slave = os.openpty()
    out = []
    for cmd in (termios.TIOCSTI, termios.TIOCSTI | (1 << 32)):
        try:
            fcntl.ioctl(slave, cmd, b"x"); out.append("INJECTED")
        except OSError as e: out.append(errno.errorcode[e.errno])
    try:
        os.open("/dev/tty", os.O_RDWR); out.append("HAS-TTY")
    except OSError as e: out.append(errno.errorcode[e.errno])
    print(*out)
    """
)


def test_terminal_injection_refused(who: Who, workspace: Path) -> None:
    out = _inside(who, workspace, TIOCSTI)
    assert "INJECTED" not in out and "HAS-TTY" not in out, out
    assert out.split()[-3:-1] == ["EPERM", "EPERM"], out


KERNEL_SURFACE = textwrap.dedent(
    """
    import ctypes, errno, os, socket
    libc = ctypes.CDLL(None, use_errno=True)
    out = []
    out.append("USERNS" if libc.unshare(0x10000000) == 0 else errno.errorcode[ctypes.get_errno()])
    params = ctypes.create_string_buffer(120)
    out.append("URING" if libc.syscall(425, 8, params) >= 0 else errno.errorcode[ctypes.get_errno()])
    try:
        socket.socket(40, socket.SOCK_STREAM); out.append("VSOCK")
    except OSError as e: out.append(errno.errorcode[e.errno])
    print(*out)
    """
)


def test_namespaces_io_uring_and_vsock_refused(who: Who, workspace: Path) -> None:
    out = _inside(who, workspace, KERNEL_SURFACE)
    assert out.split()[-3:] == ["EPERM", "EPERM", "EAFNOSUPPORT"], out
    out = _inside(who, workspace, KERNEL_SURFACE, flags=("--network", "on"))
    assert out.split()[-3:] == ["EPERM", "EPERM", "EAFNOSUPPORT"], out
