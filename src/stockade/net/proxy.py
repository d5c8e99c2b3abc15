"""The filtering proxy: HTTP (absolute-URI requests and CONNECT) and SOCKS5 on one listener.

It runs in the stockade process and listens on a unix socket that only the command's sandbox
can reach (through the bridge, see backends/bridge.c). Every request names a host; the proxy
decides with the HostRules, resolves the name itself, refuses addresses that are local when
the name is not allowed to be, and connects to the very address it checked (no second
resolution). Denied HTTP requests get a 403 whose body names the rule; SOCKS5 gets "not allowed
by ruleset". Every decision becomes an Event.

Plain threads and blocking sockets, one thread per direction of a connection: a relay then
moves bytes with splice(2) through a 1 MiB pipe, so they never enter Python and are not copied
on the way (an asyncio relay measured 13% of direct throughput here, recv_into/sendall about
60%, splice about 90%: bench_proxy.py).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import IO

from .rules import Decision, HostRules, RuleError, normalize_host, parse_address, unmapped

try:
    import fcntl
except ImportError:  # Windows: tunnels are copied, never spliced
    fcntl = None  # type: ignore[assignment]

HEAD_LIMIT = 64 * 1024
CHUNK = 1 << 20
F_SETPIPE_SZ = 1031


@dataclass(frozen=True)
class Event:
    """One decision of the proxy, for the audit trail (`--log-network`)."""

    time: float
    command: str
    protocol: str  # "http", "connect", "socks5"
    host: str
    port: int
    address: str  # what it connected to (or would have); "" when it never resolved
    rule: str
    allowed: bool

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class Blocked(Exception):
    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"stockade: blocked {host}:{port} ({reason})")


class FilteringProxy:
    def __init__(
        self,
        rules: HostRules,
        *,
        command: str = "",
        hosts: Mapping[str, list[str]] | None = None,
        on_event: Callable[[Event], None] | None = None,
        head_timeout: float = 10.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.rules, self.command, self.on_event = rules, command, on_event
        self.hosts = {normalize_host(k): list(v) for k, v in (hosts or {}).items()}
        self.head_timeout, self.connect_timeout = head_timeout, connect_timeout
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()  # every live socket, so close() can cut them
        self.closed = False

    # --- deciding and connecting ---------------------------------------------------------

    def _record(self, protocol: str, host: str, port: int, address: str, decision: Decision) -> None:
        allowed = decision.allowed
        event = Event(time.time(), self.command, protocol, host, port, address, decision.rule, allowed)
        with self._lock:
            self.events.append(event)
            if self.on_event is not None:
                self.on_event(event)

    def open(self, protocol: str, raw_host: str, port: int) -> socket.socket:
        """Decide, resolve, check and connect; Blocked (logged) when any step says no."""
        address = parse_address(raw_host)
        if address is not None:
            address = unmapped(address)
            decision = self.rules.decide_address(address, port, named=False)
            self._record(protocol, str(address), port, str(address), decision)
            if not decision.allowed:
                raise Blocked(str(address), port, decision.rule)
            return self._connect(str(address), port, str(address))
        try:
            host = normalize_host(raw_host)
        except RuleError as exc:
            decision = Decision(False, f"malformed host name: {exc.problem}")
            self._record(protocol, raw_host.encode("unicode_escape").decode(), port, "", decision)
            raise Blocked(repr(raw_host), port, decision.rule) from None
        decision = self.rules.decide_name(host, port)
        if not decision.allowed:
            self._record(protocol, host, port, "", decision)
            raise Blocked(host, port, decision.rule)
        refused = ""
        for text in self._resolve(host, port):
            resolved = unmapped(ipaddress.ip_address(text))
            checked = self.rules.decide_address(resolved, port, named=True)
            if checked.allowed:
                self._record(protocol, host, port, str(resolved), decision)
                return self._connect(str(resolved), port, host)
            refused = checked.rule
        reason = refused or "the name does not resolve"
        self._record(protocol, host, port, "", Decision(False, reason))
        raise Blocked(host, port, reason)

    def _resolve(self, host: str, port: int) -> list[str]:
        if host in self.hosts:
            return self.hosts[host]
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            return []
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    def _connect(self, address: str, port: int, host: str) -> socket.socket:
        try:
            upstream = socket.create_connection((address, port), timeout=self.connect_timeout)
        except OSError as exc:
            raise ConnectionError(f"stockade: {host}:{port} ({address}) did not answer: {exc}") from None
        upstream.settimeout(None)
        return upstream

    # --- one client connection --------------------------------------------------------------

    def handle(self, client: socket.socket) -> None:
        """Serve one connection from the sandbox, start to end (its own thread)."""
        upstream = None
        deadline = time.monotonic() + self.head_timeout
        try:
            self._track(client)
            client.settimeout(self.head_timeout)
            first = client.recv(1)
            if first == b"\x05":
                upstream = self._socks5(client, deadline)
            elif first:
                upstream = self._http(first, client, deadline)
            if upstream is not None:
                self._track(upstream)
                client.settimeout(None)
                self._relay(client, upstream)
        except (OSError, ValueError):
            pass  # a client that went away or spoke nonsense: nothing to tell it
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    self._untrack(sock)
                    sock.close()

    def _http(self, first: bytes, client: socket.socket, deadline: float) -> socket.socket | None:
        head = first + _read_head(client, deadline)
        lines = head[:-4].split(b"\r\n")
        try:
            method, target, version = lines[0].decode("latin-1").split(" ")
        except ValueError:
            return _reply(client, 400, "stockade: not an HTTP proxy request")
        if version not in ("HTTP/1.0", "HTTP/1.1") or any(b"\n" in h or b"\r" in h for h in lines):
            return _reply(client, 400, "stockade: malformed request (bare CR or LF, or not HTTP/1.x)")
        protocol = "connect" if method == "CONNECT" else "http"
        try:
            host, port, path = _target(method, target)
        except RuleError as exc:
            return _reply(client, 400, f"stockade: bad request target: {exc.problem}")
        try:
            upstream = self.open(protocol, host, port)
        except Blocked as exc:
            return _reply(client, 403, str(exc))
        except ConnectionError as exc:
            return _reply(client, 502, str(exc))
        if method == "CONNECT":
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:  # one request per connection (the next may name another host), for the URI's host
            headers = [h for h in lines[1:] if h and not _hop_by_hop(h)]
            authority = host if port == 80 else f"{host}:{port}"
            if ":" in host:
                authority = f"[{host}]" if port == 80 else f"[{host}]:{port}"
            request = [f"{method} {path} {version}".encode("latin-1"), f"Host: {authority}".encode()]
            request += [*headers, b"Connection: close"]
            upstream.sendall(b"\r\n".join(request) + b"\r\n\r\n")
        return upstream

    def _socks5(self, client: socket.socket, deadline: float) -> socket.socket | None:
        def exactly(count: int) -> bytes:  # the whole request by the deadline, not each read
            return _exactly(client, count, deadline)

        methods = exactly(exactly(1)[0])
        if 0 not in methods:
            client.sendall(b"\x05\xff")
            return None
        client.sendall(b"\x05\x00")
        version, command, _, kind = exactly(4)
        if kind == 1:
            host = str(ipaddress.IPv4Address(exactly(4)))
        elif kind == 4:
            host = str(ipaddress.IPv6Address(exactly(16)))
        elif kind == 3:
            host = exactly(exactly(1)[0]).decode("latin-1")  # normalize_host vets it
        else:
            return _socks_reply(client, 8)  # address type not supported
        (port,) = struct.unpack("!H", exactly(2))
        if version != 5 or command != 1:
            return _socks_reply(client, 7)  # only CONNECT
        try:
            upstream = self.open("socks5", host, port)
        except Blocked:
            return _socks_reply(client, 2)  # not allowed by ruleset
        except ConnectionError:
            return _socks_reply(client, 5)
        _socks_reply(client, 0)
        return upstream

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """Both directions as they come; a side's end of sending is passed on, and both are
        closed when both are done (or either fails)."""
        other = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        other.start()
        _pump(client, upstream)
        other.join()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            if self.closed:
                raise ConnectionError("the proxy is closing")
            self._open.add(sock)

    def hold(self, sock: socket.socket) -> None:
        """Cut this one too when closing (the bridge's handoff connection)."""
        with contextlib.suppress(ConnectionError):
            self._track(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)

    def cut_all(self) -> None:
        """End every connection now (the command is over)."""
        with self._lock:
            self.closed = True
            live = list(self._open)
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """One direction: spliced through a pipe (the bytes never enter Python), or copied where
    splice(2) does not apply. Either side's failure ends both directions."""
    try:
        src.settimeout(None)  # blocking fds: splice would see EAGAIN on a socket with a timeout
        dst.settimeout(None)
        if not _splice(src.fileno(), dst.fileno()):
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while n := src.recv_into(buf):
                dst.sendall(view[:n])
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _splice(src: int, dst: int) -> bool:
    """Move everything from src to dst through a pipe; False if splice cannot start here (a
    system without splice(2): macOS, Windows)."""
    if fcntl is None or not hasattr(os, "splice"):
        return False
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):  # a bigger pipe, fewer calls (refused above pipe-max-size)
            fcntl.fcntl(write_end, F_SETPIPE_SZ, CHUNK)
        try:
            moved = os.splice(src, write_end, CHUNK, flags=os.SPLICE_F_MOVE)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOSYS):
                return False
            raise
        while moved:
            while moved:
                moved -= os.splice(read_end, dst, moved, flags=os.SPLICE_F_MOVE)
            moved = os.splice(src, write_end, CHUNK, flags=os.SPLICE_F_MOVE)
        return True
    finally:
        os.close(read_end)
        os.close(write_end)


