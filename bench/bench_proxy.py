"""The filtering proxy's cost: request latency and tunnel throughput against going direct.

    python bench/bench_proxy.py [--runs 300] [--megabytes 200]

A local HTTP server and a local source stand in for the internet (names resolve through the
proxy's hosts mapping, 127.0.0.1 allowed by an address rule). Each runs in a process of its
own, and so does the proxy, as in real use (the proxy lives in the stockade process; the client
is the sandboxed command). Latency: one small GET, a new connection each time, direct and
through the proxy (absolute-URI request). Throughput: an N MB download through a CONNECT
tunnel, direct and through the proxy. Medians of interleaved runs.
"""

from __future__ import annotations

import argparse
import http.server
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time

from stockade.net.proxy import FilteringProxy, ProxyThread
from stockade.net.rules import HostRules


class Small(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


class Source(socketserver.BaseRequestHandler):
    """Sends the number of megabytes the client asks for (one line), then closes."""

    def handle(self) -> None:
        megabytes = int(self.request.recv(100))
        block = b"x" * (1 << 20)
        for _ in range(megabytes):
            self.request.sendall(block)


class Server(socketserver.ThreadingTCPServer):
    request_queue_size = 1024
    daemon_threads = True
    allow_reuse_address = True


def serve(handler: type) -> None:
    """In a child process: serve forever, print the port."""
    server = Server(("127.0.0.1", 0), handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def run_proxy() -> None:
    """In a child process: the proxy, as stockade runs it (its own loop thread); print the port."""
    proxy = FilteringProxy(HostRules(("ok.test", "127.0.0.1"), ()), hosts={"ok.test": ["127.0.0.1"]})
    thread = ProxyThread(proxy, tcp=("127.0.0.1", 0))
    print(thread.addresses[0][1], flush=True)  # type: ignore[index]
    threading.Event().wait()


def child(what: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", what], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def get(port: int, request: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(request)
        while s.recv(65536):
            pass


def download(port: int, head: bytes, megabytes: int) -> float:
    buf = bytearray(1 << 20)
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        if head:
            s.sendall(head)
            reply = b""
            while b"\r\n\r\n" not in reply:  # the 200 line; nothing follows it until we ask
                reply += s.recv(4096)
        s.sendall(f"{megabytes}\n".encode())
        total = 0
        while n := s.recv_into(buf):
            total += n
    assert total == megabytes << 20, total
    return megabytes / (time.perf_counter() - start)


INSIDE = """
import socket, sys, time
port, megabytes = int(sys.argv[1]), int(sys.argv[2])
buf = bytearray(1 << 20)
start = time.perf_counter()
s = socket.create_connection(("127.0.0.1", 3128))
s.sendall(f"CONNECT ok.test:{port} HTTP/1.1\\r\\n\\r\\n".encode())
reply = b""
while b"\\r\\n\\r\\n" not in reply:
    reply += s.recv(4096)
s.sendall(f"{megabytes}\\n".encode())
total = 0
while n := s.recv_into(buf):
    total += n
assert total == megabytes << 20
print(megabytes / (time.perf_counter() - start))
"""


def sandbox_download(port: int, megabytes: int) -> float:
    """The whole path a sandboxed command takes: its loopback, the bridge, the proxy."""
    import os
    import tempfile

    import stockade

    with tempfile.NamedTemporaryFile("w", suffix=".hosts") as hosts:
        hosts.write("127.0.0.1 ok.test\n")
        hosts.flush()
        os.environ["STOCKADE_PROXY_HOSTS"] = hosts.name
        done = stockade.run(
            [sys.executable, "-c", INSIDE, str(port), str(megabytes)],
            backend="bwrap",
            network="proxy",
            allow_domains=["ok.test", f"127.0.0.1:{port}"],
        )
    if done.returncode != 0:
        raise SystemExit(f"sandboxed download failed: {done.stderr}")
    return float(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--serve", choices=("web", "source", "proxy"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        servers = {"web": lambda: serve(Small), "source": lambda: serve(Source), "proxy": run_proxy}
        return servers[args.serve]()
    children = [child("web"), child("source"), child("proxy")]
    (_, web), (_, source), (_, pport) = children
    try:
        direct_req = b"GET / HTTP/1.0\r\nHost: ok.test\r\n\r\n"
        proxied_req = f"GET http://ok.test:{web}/ HTTP/1.0\r\n\r\n".encode()
        lat: dict[str, list[float]] = {"direct": [], "proxy": []}
        for _ in range(args.runs):
            for label, port, req in (("direct", web, direct_req), ("proxy", pport, proxied_req)):
                start = time.perf_counter()
                get(port, req)
                lat[label].append((time.perf_counter() - start) * 1000)
        connect = f"CONNECT ok.test:{source} HTTP/1.1\r\n\r\n".encode()
        rate: dict[str, list[float]] = {"direct": [], "proxy": []}
        for _ in range(5):
            rate["direct"].append(download(source, b"", args.megabytes))
            rate["proxy"].append(download(pport, connect, args.megabytes))
        sandboxed = [sandbox_download(source, args.megabytes) for _ in range(3)]
    finally:
        for proc, _ in children:
            proc.kill()
    d, p = (statistics.median(lat[k]) for k in ("direct", "proxy"))
    p99 = sorted(lat["proxy"])[int(len(lat["proxy"]) * 0.99)]
    print(f"small GET, new connection each (median of {args.runs}):")
    print(f"  direct {d:7.3f} ms   through the proxy {p:7.3f} ms (p99 {p99:.3f})   (+{p - d:.3f} ms)")
    d, p = (statistics.median(rate[k]) for k in ("direct", "proxy"))
    print(f"{args.megabytes} MB download through one tunnel (median of 5):")
    print(f"  direct {d:7.0f} MB/s   through the proxy {p:7.0f} MB/s   ({p / d:.0%} of direct)")
    b = statistics.median(sandboxed)
    print(f"  from inside a sandbox (bridge + proxy): {b:7.0f} MB/s   ({b / d:.0%} of direct)")


if __name__ == "__main__":
    main()
