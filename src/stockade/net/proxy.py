"""The filtering proxy: HTTP (absolute-URI requests and CONNECT) and SOCKS5 on one listener.

It runs in the stockade process (an asyncio loop on a thread of its own) and listens on a unix
socket that only the command's sandbox can reach (through the bridge, see backends/bridge.c).
Every request names a host; the proxy decides with the HostRules, resolves the name itself,
refuses addresses that are local when the name is not allowed to be, and connects to the very
address it checked (no second resolution). Denied HTTP requests get a 403 whose body names the
rule; SOCKS5 gets "not allowed by ruleset". Every decision becomes an Event.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import IO

from .rules import Decision, HostRules, RuleError, normalize_host, parse_address

HEAD_LIMIT = 64 * 1024
CHUNK = 64 * 1024


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


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


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
        self._tasks: set[asyncio.Task[None]] = set()

    # --- deciding and connecting ---------------------------------------------------------

    async def _resolve(self, host: str, port: int) -> list[str]:
        if host in self.hosts:
            return self.hosts[host]
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=1)  # SOCK_STREAM
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    def _record(self, protocol: str, host: str, port: int, address: str, decision: Decision) -> None:
        allowed = decision.allowed
        event = Event(time.time(), self.command, protocol, host, port, address, decision.rule, allowed)
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    async def open(self, protocol: str, raw_host: str, port: int) -> Streams:
        """Decide, resolve, check and connect; Blocked (logged) when any step says no."""
        address = parse_address(raw_host)
        if address is not None:
            decision = self.rules.decide_address(address, port, named=False)
            self._record(protocol, str(address), port, str(address), decision)
            if not decision.allowed:
                raise Blocked(str(address), port, decision.rule)
            return await self._connect(str(address), port, str(address), protocol)
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
        try:
            addresses = await asyncio.wait_for(self._resolve(host, port), self.connect_timeout)
        except (TimeoutError, OSError):
            addresses = []
        refused = ""
        for text in addresses:
            checked = self.rules.decide_address(ipaddress.ip_address(text), port, named=True)
            if checked.allowed:
                self._record(protocol, host, port, text, decision)
                return await self._connect(text, port, host, protocol)
            refused = checked.rule
        reason = refused or "the name does not resolve"
        self._record(protocol, host, port, "", Decision(False, reason))
        raise Blocked(host, port, reason)

    async def _connect(self, address: str, port: int, host: str, protocol: str) -> Streams:
        try:
            return await asyncio.wait_for(asyncio.open_connection(address, port), self.connect_timeout)
        except (TimeoutError, OSError) as exc:
            raise ConnectionError(f"stockade: {host}:{port} ({address}) did not answer: {exc}") from None

    # --- the two protocols -------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            first = await asyncio.wait_for(reader.readexactly(1), self.head_timeout)
            if first == b"\x05":
                await self._socks5(reader, writer)
            else:
                await self._http(first, reader, writer)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            writer.close()

    async def _http(self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = first + await asyncio.wait_for(_read_head(reader), self.head_timeout)
        line, _, rest = head.partition(b"\r\n")
        try:
            method, target, version = line.decode("latin-1").split(" ")
        except ValueError:
            return await _reply(writer, 400, "stockade: not an HTTP proxy request")
        protocol = "connect" if method == "CONNECT" else "http"
        try:
            host, port, path = _target(method, target)
        except RuleError as exc:
            return await _reply(writer, 400, f"stockade: bad request target: {exc.problem}")
        try:
            upstream_r, upstream_w = await self.open(protocol, host, port)
        except Blocked as exc:
            return await _reply(writer, 403, str(exc))
        except ConnectionError as exc:
            return await _reply(writer, 502, str(exc))
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:  # one request per connection: the next one may name another host
            headers = [h for h in rest.split(b"\r\n") if h and not _hop_by_hop(h)]
            upstream_w.write(
                b"\r\n".join([f"{method} {path} {version}".encode("latin-1"), *headers, b"Connection: close"])
                + b"\r\n\r\n"
            )
        await _relay(reader, writer, upstream_r, upstream_w)

    async def _socks5(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        count = (await reader.readexactly(1))[0]
        methods = await reader.readexactly(count)
        if 0 not in methods:
            writer.write(b"\x05\xff")
            return await writer.drain()
        writer.write(b"\x05\x00")
        version, command, _, kind = await asyncio.wait_for(reader.readexactly(4), self.head_timeout)
        if kind == 1:
            host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
        elif kind == 4:
            host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
        elif kind == 3:
            raw = await reader.readexactly((await reader.readexactly(1))[0])
            host = raw.decode("latin-1")  # normalize_host refuses NUL, spaces and the like
        else:
            return await _socks_reply(writer, 8)  # address type not supported
        (port,) = struct.unpack("!H", await reader.readexactly(2))
        if version != 5 or command != 1:
            return await _socks_reply(writer, 7)  # only CONNECT
        try:
            upstream_r, upstream_w = await self.open("socks5", host, port)
        except Blocked:
            return await _socks_reply(writer, 2)  # not allowed by ruleset
        except ConnectionError:
            return await _socks_reply(writer, 5)
        await _socks_reply(writer, 0)
        await _relay(reader, writer, upstream_r, upstream_w)

    async def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _target(method: str, target: str) -> tuple[str, int, str]:
    """(host, port, origin-form path) of a proxy request's target."""
    if method == "CONNECT":
        host, sep, port = target.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
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
        port = int(tail[1:]) if tail.startswith(":") and tail[1:].isdigit() else 80
    elif ":" in authority:
        host, _, text = authority.partition(":")
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise RuleError(target, f"bad port {text!r}")
        port = int(text)
    return host, port, "/" + path if slash else "/"


