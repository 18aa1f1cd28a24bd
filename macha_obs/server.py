"""The one HTTP listener: GET /metrics, /healthz, /readyz and POST /alerts, as one WSGI app.

wsgiref behind a listener that degrades and never dies. One thread (`macha-http`) accepts
connections and reads each request up to the end of its head and the start of its body,
with a deadline for the whole request, so idle and trickling clients cost a socket and a
small buffer, never a thread; only a complete request (or one with a large body still
arriving) is handed to a fixed pool of workers. Everything has a bound (`Limits`): when
it is reached the client gets a quick 503 with Retry-After, or a 4xx for a request that
can never be served, and /healthz keeps answering. One request per connection (HTTP/1.0
replies), so keep-alive and pipelining cannot pin a worker. The webhook is an injected
WSGI callable, so this module does not import the receiver. /metrics renders the
registry with exposition.render (the text format, gzip when asked for).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import queue
import re
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

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
    health: Callable[[], str | None] | None = None,
) -> WSGIApplication:
    """Route the listener's paths; `alerts_app` None answers POST /alerts with 404.

    `health`, when given, decides /readyz: None is ready, else the reasons it is not,
    in the 503's body (macha_obs/health.py); without it, `ready()` does."""

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
            why = health() if health is not None else (None if ready() else "no snapshot yet")
            if why is None:
                return _reply(start_response, "200 OK", b"ready\n", head=head)
            return _reply(start_response, "503 Service Unavailable", f"{why}\n".encode(), head=head)
        if path == "/alerts" and alerts_app is not None:
            if method != "POST":
                return _not_allowed(start_response, "POST")
            return alerts_app(environ, start_response)
        return _reply(start_response, "404 Not Found", b"not found\n")

    return app


# ---------------------------------------------------------------- bounds and framing (pure)


@dataclass(frozen=True)
class Limits:
    """The listener's bounds. Defaults sit well under the unit's TasksMax=256 and the
    default 1024 open files, and above anything Alertmanager sends."""

    workers: int = 32  # threads running requests; as many again may wait for one
    connections: int = 512  # requests being received; beyond, the oldest is dropped
    request_timeout: float = 10.0  # to receive a whole request, head and body
    head_bytes: int = 16 * 1024  # request line and headers
    prebuffer_bytes: int = 64 * 1024  # bodies up to this arrive before a worker is used
    linger: float = 2.0  # to drain what a client still sends after our answer
    retry_after: int = 5  # seconds, in every 503

    def __post_init__(self) -> None:
        if min(self.workers, self.connections, self.head_bytes) < 1:
            raise ValueError(f"listener limits must be positive: {self}")


@dataclass(frozen=True)
class Framing:
    """Where a request's head ends and how long its body says it is."""

    head_length: int
    content_length: int


@dataclass(frozen=True)
class Refusal:
    """A request the listener answers itself (always a 4xx: its input is wrong)."""

    status: HTTPStatus
    message: str
    reason: str  # a ListenerStats key


_HEAD_END = re.compile(rb"\r?\n\r?\n")
_DIGITS = re.compile(r"[0-9]{1,15}")  # ASCII digits only: "²".isdigit() is True
_OWS = " \t"