def _exactly(sock: socket.socket, count: int, deadline: float) -> bytes:
    data = b""
    while len(data) < count:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed mid-request")
        data += chunk
    return data


def _read_head(sock: socket.socket, deadline: float) -> bytes:
    """Up to the blank line, at most HEAD_LIMIT bytes, before `deadline` (a client that trickles
    bytes is dropped too); nothing past the head is consumed."""
    head = b""
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = sock.recv(4096, socket.MSG_PEEK)
        if not chunk:
            raise ConnectionError("closed mid-request")
        end = (head[-3:] + chunk).find(b"\r\n\r\n")
        if end >= 0:
            return head + sock.recv(end + 4 - len(head[-3:]))
        head += sock.recv(len(chunk))
        if len(head) > HEAD_LIMIT:
            raise ConnectionError("request head too large")


def _target(method: str, target: str) -> tuple[str, int, str]:
    """(host, port, origin-form path) of a proxy request's target."""
    if method == "CONNECT":
        host, sep, port = target.rpartition(":")
        if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise RuleError(target, "CONNECT needs host:port")
        return host.strip("[]"), int(port), ""
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() != "http":
        raise RuleError(target, "a proxy request needs an absolute http:// URI (use CONNECT for https)")
    authority, slash, path = rest.partition("/")
    authority = authority.rpartition("@")[2]  # user:password@ is not ours to forward
    host, port = authority, 80
    if authority.startswith("["):
        end = authority.find("]")
        host, tail = authority[1:end], authority[end + 1 :]
        port = int(tail[1:]) if tail.startswith(":") and tail[1:].isascii() and tail[1:].isdigit() else 80
    elif ":" in authority:
        host, _, text = authority.partition(":")
        if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
            raise RuleError(target, f"bad port {text!r}")
        port = int(text)
    return host, port, "/" + path if slash else "/"


