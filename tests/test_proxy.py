"""The filtering proxy on its own: rules, HTTP, CONNECT and SOCKS5 against local servers.

Names resolve through the hosts mapping the tests give the proxy; every name here maps to
127.0.0.1, which a name may reach only when an address rule allows it explicitly.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from stockade.net.proxy import FilteringProxy, ProxyThread
from stockade.net.rules import HostRules, RuleError, normalize_host, parse_rule

# --- rules -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        "pypi.org",
        "*.pythonhosted.org",
        "**.github.com",
        "github.com:443",
        "10.0.0.5",
        "10.0.0.0/8",
        "[::1]:8080",
    ],
)
def test_valid_rules_parse(entry: str) -> None:
    assert parse_rule(entry).text == entry


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("evil\x00.com", "NUL"),
        ("two words.com", "spaces"),
        ("a" * 64 + ".com", "63"),
        ("x." * 130 + "com", "253"),
        ("host:99999", "port"),
        ("host:http", "port"),
        ("foo.*.com", "wildcard"),
        ("*.com", "dot"),  # every name under a top-level domain: refused as too broad
        ("a..b", "empty label"),
        ("-bad.com", "letters"),
        ("*", "wildcard"),
    ],
)
def test_malformed_rules_are_refused_with_the_reason(entry: str, problem: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rule(entry)
    assert problem in caught.value.problem, caught.value.problem


def test_names_are_normalized() -> None:
    assert normalize_host("PyPI.org.") == "pypi.org"
    assert normalize_host("bücher.example") == "xn--bcher-kva.example"
    assert parse_rule("*.Example.COM").host == "example.com"


def test_wildcards_ports_and_deny_beating_allow() -> None:
    rules = HostRules(("*.sub.test", "**.tree.test", "port.test:443", "x.test"), ("bad.tree.test",))
    assert rules.decide_name("a.sub.test", 80).allowed and not rules.decide_name("sub.test", 80).allowed
    assert rules.decide_name("tree.test", 80).allowed and rules.decide_name("a.b.tree.test", 80).allowed
    assert rules.decide_name("port.test", 443).allowed and not rules.decide_name("port.test", 80).allowed
    denied = rules.decide_name("bad.tree.test", 80)
    assert not denied.allowed and denied.rule == 'denied by rule "bad.tree.test"'
    assert rules.decide_name("nope.test", 80).rule == "not in the allow list"
    assert not rules.decide_name("evilx.test", 80).allowed  # "x.test" is not a suffix rule


# --- the proxy, over TCP --------------------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.headers.get('Host')} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data.upper())


class Server(socketserver.ThreadingTCPServer):
    """Room for 200 connections at once (the default backlog of 5 would reset some)."""

    request_queue_size = 1024
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, int]]:
    web = Server(("127.0.0.1", 0), Handler)
    echo = Server(("127.0.0.1", 0), Echo)
    for server in (web, echo):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"web": web.server_address[1], "echo": echo.server_address[1]}
    web.shutdown()
    echo.shutdown()


HOSTS = {"ok.test": ["127.0.0.1"], "bad.test": ["127.0.0.1"], "meta.test": ["169.254.169.254"]}


def start(allow: tuple[str, ...], deny: tuple[str, ...] = (), **kw: object) -> ProxyThread:
    proxy = FilteringProxy(HostRules(allow, deny), command="t", hosts=HOSTS, **kw)  # type: ignore[arg-type]
    return ProxyThread(proxy, tcp=("127.0.0.1", 0))


def connect(thread: ProxyThread) -> socket.socket:
    host, port = thread.addresses[0]  # type: ignore[misc]
    return socket.create_connection((host, port), timeout=10)


def receive_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def http_get(thread: ProxyThread, url: str) -> bytes:
    with connect(thread) as sock:
        sock.sendall(f"GET {url} HTTP/1.1\r\nHost: ignored\r\nConnection: keep-alive\r\n\r\n".encode())
        return receive_all(sock)


def tunnel(thread: ProxyThread, target: str, payload: bytes) -> bytes:
    with connect(thread) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        if not head.startswith(b"HTTP/1.1 200"):
            return head + receive_all(sock)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return receive_all(sock)


def socks(thread: ProxyThread, host: bytes | str, port: int, payload: bytes = b"") -> tuple[int, bytes]:
    with connect(thread) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert sock.recv(2) == b"\x05\x00"
        if isinstance(host, str):  # an IPv4 literal
            address = b"\x01" + socket.inet_aton(host)
        else:
            address = b"\x03" + bytes([len(host)]) + host
        sock.sendall(b"\x05\x01\x00" + address + struct.pack("!H", port))
        reply = sock.recv(10)
        if reply[1] != 0:
            return reply[1], b""
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return 0, receive_all(sock)


def test_allowed_http_get_and_connect_tunnel(servers: dict[str, int]) -> None:
    thread = start(("ok.test", "127.0.0.1"))
    try:
        got = http_get(thread, f"http://ok.test:{servers['web']}/path?q=1")
        assert got.startswith(b"HTTP/1.0 200") and got.endswith(b"/path?q=1"), got
        assert tunnel(thread, f"ok.test:{servers['echo']}", b"ping") == b"PING"
    finally:
        thread.close()


def test_denied_and_unlisted_names_get_403_naming_the_rule(servers: dict[str, int]) -> None:
    thread = start(("ok.test", "bad.test", "127.0.0.1"), deny=("bad.test",))
    try:
        assert http_get(thread, f"http://ok.test:{servers['web']}/").startswith(b"HTTP/1.0 200")
        got = http_get(thread, f"http://bad.test:{servers['web']}/")
        assert got.startswith(b"HTTP/1.1 403") and b'denied by rule "bad.test"' in got, got
        got = tunnel(thread, f"other.test:{servers['echo']}", b"x")
        assert got.startswith(b"HTTP/1.1 403") and b"other.test" in got and b"not in the allow list" in got
        events = thread.proxy.events
        assert [(e.host, e.allowed) for e in events] == [
            ("ok.test", True),
            ("bad.test", False),
            ("other.test", False),
        ]
        assert events[0].address == "127.0.0.1" and events[0].command == "t"
    finally:
        thread.close()


def test_socks5_names_and_raw_addresses(servers: dict[str, int]) -> None:
    echo = servers["echo"]
    thread = start(("ok.test", f"127.0.0.1:{echo}"))
    try:
        assert socks(thread, b"ok.test", echo, b"hi") == (0, b"HI")
        assert socks(thread, "127.0.0.1", echo, b"raw") == (0, b"RAW")
        assert socks(thread, b"bad.test", echo)[0] == 2  # not allowed by ruleset
        assert socks(thread, "127.0.0.1", servers["web"])[0] == 2  # the address rule names one port
        assert socks(thread, b"ok.test\x00.evil.com", echo)[0] == 2  # NUL: refused, never truncated
        assert socks(thread, b"ok test", echo)[0] == 2
    finally:
        thread.close()


def test_names_resolving_to_local_addresses_need_an_explicit_rule(servers: dict[str, int]) -> None:
    web = servers["web"]
    thread = start(("ok.test", "meta.test"))
    try:
        got = http_get(thread, f"http://ok.test:{web}/")
        assert got.startswith(b"HTTP/1.1 403") and b"local address 127.0.0.1" in got, got
        got = http_get(thread, "http://meta.test/latest/meta-data/")
        assert got.startswith(b"HTTP/1.1 403") and b"169.254.169.254" in got, got
    finally:
        thread.close()
    proxy = FilteringProxy(HostRules(("ok.test",), (), allow_local_binding=True), hosts=HOSTS)
    thread = ProxyThread(proxy, tcp=("127.0.0.1", 0))
    try:
        assert http_get(thread, f"http://ok.test:{web}/").startswith(b"HTTP/1.0 200")
    finally:
        thread.close()


def test_many_concurrent_tunnels_all_get_their_bytes(servers: dict[str, int]) -> None:
    thread = start(("ok.test", "127.0.0.1"))
    results: dict[int, bytes] = {}

    def one(i: int) -> None:
        results[i] = tunnel(thread, f"ok.test:{servers['echo']}", f"payload-{i}-".encode() * 500)

    try:
        workers = [threading.Thread(target=one, args=(i,)) for i in range(200)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        assert len(results) == 200
        wrong = {i: r[:200] for i, r in results.items() if r != f"PAYLOAD-{i}-".encode() * 500}
        assert not wrong, f"{len(wrong)} tunnels lost bytes: {next(iter(wrong.items()))}"
    finally:
        thread.close()


def test_a_large_tunnel_keeps_every_byte_in_both_directions(servers: dict[str, int]) -> None:
    """32 MiB each way through one tunnel (the relay splices through a pipe: partial moves)."""
    thread = start(("ok.test", "127.0.0.1"))
    payload = os.urandom(32 << 20)
    try:
        with connect(thread) as sock:
            sock.sendall(f"CONNECT ok.test:{servers['echo']} HTTP/1.1\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(1)
            assert head.startswith(b"HTTP/1.1 200"), head

            def send() -> None:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)

            sender = threading.Thread(target=send)
            sender.start()
            got = receive_all(sock)
            sender.join()
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload.upper()).digest(), len(got)
    finally:
        thread.close()


def test_either_side_closing_closes_the_other(servers: dict[str, int]) -> None:
    thread = start(("ok.test", "127.0.0.1"))
    try:
        with connect(thread) as sock:  # the client ends: the echo server sees EOF and so do we
            sock.sendall(f"CONNECT ok.test:{servers['echo']} HTTP/1.1\r\n\r\n".encode())
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
            sock.shutdown(socket.SHUT_WR)
            assert receive_all(sock) == b""
        closing = socket.socket()
        closing.bind(("127.0.0.1", 0))
        closing.listen()
        port = closing.getsockname()[1]
        thread2 = start(("ok.test", f"127.0.0.1:{port}"))
        with connect(thread2) as sock:  # the server ends: the client sees EOF
            sock.sendall(f"CONNECT ok.test:{port} HTTP/1.1\r\n\r\n".encode())
            server_side, _ = closing.accept()
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
            server_side.close()
            assert receive_all(sock) == b""
        thread2.close()
        closing.close()
    finally:
        thread.close()


def test_a_stalled_request_head_is_dropped() -> None:
    thread = start(("ok.test",), head_timeout=0.5)
    try:
        with connect(thread) as sock:
            sock.sendall(b"GET http://ok.test/ HTTP/1.1\r\nHost: ok")  # never finished
            start_time = time.monotonic()
            assert receive_all(sock) == b""
            assert time.monotonic() - start_time < 8  # generous: dropped, not held forever
    finally:
        thread.close()


def test_closing_the_proxy_cuts_open_tunnels(servers: dict[str, int]) -> None:
    thread = start(("ok.test", "127.0.0.1"))
    sock = connect(thread)
    sock.sendall(f"CONNECT ok.test:{servers['echo']} HTTP/1.1\r\n\r\n".encode())
    assert sock.recv(100).startswith(b"HTTP/1.1 200")
    thread.close()
    assert receive_all(sock) == b""
    sock.close()
