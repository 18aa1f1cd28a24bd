"""The HTTP listener on a real port: routes, the injected webhook, and a leak test."""

from __future__ import annotations

import http.client
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from wsgiref.types import StartResponse, WSGIEnvironment

import psutil
import pytest

from macha_obs.exporter import build_registry
from macha_obs.server import make_app, shutdown, start_server
from tests.eyes_support import fixture_snapshot
from tests.labsd import wait_until
from tests.real import unavailable


def request(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body or None)
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def echo_alerts(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length)
    start_response("202 Accepted", [("Content-Type", "text/plain")])
    return [b"got " + body]


@pytest.fixture
def served() -> Iterator[tuple[int, list[bool]]]:
    ready = [False]
    app = make_app(build_registry(fixture_snapshot), alerts_app=echo_alerts, ready=lambda: ready[0])
    server, thread = start_server("127.0.0.1", 0, app)
    yield server.server_port, ready
    shutdown(server, thread)
    assert not thread.is_alive()


def test_metrics_and_health(served: tuple[int, list[bool]]) -> None:
    port, ready = served
    status, body = request(port, "GET", "/metrics")
    assert status == 200
    assert b'macha_systemd_unit_state{state="failed",unit="nginx.service"} 1.0' in body
    assert request(port, "GET", "/healthz") == (200, b"ok\n")
    assert request(port, "GET", "/readyz")[0] == 503
    ready[0] = True
    assert request(port, "GET", "/readyz") == (200, b"ready\n")


def test_routes_and_methods(served: tuple[int, list[bool]]) -> None:
    port, _ = served
    assert request(port, "POST", "/alerts", b'{"x": 1}') == (202, b'got {"x": 1}')
    assert request(port, "GET", "/alerts")[0] == 405
    assert request(port, "POST", "/metrics")[0] == 405
    assert request(port, "DELETE", "/healthz")[0] == 405
    assert request(port, "GET", "/nope")[0] == 404
    assert request(port, "GET", "/")[0] == 404


def test_no_webhook_injected_is_404() -> None:
    server, thread = start_server("127.0.0.1", 0, make_app(build_registry(lambda: None)))
    try:
        assert request(server.server_port, "POST", "/alerts", b"{}")[0] == 404
        status, body = request(server.server_port, "GET", "/metrics")
        assert status == 200
        assert b"macha_build_info" in body
    finally:
        shutdown(server, thread)


def test_ipv6_loopback() -> None:
    if not psutil.net_if_addrs() or not Path("/proc/net/if_inet6").exists():
        unavailable("no IPv6 on this host")
    server, thread = start_server("::1", 0, make_app(build_registry(lambda: None)))
    try:
        conn = http.client.HTTPConnection("::1", server.server_port, timeout=30)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        shutdown(server, thread)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_repeated_scrapes_leak_no_fds_and_rss_stays_flat(served: tuple[int, list[bool]]) -> None:
    port, _ = served
    process = psutil.Process()
    for _ in range(50):  # warm up: allocator pools, lazily imported codecs
        assert request(port, "GET", "/metrics")[0] == 200
    fds, rss = _open_fds(), process.memory_info().rss
    for _ in range(200):
        assert request(port, "GET", "/metrics")[0] == 200
    # the last request's server thread may still be closing its socket: a bounded wait
    assert wait_until(lambda: _open_fds() <= fds, timeout=10), (_open_fds(), fds)
    grown = process.memory_info().rss - rss
    assert grown < 2 * 1024 * 1024, f"RSS grew by {grown} bytes over 200 scrapes"


def test_metrics_gzip_head_options(served: tuple[int, list[bool]]) -> None:
    import gzip

    port, _ = served
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
        reply = conn.getresponse()
        assert reply.getheader("Content-Encoding") == "gzip"
        assert reply.getheader("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
        assert b"macha_build_info" in gzip.decompress(reply.read())
    finally:
        conn.close()
    status, body = request(port, "HEAD", "/metrics")
    assert (status, body) == (200, b"")
    assert request(port, "OPTIONS", "/metrics") == (200, b"")
