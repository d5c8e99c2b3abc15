"""The filtering proxy's cost: request latency and tunnel throughput against going direct.

    python bench/bench_proxy.py [--runs 300] [--megabytes 200]

A local HTTP server and a local sink stand in for the internet (names resolve through the
proxy's hosts mapping, 127.0.0.1 allowed by an address rule). Latency: one small GET, a new
connection each time, direct and through the proxy (absolute-URI request). Throughput: N MB
pushed through a CONNECT tunnel to a sink that counts them, direct and through the proxy.
Medians of interleaved runs.
"""

from __future__ import annotations

import argparse
import http.server
import socket
import socketserver
import statistics
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


class Sink(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        total = 0
        while data := self.request.recv(1 << 20):
            total += len(data)
        self.request.sendall(str(total).encode())


class Server(socketserver.ThreadingTCPServer):
    request_queue_size = 1024
    daemon_threads = True
    allow_reuse_address = True


def serve(handler: type) -> int:
    server = Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def get(port: int, request: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(request)
        while s.recv(65536):
            pass


def push(port: int, head: bytes, megabytes: int) -> float:
    block = b"x" * (1 << 20)
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        if head:
            s.sendall(head)
            reply = b""
            while b"\r\n\r\n" not in reply:  # the 200 line; the proxy sends nothing after it
                reply += s.recv(4096)
        for _ in range(megabytes):
            s.sendall(block)
        s.shutdown(socket.SHUT_WR)
        assert int(s.recv(100)) == megabytes << 20
    return megabytes / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--megabytes", type=int, default=200)
    args = parser.parse_args()
    web, sink = serve(Small), serve(Sink)
    proxy = FilteringProxy(HostRules(("ok.test", "127.0.0.1"), ()), hosts={"ok.test": ["127.0.0.1"]})
    thread = ProxyThread(proxy, tcp=("127.0.0.1", 0))
    pport = thread.addresses[0][1]  # type: ignore[index]
    direct_req = b"GET / HTTP/1.0\r\nHost: ok.test\r\n\r\n"
    proxied_req = f"GET http://ok.test:{web}/ HTTP/1.0\r\n\r\n".encode()
    lat: dict[str, list[float]] = {"direct": [], "proxy": []}
    for _ in range(args.runs):
        for label, port, req in (("direct", web, direct_req), ("proxy", pport, proxied_req)):
            start = time.perf_counter()
            get(port, req)
            lat[label].append((time.perf_counter() - start) * 1000)
    connect = f"CONNECT ok.test:{sink} HTTP/1.1\r\n\r\n".encode()
    rate: dict[str, list[float]] = {"direct": [], "proxy": []}
    for _ in range(5):
        rate["direct"].append(push(sink, b"", args.megabytes))
        rate["proxy"].append(push(pport, connect, args.megabytes))
    thread.close()
    d, p = (statistics.median(lat[k]) for k in ("direct", "proxy"))
    print(f"small GET, new connection each (median of {args.runs}):")
    print(f"  direct {d:7.3f} ms   through the proxy {p:7.3f} ms   (+{p - d:.3f} ms, {p / d:.2f}x)")
    d, p = (statistics.median(rate[k]) for k in ("direct", "proxy"))
    print(f"{args.megabytes} MB through one tunnel (median of 5):")
    print(f"  direct {d:7.0f} MB/s   through the proxy {p:7.0f} MB/s   ({p / d:.2f}x)")


if __name__ == "__main__":
    main()
