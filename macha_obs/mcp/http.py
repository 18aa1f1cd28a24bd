"""/mcp on the daemon's listener: the SDK's streamable HTTP, mounted as a WSGI app.

The listener is our own bounded WSGI server; the SDK's transport is ASGI. Rather than a
second listening socket (a uvicorn on a private port, proxied), the SDK's session
manager runs on one event loop in a thread of its own, and each WSGI request is handed
to it as an ASGI call whose response is streamed back chunk by chunk (the SSE stream of
a tool call, which carries an elicitation to the client while the tool waits). So the
listener's bounds (head and body size, deadlines, workers) and this module's checks
stand in front of every byte the SDK sees, and there is one port to secure.

Checked here before the SDK: the bearer token (401), Host and Origin against DNS
rebinding (403), the method (GET's standing event stream is not offered: 405, which the
protocol allows) and the body's size (413). A session that ends (DELETE, idle timeout,
a client gone) ends its pending requests: an approval waiting for its person's
confirmation is left pending.

The SDK (and what it pulls in: starlette, uvicorn, httpx, jsonschema, anyio; about
19 MiB of the daemon's RSS) is loaded by the first request that passes those checks, not
at start: an idle sidecar that no assistant talks to does not carry it (README "Idle cost").
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from wsgiref.types import StartResponse, WSGIEnvironment

from macha_obs.mcp.stats import McpStats

if TYPE_CHECKING:  # the SDK and asyncio are imported on first use (the docstring says why)
    import asyncio
    from concurrent.futures import Future

    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

    from macha_obs.mcp.server import MachaMcp

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_048_576
# The longest a single call may hold a listener worker (a person deciding included).
CALL_DEADLINE = 600.0
SESSION_IDLE = 1800.0
MAX_SESSIONS = 32
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")

Message = MutableMapping[str, Any]
# status line, result label, message, extra headers
_Refusal = tuple[str, str, str, list[tuple[str, str]]]


def allowed_hosts(listen_host: str, port: int, hostname: str, external_url: str | None) -> set[str]:
    """The Host values a request may carry: the listener's own names (DNS rebinding
    sends a foreign name to a loopback address), and the public URL's."""
    names = {*_LOOPBACK_HOSTS, f"[{listen_host}]" if ":" in listen_host else listen_host}
    if listen_host in ("0.0.0.0", "::", ""):  # noqa: S104  # a name, never bound here
        names.add(hostname)
    hosts = {f"{name}:{port}" for name in names}
    if external_url:
        hosts.add(urlsplit(external_url).netloc)
    return hosts


