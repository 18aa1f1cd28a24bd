"""The HTTP listener on a real port: routes, the injected webhook, and a leak test."""

from __future__ import annotations

import http.client
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from wsgiref.types import StartResponse, WSGIEnvironment

import psutil
import pytest

from macha_obs.metrics import build_registry
from macha_obs.server import (
    Framing,
    Refusal,
    frame,
    make_app,
    parse_content_length,
    shutdown,
    start_server,
)
from tests.harness.eyes_support import fixture_snapshot
from tests.harness.labsd import wait_until
from tests.harness.real import unavailable


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


def test_the_approvals_pages_are_mounted_under_approvals_only() -> None:
    """An injected pages app gets /approvals and what is under it, nothing else; without
    one, /approvals is a 404."""
    seen: list[str] = []

    def pages(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        seen.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/html")])
        return [b"page"]

    for app, expected in ((make_app(build_registry(lambda: None), pages_app=pages), 200),
                          (make_app(build_registry(lambda: None)), 404)):  # fmt: skip
        server, thread = start_server("127.0.0.1", 0, app)
        try:
            port = server.server_port
            assert request(port, "GET", "/approvals")[0] == expected
            assert request(port, "POST", "/approvals/3/approve")[0] == expected
            assert request(port, "GET", "/approvalsx")[0] == 404
            assert request(port, "GET", "/metrics/approvals")[0] == 404
        finally:
            shutdown(server, thread)
    assert seen == ["/approvals", "/approvals/3/approve"]


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
    # the listener may still be draining the last connection before closing: a bounded wait
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


# ---------------------------------------------------------------- framing, on literals

HEAD = b"POST /alerts HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (HEAD, None),  # the head goes on
        (HEAD + b"\r\n", Framing(len(HEAD) + 2, 0)),
        (HEAD + b"Content-Length: 5\r\n\r\nhello", Framing(len(HEAD) + 21, 5)),
        (b"GET / HTTP/1.0\nContent-Length:  7 \n\n", Framing(36, 7)),  # bare LF, OWS
        (HEAD + b"Content-Length: 5\r\ncontent-length: 5\r\n\r\n", Framing(len(HEAD) + 40, 5)),
        (HEAD + b"Content-Length: \xb2\r\n\r\n", 400),  # "²" in latin-1: isdigit() is True
        (HEAD + b"Content-Length: \xc2\xb2\r\n\r\n", 400),
        (HEAD + b"Content-Length: -1\r\n\r\n", 400),
        (HEAD + b"Content-Length: 1e3\r\n\r\n", 400),
        (HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
        (HEAD + b"Content-Length: " + b"9" * 16 + b"\r\n\r\n", 413),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n", 411),
        (HEAD + b"X: " + b"a" * 100 + b"\r\n", 431),  # over the 64-byte limit below
        (b"GET /" + b"a" * 100, 414),
    ],
)
def test_frame(data: bytes, expected: Framing | int | None) -> None:
    framed = frame(data, head_limit=64 if len(data) > 100 else 1024)
    if isinstance(expected, int):
        assert isinstance(framed, Refusal)
        assert framed.status == expected
    else:
        assert framed == expected


def test_frame_resumes_where_it_left_off() -> None:
    data = HEAD + b"Content-Length: 2\r\n\r\nok"
    scanned, framed = 0, None
    for end in range(1, len(data) + 1):  # a byte at a time, the line end split anywhere
        framed = frame(data[:end], 1024, scanned)
        scanned = end
        if framed is not None:
            break
    assert framed == Framing(len(data) - 2, 2)


def test_parse_content_length() -> None:
    assert parse_content_length(None) is None
    assert parse_content_length(" 12\t") == 12
    assert parse_content_length("0") == 0
    refused = parse_content_length("٣")
    assert isinstance(refused, Refusal)
    assert refused.status == 400
