"""Ways around the proxy found in review: IPv4-mapped IPv6 past an IPv4 deny, the shared
100.64/10 range (cloud metadata), the client's Host header, a trickled SOCKS5 request, and
non-ASCII digits in ports. Each first shows the same request going through when it should,
then tries the way around.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from stockade.net.proxy import FilteringProxy, ProxyThread
from stockade.net.rules import HostRules, RuleError, is_local, parse_rule

HOSTS = {"ok.test": ["127.0.0.1"], "mapped.test": ["::ffff:127.0.0.1"]}


@pytest.fixture
def upstream() -> Iterator[tuple[int, list[bytes]]]:
    """A server that records each request head and answers 200."""
    heads: list[bytes] = []
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                data = b""
                try:
                    while b"\r\n\r\n" not in data and (chunk := conn.recv(4096)):
                        data += chunk
                except OSError:
                    pass
                heads.append(data)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], heads
    server.close()


def start(allow: tuple[str, ...], deny: tuple[str, ...] = (), **kw: object) -> ProxyThread:
    local = bool(kw.pop("allow_local_binding", False))
    proxy = FilteringProxy(HostRules(allow, deny, local), command="t", hosts=HOSTS, **kw)  # type: ignore[arg-type]
    return ProxyThread(proxy, tcp=("127.0.0.1", 0))


def ask(thread: ProxyThread, raw: bytes) -> bytes:
    with socket.create_connection(thread.addresses[0], timeout=10) as sock:  # type: ignore[arg-type]
        sock.sendall(raw)
        out = b""
        while data := sock.recv(65536):
            out += data
        return out


def get(thread: ProxyThread, url: str) -> bytes:
    return ask(thread, f"GET {url} HTTP/1.1\r\n\r\n".encode())


def test_plain_http_forwards_the_uris_host_not_the_clients(upstream: tuple[int, list[bytes]]) -> None:
    port, heads = upstream
    thread = start(("ok.test", "127.0.0.1"))
    try:
        assert get(thread, f"http://ok.test:{port}/").startswith(b"HTTP/1.0 200")
        ask(thread, f"GET http://ok.test:{port}/ HTTP/1.1\r\nHost: denied.example\r\n\r\n".encode())
        assert b"denied.example" not in heads[-1], heads[-1]
        assert f"Host: ok.test:{port}".encode() in heads[-1], heads[-1]
        ask(thread, f"GET http://ok.test:{port}/ HTTP/1.1\nHost:denied.example\r\n\r\n".encode())
        assert b"denied.example" not in heads[-1], heads[-1]  # bare LF hidden in the version field
    finally:
        thread.close()


def test_ipv4_mapped_ipv6_does_not_walk_around_an_ipv4_deny(upstream: tuple[int, list[bytes]]) -> None:
    port, _ = upstream
    thread = start(("ok.test", "mapped.test"), allow_local_binding=True)  # the same request, allowed
    try:
        assert get(thread, f"http://mapped.test:{port}/").startswith(b"HTTP/1.0 200")
    finally:
        thread.close()
    thread = start(("ok.test", "mapped.test", "::/0"), deny=("127.0.0.1",), allow_local_binding=True)
    try:
        assert get(thread, f"http://ok.test:{port}/").startswith(b"HTTP/1.1 403")
        got = get(thread, f"http://mapped.test:{port}/")
        assert got.startswith(b"HTTP/1.1 403"), got
        with socket.create_connection(thread.addresses[0], timeout=10) as sock:  # type: ignore[arg-type]
            sock.sendall(b"\x05\x01\x00")
            assert sock.recv(2) == b"\x05\x00"
            target = ipaddress.IPv6Address("::ffff:127.0.0.1").packed
            sock.sendall(b"\x05\x01\x00\x04" + target + struct.pack("!H", port))
            assert sock.recv(10)[1] == 2
    finally:
        thread.close()


def test_cgnat_range_counts_as_local() -> None:
    """100.64.0.0/10 is not is_private in Python 3.11, and Alibaba Cloud's metadata is 100.100.100.200."""
    assert not is_local(ipaddress.ip_address("93.184.216.34"))
    assert is_local(ipaddress.ip_address("100.100.100.200"))


def test_socks5_handshake_is_bounded_by_the_head_deadline(upstream: tuple[int, list[bytes]]) -> None:
    port, _ = upstream
    thread = start(("ok.test", "127.0.0.1"), head_timeout=0.5)
    request = b"\x05\x01\x00\x03\x07ok.test" + struct.pack("!H", port)
    try:
        with socket.create_connection(thread.addresses[0], timeout=10) as sock:  # type: ignore[arg-type]
            sock.sendall(b"\x05\x01\x00")
            sock.recv(2)
            reply = b""
            try:
                for byte in request:  # each byte inside head_timeout, the whole far beyond it
                    sock.sendall(bytes([byte]))
                    time.sleep(0.2)
                reply = sock.recv(10)
            except OSError:
                pass
            assert reply[1:2] != b"\x00", "a trickled SOCKS5 request was served after the deadline"
    finally:
        thread.close()


@pytest.mark.parametrize("entry", ["host:\u00b2", "host:\u0663"])
def test_non_ascii_digit_ports_are_a_rule_error(entry: str) -> None:
    with pytest.raises(RuleError):
        parse_rule(entry)
