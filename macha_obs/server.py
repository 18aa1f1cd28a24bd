"""The one HTTP listener: GET /metrics, /healthz, /readyz and POST /alerts, as one WSGI app.

wsgiref with a thread per request (prometheus_client's ThreadingWSGIServer): no web
framework, and a slow client costs one thread, never the listener. The webhook is an
injected WSGI callable, so this module does not import the receiver. /metrics renders
the registry with exposition.render (the text format, gzip when asked for): the same
bytes as prometheus_client's own handler, in less time.
"""

from __future__ import annotations

import gzip
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, ThreadingWSGIServer

from macha_obs.exposition import render

log = logging.getLogger(__name__)

# Go's default level, as node_exporter uses: level 9 (gzip's default) costs ~10x the CPU
# for a few percent less on the wire.
GZIP_LEVEL = 6


def _reply(
    start_response: StartResponse,
    status: str,
    body: bytes,
    headers: Iterable[tuple[str, str]] = (("Content-Type", "text/plain; charset=utf-8"),),
    *,
    head: bool = False,
) -> list[bytes]:
    start_response(status, [*headers, ("Content-Length", str(len(body)))])
    return [] if head else [body]


def _not_allowed(start_response: StartResponse, allow: str) -> list[bytes]:
    return _reply(
        start_response,
        "405 Method Not Allowed",
        f"use {allow}\n".encode(),
        [("Content-Type", "text/plain; charset=utf-8"), ("Allow", allow)],
    )


def _metrics(
    registry: CollectorRegistry, environ: WSGIEnvironment, start_response: StartResponse
) -> list[bytes]:
    method = environ.get("REQUEST_METHOD", "GET")
    if method == "OPTIONS":
        return _reply(start_response, "200 OK", b"", [("Allow", "GET, HEAD, OPTIONS")])
    if method not in ("GET", "HEAD"):
        return _not_allowed(start_response, "GET, HEAD, OPTIONS")
    body = render(registry.collect())
    headers = [("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)]
    if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
        body = gzip.compress(body, compresslevel=GZIP_LEVEL)
        headers.append(("Content-Encoding", "gzip"))
    return _reply(start_response, "200 OK", body, headers, head=method == "HEAD")


def make_app(
    registry: CollectorRegistry,
    *,
    alerts_app: WSGIApplication | None = None,
    ready: Callable[[], bool] = lambda: True,
) -> WSGIApplication:
    """Route the listener's paths; `alerts_app` None answers POST /alerts with 404."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/metrics":
            return _metrics(registry, environ, start_response)
        if path in ("/healthz", "/readyz"):
            if method not in ("GET", "HEAD"):
                return _not_allowed(start_response, "GET, HEAD")
            head = method == "HEAD"
            if path == "/healthz":
                return _reply(start_response, "200 OK", b"ok\n", head=head)
            if ready():
                return _reply(start_response, "200 OK", b"ready\n", head=head)
            return _reply(
                start_response, "503 Service Unavailable", b"no snapshot yet\n", head=head
            )
        if path == "/alerts" and alerts_app is not None:
            if method != "POST":
                return _not_allowed(start_response, "POST")
            return alerts_app(environ, start_response)
        return _reply(start_response, "404 Not Found", b"not found\n")

    return app


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: Prometheus scrapes every few seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


def _server_class(host: str) -> type[ThreadingWSGIServer]:
    family = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]

    class Server(ThreadingWSGIServer):
        address_family = family
        allow_reuse_address = True

    return Server


def start_server(
    host: str, port: int, app: WSGIApplication
) -> tuple[ThreadingWSGIServer, threading.Thread]:
    """Serve `app` on host:port in a daemon thread; port 0 picks one (see server.server_port)."""
    server = make_server(
        host, port, app, server_class=_server_class(host), handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="macha-http", daemon=True)
    thread.start()
    log.info("listening on %s:%d", host, server.server_port)
    return server, thread


def shutdown(server: ThreadingWSGIServer, thread: threading.Thread, timeout: float = 10.0) -> None:
    """Stop accepting, close the socket, wait for the serving thread."""
    server.shutdown()
    server.server_close()
    thread.join(timeout)