class McpHttp:
    """The WSGI app for /mcp; `close` at shutdown. `build` makes the server, once, when
    the first request passes the checks; the session manager's loop starts then."""

    def __init__(
        self,
        build: Callable[[], MachaMcp],
        *,
        token: str | None,
        hosts: set[str],
        stats: McpStats,
        max_body: int = MAX_BODY_BYTES,
        call_deadline: float = CALL_DEADLINE,
    ) -> None:
        self.token = token
        self.hosts = {h.lower() for h in hosts}
        self.stats = stats
        self.max_body = max_body
        self.call_deadline = call_deadline
        self._build = build
        self._starting = threading.Lock()
        self._closed = False
        self.manager: StreamableHTTPSessionManager | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # ------------------------------------------------------------ the loop

    def _running(self) -> asyncio.AbstractEventLoop | None:
        """The session manager's loop, started by the first request that needs it; None
        once closed, or when it could not start."""
        with self._starting:
            if self._thread is None and not self._closed:
                try:
                    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

                    self.manager = StreamableHTTPSessionManager(
                        app=self._build()._mcp_server,  # the SDK's documented way to mount it
                        session_idle_timeout=SESSION_IDLE,
                        max_sessions=MAX_SESSIONS,
                        max_request_body_size=self.max_body,
                    )
                except Exception:
                    log.exception("mcp: the server could not be built")
                    return None  # a 503; the next request tries again
                self._thread = threading.Thread(target=self._serve, name="macha-mcp", daemon=True)
                self._thread.start()
                if not self._ready.wait(10):
                    log.error("mcp: the session manager did not start")
        loop = self._loop
        return None if loop is None or loop.is_closed() else loop

    def _serve(self) -> None:
        import asyncio

        manager = self.manager
        assert manager is not None  # noqa: S101 - set before the thread starts

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with manager.run():
                self._ready.set()
                await self._stop.wait()

        try:
            asyncio.run(main())
        except Exception:
            log.exception("mcp: the session manager stopped")
        finally:
            self._ready.set()

    def close(self, timeout: float = 5.0) -> None:
        with self._starting:
            self._closed = True  # no request starts the loop after this
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------ WSGI

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        refusal = self._refusal(environ)
        if refusal is not None:
            status, result, message, extra = refusal
            self.stats.count("none", result)
            return _plain(start_response, status, message, extra)
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        if len(body) != int(environ.get("CONTENT_LENGTH") or 0):
            self.stats.count("none", "invalid")
            return _plain(start_response, "400 Bad Request", "request body cut short")
        if body and not _is_json(body):  # the SDK answers undecodable bytes with a 500
            self.stats.count("none", "invalid")
            return _plain(start_response, "400 Bad Request", "the body is not JSON (UTF-8)")
        loop = self._running()
        if loop is None:
            return _plain(start_response, "503 Service Unavailable", "MCP is not running")
        return self._bridge(loop, environ, body, start_response)

    def _refusal(
        self, environ: WSGIEnvironment
    ) -> tuple[str, str, str, list[tuple[str, str]]] | None:
        host = environ.get("HTTP_HOST", "").lower()
        if host not in self.hosts:
            return "403 Forbidden", "forbidden", "Host not allowed (DNS rebinding)", []
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None and urlsplit(origin).netloc.lower() not in self.hosts:
            return "403 Forbidden", "forbidden", "Origin not allowed", []
        if self.token is not None and not _bearer_ok(environ, self.token):
            challenge = [("WWW-Authenticate", 'Bearer realm="macha-obs"')]
            return "401 Unauthorized", "unauthorized", "a bearer token is required", challenge
        method = environ.get("REQUEST_METHOD", "")
        if method not in ("POST", "DELETE"):
            allow = [("Allow", "POST, DELETE")]
            return "405 Method Not Allowed", "invalid", "POST or DELETE (no GET stream)", allow
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return "400 Bad Request", "invalid", "bad Content-Length", []
        if length > self.max_body:
            return "413 Content Too Large", "invalid", f"body over {self.max_body} bytes", []
        return None

    def _bridge(
        self,
        loop: asyncio.AbstractEventLoop,
        environ: WSGIEnvironment,
        body: bytes,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        import asyncio

        sent: queue.SimpleQueue[Message | None] = queue.SimpleQueue()
        gone = threading.Event()
        scope = _scope(environ)
        delivered = False

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            while not gone.is_set():  # the client went away: the SDK's streams end
                await asyncio.sleep(0.5)
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.put(message)

        manager = self.manager
        assert manager is not None  # noqa: S101 - the loop runs only with a manager

        async def call() -> None:
            try:
                await manager.handle_request(scope, receive, send)
            finally:
                sent.put(None)

        future = asyncio.run_coroutine_threadsafe(call(), loop)
        try:
            first = sent.get(timeout=self.call_deadline)
        except queue.Empty:
            first = None
        if first is None or first.get("type") != "http.response.start":
            gone.set()
            future.cancel()
            return _plain(start_response, "503 Service Unavailable", "no answer from MCP")
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in first.get("headers", [])
            if k.decode("latin-1").lower() not in _HOP_BY_HOP
        ]
        status = int(first["status"])
        start_response(f"{status} {_reason(status)}", headers)
        return _Stream(sent, gone, future, self.call_deadline)


class _Stream:
    """The response body, chunk by chunk as the SDK sends it; closing it (the client
    went away, or the listener is done) tells the SDK the client disconnected."""

    def __init__(
        self,
        sent: queue.SimpleQueue[Message | None],
        gone: threading.Event,
        future: Future[None],
        deadline: float,
    ) -> None:
        self.sent, self.gone, self.future, self.deadline = sent, gone, future, deadline

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                message = self.sent.get(timeout=self.deadline)
            except queue.Empty:
                return
            if message is None:
                return
            if message.get("type") != "http.response.body":
                continue
            chunk = bytes(message.get("body", b""))
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    def close(self) -> None:
        self.gone.set()


def _is_json(body: bytes) -> bool:
    try:
        json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return True


def _bearer_ok(environ: WSGIEnvironment, token: str) -> bool:
    scheme, _, given = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def _scope(environ: WSGIEnvironment) -> dict[str, Any]:
    headers = [
        (key[5:].replace("_", "-").lower().encode("latin-1"), str(value).encode("latin-1"))
        for key, value in environ.items()
        if key.startswith("HTTP_")
    ]
    for key, name in (("CONTENT_TYPE", b"content-type"), ("CONTENT_LENGTH", b"content-length")):
        if environ.get(key):
            headers.append((name, str(environ[key]).encode("latin-1")))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": environ.get("REQUEST_METHOD", "POST"),
        "scheme": "http",
        "path": "/mcp",
        "raw_path": b"/mcp",
        "root_path": "",
        "query_string": environ.get("QUERY_STRING", "").encode("latin-1"),
        "headers": headers,
        "client": (environ.get("REMOTE_ADDR", ""), int(environ.get("REMOTE_PORT") or 0)),
        "server": (environ.get("SERVER_NAME", ""), int(environ.get("SERVER_PORT") or 0)),
    }


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _plain(
    start_response: StartResponse,
    status: str,
    message: str,
    extra: Iterable[tuple[str, str]] = (),
) -> list[bytes]:
    body = (json.dumps({"error": message}) + "\n").encode()
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *extra],
    )
    return [body]