def parse_content_length(value: str | None) -> int | Refusal | None:
    """A Content-Length header's value: an int, None when absent, or why it is refused."""
    if value is None:
        return None
    text = value.strip(_OWS)
    if _DIGITS.fullmatch(text):
        return int(text)
    if text.isascii() and text.isdigit():
        return Refusal(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Content-Length too large", "large")
    return Refusal(HTTPStatus.BAD_REQUEST, "Content-Length must be ASCII digits", "length")


def frame(data: bytes | bytearray, head_limit: int, start: int = 0) -> Framing | Refusal | None:
    """Frame the start of a request: None until its head is complete; `start` is where to
    resume looking for the head's end. Only what framing needs is checked here; wsgiref
    parses the rest (and answers its own 400/414/431)."""
    end = _HEAD_END.search(data, max(0, start - 3), head_limit + 4)
    if end is None:
        if len(data) <= head_limit:
            return None
        if b"\n" not in data[:head_limit]:
            return Refusal(HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long", "head")
        return Refusal(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            f"request head over {head_limit} bytes",
            "head",
        )
    lengths: set[int] = set()
    for line in bytes(data[: end.start()]).split(b"\n")[1:]:
        name, colon, raw = line.partition(b":")
        if not colon:
            continue
        name = name.strip().lower()
        if name == b"transfer-encoding":
            message = "chunked or encoded bodies are not accepted: send Content-Length"
            return Refusal(HTTPStatus.LENGTH_REQUIRED, message, "chunked")
        if name == b"content-length":
            length = parse_content_length(raw.decode("latin-1").rstrip("\r"))
            if isinstance(length, Refusal):
                return length
            lengths.add(length or 0)
    if len(lengths) > 1:
        return Refusal(HTTPStatus.BAD_REQUEST, "conflicting Content-Length headers", "length")
    return Framing(end.end(), lengths.pop() if lengths else 0)


def _response(status: HTTPStatus, message: str, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    body = f"{message}\n".encode()
    lines = [
        f"HTTP/1.0 {status.value} {status.phrase}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# ---------------------------------------------------------------- the listener

# Outcomes the listener decides itself, a fixed set (a label value for an exporter).
LISTENER_OUTCOMES = (
    "served",  # handed to a worker
    "saturated",  # 503: every worker busy and as many requests waiting
    "evicted",  # 503: the oldest unfinished request, dropped for a new connection
    "timed_out",  # 408 (or closed, if it sent nothing): not received within the deadline
    "head",  # 414/431: request line or head too large
    "length",  # 400: Content-Length not ASCII digits, or conflicting
    "large",  # 413: Content-Length with more than 15 digits
    "chunked",  # 411: Transfer-Encoding (Alertmanager never sends one)
    "closed_early",  # 400 (or closed, if it sent nothing): EOF before the request was whole
)


class ListenerStats:
    """Counts of the listener's own decisions since start."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter(dict.fromkeys(LISTENER_OUTCOMES, 0))

    def count(self, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


@dataclass(eq=False)
class _Pending:
    """A connection whose request is still arriving, in the accepting thread."""

    sock: socket.socket
    address: Any
    deadline: float
    data: bytearray = field(default_factory=bytearray)
    scanned: int = 0
    framing: Framing | None = None


@dataclass(frozen=True)
class _Job:
    sock: socket.socket
    address: Any
    start: bytes
    deadline: float
    streaming: bool  # the body is still arriving: the worker reads it, within the deadline


class _RequestStream(io.RawIOBase):
    """What the accepting thread received, then the socket, until the request's deadline.

    Past the deadline, or when the socket fails, the request simply ends: a body cut
    short is the application's 400, never a timeout exception turned into a 500.
    """

    def __init__(self, start: bytes, sock: socket.socket, deadline: float, timeout: float):
        super().__init__()
        self._start = memoryview(start)
        self._sock, self._deadline, self._timeout = sock, deadline, timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._start:
            n = min(len(buffer), len(self._start))
            buffer[:n] = self._start[:n]
            self._start = self._start[n:]
            return n
        left = self._deadline - time.monotonic()
        if left <= 0:
            return 0
        try:
            self._sock.settimeout(left)
            return self._sock.recv_into(buffer)
        except OSError:  # timed out, reset, closed: the request ends here
            return 0
        finally:
            self._sock.settimeout(self._timeout)  # for writing the reply


class _Handler(WSGIRequestHandler):
    """wsgiref's handler on a request whose start is already in hand; no access log."""

    server: Listener

    def __init__(self, job: _Job, server: Listener) -> None:
        self._job = job
        super().__init__(job.sock, job.address, server)

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        timeout = self.server.limits.request_timeout
        self.rfile = io.BufferedReader(
            _RequestStream(self._job.start, self.connection, self._job.deadline, timeout)
        )

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        if code >= 500:  # only 505 for "HTTP/2.0": a client's mistake, so a 4xx
            code, message = HTTPStatus.BAD_REQUEST, f"{message or 'bad request'}; use HTTP/1.x"
        if self.request_version == "HTTP/0.9":  # not parsed yet: still answer with a status
            self.request_version = "HTTP/1.0"
        super().send_error(code, message, explain)

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


class Listener(WSGIServer):
    """A WSGI server with every resource bounded by `Limits` (see the module docstring)."""

    allow_reuse_address = True
    request_queue_size = 128  # the kernel's accept backlog; a burst waits there, briefly

    def __init__(self, address: tuple[str, int], app: WSGIApplication, limits: Limits) -> None:
        self.address_family = socket.getaddrinfo(address[0], None, type=socket.SOCK_STREAM)[0][0]
        self.limits = limits
        self.stats = ListenerStats()
        super().__init__(address, _Handler)  # type: ignore[arg-type]  # built by _work
        self.set_app(app)
        self._lock = threading.Lock()
        self._in_flight = 0  # requests handed to the pool and not finished
        self._streaming = 0  # of those, how many still receive their body
        self._workers: list[threading.Thread] = []
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._finished: queue.SimpleQueue[socket.socket] = queue.SimpleQueue()
        self._pending: dict[socket.socket, _Pending] = {}  # by arrival, so by deadline
        self._closing: dict[socket.socket, float] = {}  # answered; draining until a time
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = threading.Event()
        self._serving = threading.Lock()  # held by serve_forever
        self._closed = False

    # ------------------------------------------------------------ the accepting thread

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept and receive until shutdown(); one thread, every socket non-blocking."""
        with self._serving:
            if self._stop.is_set():
                return
            self.socket.setblocking(False)
            with selectors.DefaultSelector() as selector:
                try:
                    self._loop(selector, poll_interval)
                finally:
                    for sock in [*self._pending, *self._closing]:
                        sock.close()
                    self._pending.clear()
                    self._closing.clear()

    def _loop(self, selector: selectors.BaseSelector, poll_interval: float) -> None:
        selector.register(self.socket, selectors.EVENT_READ)
        selector.register(self._wake_r, selectors.EVENT_READ)
        paused_until = 0.0  # accept() failed for want of file descriptors
        while not self._stop.is_set():
            now = time.monotonic()
            if paused_until and now >= paused_until:
                paused_until = 0.0
                selector.register(self.socket, selectors.EVENT_READ)
            times = [now + poll_interval, *([paused_until] if paused_until else [])]
            if self._pending:
                times.append(next(iter(self._pending.values())).deadline)
            if self._closing:
                times.append(next(iter(self._closing.values())))
            for key, _ in selector.select(max(0.0, min(times) - now)):
                if key.fileobj is self.socket:
                    if not self._accept(selector):
                        selector.unregister(self.socket)
                        paused_until = time.monotonic() + 0.1
                elif key.fileobj is self._wake_r:
                    self._take_finished(selector)
                else:
                    self._serve_one(selector, key)
            self._expire(selector, time.monotonic())

    def _serve_one(self, selector: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
        """One connection's event; a bug here costs that connection, never the listener."""
        sock: socket.socket = key.fileobj  # type: ignore[assignment]
        try:
            if isinstance(key.data, _Pending):
                self._receive(selector, key.data)
            else:
                self._drain(selector, sock)
        except Exception:
            log.exception("listener: dropping a connection after an unexpected error")
            self._pending.pop(sock, None)
            self._closing.pop(sock, None)
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(sock)
            sock.close()

    def _accept(self, selector: selectors.BaseSelector) -> bool:
        """Accept what is waiting; False when out of file descriptors with none to free."""
        for _ in range(64):
            try:
                sock, address = self.socket.accept()
            except BlockingIOError:
                return True
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: free a socket, then retry
                if not self._close_oldest(selector):
                    log.warning("cannot accept a connection: %s", exc)
                    return False
                continue
            self._make_room(selector)
            sock.setblocking(False)
            deadline = time.monotonic() + self.limits.request_timeout
            self._pending[sock] = pending = _Pending(sock, address, deadline)
            selector.register(sock, selectors.EVENT_READ, pending)
        return True

    def _make_room(self, selector: selectors.BaseSelector) -> None:
        """Keep the sockets held here (receiving or lingering) within `connections`:
        lingering ones go first, then the oldest unfinished request is answered 503."""
        while len(self._pending) + len(self._closing) >= self.limits.connections:
            if self._closing:
                self._close_oldest(selector)
            else:
                oldest = next(iter(self._pending.values()))
                self._refuse(selector, oldest, self._busy("too many connections"), "evicted")

    def _close_oldest(self, selector: selectors.BaseSelector) -> bool:
        """Close a lingering socket, else the oldest receiving one; False if none."""
        if self._closing:
            sock = next(iter(self._closing))
            del self._closing[sock]
        elif self._pending:
            sock = next(iter(self._pending))
            del self._pending[sock]
            self.stats.count("evicted")
        else:
            return False
        selector.unregister(sock)
        sock.close()
        return True

    def _busy(self, why: str) -> bytes:
        retry = str(self.limits.retry_after)
        return _response(
            HTTPStatus.SERVICE_UNAVAILABLE, f"busy ({why}); retry", [("Retry-After", retry)]
        )

    def _receive(self, selector: selectors.BaseSelector, pending: _Pending) -> None:
        try:
            chunk = pending.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:  # the client stopped sending before its request was complete
            if pending.data:  # it may still read (a half-close): tell it why
                answer = _response(HTTPStatus.BAD_REQUEST, "request ended early")
                self._refuse(selector, pending, answer, "closed_early")
            else:
                self.stats.count("closed_early")
                self._forget(selector, pending.sock)
                pending.sock.close()
            return
        pending.data += chunk
        if pending.framing is None:
            framed = frame(pending.data, self.limits.head_bytes, pending.scanned)
            pending.scanned = len(pending.data)
            if isinstance(framed, Refusal):
                answer = _response(framed.status, framed.message)
                self._refuse(selector, pending, answer, framed.reason)
                return
            if framed is None:
                return
            pending.framing = framed
        body = min(pending.framing.content_length, self.limits.prebuffer_bytes)
        if len(pending.data) >= pending.framing.head_length + body:
            streaming = pending.framing.content_length > self.limits.prebuffer_bytes
            self._dispatch(selector, pending, streaming)

    def _dispatch(
        self, selector: selectors.BaseSelector, pending: _Pending, streaming: bool
    ) -> None:
        with self._lock:
            # Bodies still arriving may hold half of the workers, not all of them.
            full = self._in_flight >= 2 * self.limits.workers or (
                streaming and self._streaming >= max(1, self.limits.workers // 2)
            )
            if not full:
                self._in_flight += 1
                self._streaming += streaming
                if len(self._workers) < min(self._in_flight, self.limits.workers):
                    worker = threading.Thread(
                        target=self._work, name="macha-http-worker", daemon=True
                    )
                    self._workers.append(worker)
                    worker.start()
        if full:
            self._refuse(selector, pending, self._busy("every worker is busy"), "saturated")
            return
        self.stats.count("served")
        self._forget(selector, pending.sock)
        job = _Job(pending.sock, pending.address, bytes(pending.data), pending.deadline, streaming)
        self._jobs.put(job)

    def _refuse(
        self, selector: selectors.BaseSelector, pending: _Pending, answer: bytes, outcome: str
    ) -> None:
        """Answer from this thread (a few hundred bytes fit any send buffer), then linger."""
        self.stats.count(outcome)
        self._forget(selector, pending.sock)
        try:
            pending.sock.send(answer)
            pending.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pending.sock.close()
            return
        self._linger(selector, pending.sock)

    def _forget(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        self._pending.pop(sock, None)
        selector.unregister(sock)

    def _linger(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        """Read and drop what the client still sends, so closing does not reset the
        connection before it has read our answer (a close with unread data sends RST)."""
        if len(self._pending) + len(self._closing) >= self.limits.connections:
            self._close_oldest(selector)
        self._closing[sock] = time.monotonic() + self.limits.linger
        selector.register(sock, selectors.EVENT_READ)

    def _drain(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        try:
            if sock.recv(65536):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        del self._closing[sock]
        selector.unregister(sock)
        sock.close()

    def _take_finished(self, selector: selectors.BaseSelector) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                sock = self._finished.get_nowait()
            except queue.Empty:
                return
            sock.setblocking(False)
            self._linger(selector, sock)

    def _expire(self, selector: selectors.BaseSelector, now: float) -> None:
        while self._pending:
            pending = next(iter(self._pending.values()))
            if pending.deadline > now:
                break
            if pending.data:
                answer = _response(HTTPStatus.REQUEST_TIMEOUT, "request not received in time")
                self._refuse(selector, pending, answer, "timed_out")
            else:  # an idle connection: nothing was asked, nothing to answer
                self.stats.count("timed_out")
                self._forget(selector, pending.sock)
                pending.sock.close()
        while self._closing:
            sock, until = next(iter(self._closing.items()))
            if until > now:
                break
            del self._closing[sock]
            selector.unregister(sock)
            sock.close()

    # ------------------------------------------------------------ the workers

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job.sock.setblocking(True)
                job.sock.settimeout(self.limits.request_timeout)
                _Handler(job, self)
            except OSError:  # the client went away mid-answer
                pass
            except Exception:
                log.exception("request from %s failed", job.address)
            finally:
                with self._lock:
                    self._in_flight -= 1
                    self._streaming -= job.streaming
                self._hand_back(job.sock)

    def _hand_back(self, sock: socket.socket) -> None:
        """Give an answered connection to the accepting thread to linger and close."""
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        with self._lock:
            if self._closed:
                sock.close()
                return
            self._finished.put(sock)
        with contextlib.suppress(OSError):  # a full wake-up pipe: the thread is awake
            self._wake_w.send(b"\0")

    def receiving(self) -> int:
        """Requests still arriving: held by the accepting thread, not by a worker."""
        return len(self._pending)

    # ------------------------------------------------------------ stopping

    def shutdown(self) -> None:
        """Stop accepting and receiving; wait for the accepting thread; free the workers."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        with self._serving:  # serve_forever has returned, or will return at once
            pass
        with self._lock:
            for _ in self._workers:
                self._jobs.put(None)
            self._workers.clear()

    def server_close(self) -> None:
        with self._lock:
            self._closed = True
        super().server_close()
        self._wake_r.close()
        self._wake_w.close()
        while True:
            try:
                self._finished.get_nowait().close()
            except queue.Empty:
                return


def start_server(
    host: str, port: int, app: WSGIApplication, *, limits: Limits | None = None
) -> tuple[Listener, threading.Thread]:
    """Serve `app` on host:port in a daemon thread; port 0 picks one (see server.server_port)."""
    server = Listener((host, port), app, limits or Limits())
    thread = threading.Thread(target=server.serve_forever, name="macha-http", daemon=True)
    thread.start()
    log.info("listening on %s:%d", host, server.server_port)
    return server, thread


def shutdown(server: Listener, thread: threading.Thread, timeout: float = 10.0) -> None:
    """Stop accepting, close the socket, wait for the serving thread."""
    server.shutdown()
    server.server_close()
    thread.join(timeout)