def _hop_by_hop(header: bytes) -> bool:
    name = header.split(b":", 1)[0].strip().lower()
    return name in (b"connection", b"proxy-connection", b"keep-alive", b"proxy-authorization", b"host")


def _reply(sock: socket.socket, status: int, text: str) -> None:
    reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
    body = (text + "\n").encode()
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
    sock.sendall(head.encode() + b"Connection: close\r\n\r\n" + body)


def _socks_reply(sock: socket.socket, code: int) -> None:
    sock.sendall(bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0]))


class ProxyThread:
    """The proxy's listeners, each accepting on a thread of its own; a thread per connection.

    `close()` stops listening, cuts every open tunnel and waits for the threads.
    """

    def __init__(
        self,
        proxy: FilteringProxy,
        *,
        unix_path: str | None = None,
        tcp: tuple[str, int] | None = None,
        handoff_path: str | None = None,
    ) -> None:
        self.proxy = proxy
        self.listeners: list[socket.socket] = []
        self.addresses: list[object] = []
        self._threads: list[threading.Thread] = []
        if unix_path is not None:
            self._listen(self._unix(unix_path), self._accept)
        if tcp is not None:
            self._listen(socket.create_server(tcp), self._accept)
        if handoff_path is not None:
            self._listen(self._unix(handoff_path), self._accept_handoffs)

    @staticmethod
    def _unix(path: str) -> socket.socket:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        return listener

    def _listen(self, listener: socket.socket, loop: Callable[[socket.socket], None]) -> None:
        listener.listen(512)
        self.listeners.append(listener)
        self.addresses.append(listener.getsockname())
        self._start(loop, listener)

    def _start(self, target: Callable[[socket.socket], None], sock: socket.socket) -> None:
        worker = threading.Thread(target=target, args=(sock,), daemon=True)
        worker.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [worker]

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            self._start(self.proxy.handle, client)

    def _accept_handoffs(self, listener: socket.socket) -> None:
        """The bridge's connection: each message carries one connection of the command, as an
        fd, which the proxy serves directly (no relay inside the sandbox, no extra copy)."""
        while True:
            try:
                bridge, _ = listener.accept()
            except OSError:
                return
            self._start(self._receive, bridge)

    def _receive(self, bridge: socket.socket) -> None:
        self.proxy.hold(bridge)
        with bridge:
            while True:
                try:
                    data, fds, _, _ = socket.recv_fds(bridge, 1, 4)
                except OSError:
                    return
                if not data:
                    return
                for fd in fds:  # from inside the sandbox: anything but a stream socket is dropped
                    try:
                        client = socket.socket(fileno=fd)
                    except OSError:
                        os.close(fd)
                        continue
                    if client.type != socket.SOCK_STREAM:
                        client.close()
                        continue
                    self._start(self.proxy.handle, client)

    def close(self) -> None:
        for listener in self.listeners:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
            listener.close()
        self.proxy.cut_all()
        for thread in list(self._threads):
            thread.join(timeout=10)


def json_lines(out: IO[str]) -> Callable[[Event], None]:
    """An on_event callback appending one JSON line per decision (flushed: it is an audit log)."""

    def write(event: Event) -> None:
        out.write(event.to_json() + "\n")
        out.flush()

    return write
