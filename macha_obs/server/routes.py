"""The listener's routes: GET /metrics, /healthz, /readyz, POST /alerts and the approvals
pages under /approvals, as one WSGI app.

The webhook and the pages are injected WSGI callables, so the server imports neither the
receiver nor the web room.
/metrics is whatever the metrics room renders from the registry (gzip when asked for).
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry

from macha_obs.metrics import CONTENT_TYPE, scrape_text

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
    body = scrape_text(registry)
    headers = [("Content-Type", CONTENT_TYPE)]
    if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
        body = gzip.compress(body, compresslevel=GZIP_LEVEL)
        headers.append(("Content-Encoding", "gzip"))
    return _reply(start_response, "200 OK", body, headers, head=method == "HEAD")


def _readyz(
    environ: WSGIEnvironment,
    start_response: StartResponse,
    health: Callable[[], Mapping[str, str]] | None,
    ready: Callable[[], bool],
    *,
    head: bool,
) -> list[bytes]:
    if health is not None:
        problems = dict(health())
    else:
        problems = {} if ready() else {"no_snapshot": "no snapshot yet"}
    status = "503 Service Unavailable" if problems else "200 OK"
    if "application/json" in environ.get("HTTP_ACCEPT", ""):
        body = json.dumps({"ready": not problems, "problems": problems}).encode()
        return _reply(
            start_response, status, body, [("Content-Type", "application/json")], head=head
        )
    text = "\n".join(problems.values()) if problems else "ready"
    return _reply(start_response, status, f"{text}\n".encode(), head=head)


def make_app(
    registry: CollectorRegistry,
    *,
    alerts_app: WSGIApplication | None = None,
    pages_app: WSGIApplication | None = None,
    ready: Callable[[], bool] = lambda: True,
    health: Callable[[], Mapping[str, str]] | None = None,
) -> WSGIApplication:
    """Route the listener's paths; `alerts_app` None answers POST /alerts with 404, and
    `pages_app` None /approvals (the pages check their own credentials).

    `health`, when given, decides /readyz: the problems that keep the sidecar from its
    job (macha_obs/server/health.py), none when ready; their reasons are the 503's body,
    or, asked for JSON (`macha-obs status`), {"ready", "problems": {name: reason}}.
    Without it, `ready()` does."""

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
            return _readyz(environ, start_response, health, ready, head=head)
        if path == "/alerts" and alerts_app is not None:
            if method != "POST":
                return _not_allowed(start_response, "POST")
            return alerts_app(environ, start_response)
        if pages_app is not None and (path == "/approvals" or path.startswith("/approvals/")):
            return pages_app(environ, start_response)
        return _reply(start_response, "404 Not Found", b"not found\n")

    return app