def _hop_by_hop(header: bytes) -> bool:
    name = header.split(b":", 1)[0].strip().lower()
    return name in (b"connection", b"proxy-connection", b"keep-alive", b"proxy-authorization")


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise ConnectionError("request head too large") from None


async def _reply(writer: asyncio.StreamWriter, status: int, text: str) -> None:
    reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
    body = (text + "\n").encode()
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()


async def _socks_reply(writer: asyncio.StreamWriter, code: int) -> None:
    writer.write(bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0]))
    await writer.drain()


async def _relay(
    client_r: asyncio.StreamReader,
    client_w: asyncio.StreamWriter,
    upstream_r: asyncio.StreamReader,
    upstream_w: asyncio.StreamWriter,
) -> None:
    """Both directions as they come; a side's end of sending is passed on, and both are closed
    when both are done (or either fails)."""

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()

    try:
        await asyncio.gather(pump(client_r, upstream_w), pump(upstream_r, client_w))
    except (ConnectionError, OSError):
        pass
    finally:
        upstream_w.close()
        client_w.close()


class ProxyThread:
    """The proxy on an event loop of its own thread, for a synchronous caller (the CLI, the API).

    `close()` stops listening, cuts every open tunnel and joins the thread.
    """

    def __init__(
        self, proxy: FilteringProxy, *, unix_path: str | None = None, tcp: tuple[str, int] | None = None
    ) -> None:
        self.proxy = proxy
        self.loop = asyncio.new_event_loop()
        self._servers: list[asyncio.AbstractServer] = []
        self.addresses: list[object] = []
        ready = threading.Event()
        failure: list[BaseException] = []

        async def start() -> None:
            limit = HEAD_LIMIT
            if unix_path is not None:
                self._servers.append(await asyncio.start_unix_server(proxy.handle, unix_path, limit=limit))
            if tcp is not None:
                self._servers.append(await asyncio.start_server(proxy.handle, *tcp, limit=limit))
            for server in self._servers:
                self.addresses += [s.getsockname() for s in server.sockets]

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(start())
            except BaseException as exc:  # reported to the caller, never lost in the thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="stockade-proxy", daemon=True)
        self.thread.start()
        ready.wait()
        if failure:
            self.thread.join()
            raise failure[0]

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.close()
            await self.proxy.cancel_all()

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        with contextlib.suppress(RuntimeError):
            self.loop.close()


def json_lines(out: IO[str]) -> Callable[[Event], None]:
    """An on_event callback appending one JSON line per decision (flushed: it is an audit log)."""
    lock = threading.Lock()

    def write(event: Event) -> None:
        with lock:
            out.write(event.to_json() + "\n")
            out.flush()

    return write
