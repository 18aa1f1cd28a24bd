"""The one HTTP listener: wsgiref behind an accepting loop that degrades and never dies.

One thread (`macha-http`) accepts connections and reads each request up to the end of
its head and the start of its body, with a deadline for the whole request, so idle and
trickling clients cost a socket and a small buffer, never a thread; only a complete
request (or one with a large body still arriving) is handed to a fixed pool of workers.
Everything has a bound (`Limits`): when it is reached the client gets a quick 503 with
Retry-After, or a 4xx for a request that can never be served, and /healthz keeps
answering. One request per connection (HTTP/1.0 replies), so keep-alive and pipelining
cannot pin a worker. Every connection's end is counted in `ListenerStats`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import selectors
import socket
import threading
import time
from http import HTTPStatus
from wsgiref.simple_server import WSGIServer
from wsgiref.types import WSGIApplication

from macha_obs.server.bounds import (
    Limits,
    ListenerStats,
    Refusal,
    frame,
    plain_response,
)
from macha_obs.server.connection import Handler, Job, Pending

log = logging.getLogger(__name__)


class Listener(WSGIServer):
    """A WSGI server with every resource bounded by `Limits` (see the module docstring)."""

    allow_reuse_address = True
    request_queue_size = 128  # the kernel's accept backlog; a burst waits there, briefly

    def __init__(
        self,
        address: tuple[str, int],
        app: WSGIApplication,
        limits: Limits,
        stats: ListenerStats | None = None,
    ) -> None:
        """`stats` may be made first, so the registry can export it before we listen."""
        self.address_family = socket.getaddrinfo(address[0], None, type=socket.SOCK_STREAM)[0][0]
        self.limits = limits
        self.stats = stats or ListenerStats()
        super().__init__(address, Handler)  # type: ignore[arg-type]  # built by _work
        self.set_app(app)
        self._lock = threading.Lock()
        self._in_flight = 0  # requests handed to the pool and not finished
        self._streaming = 0  # of those, how many still receive their body
        self._workers: list[threading.Thread] = []
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._finished: queue.SimpleQueue[socket.socket] = queue.SimpleQueue()
        self._pending: dict[socket.socket, Pending] = {}  # by arrival, so by deadline
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
                if selector.get_map().get(key.fd) is not key:
                    # Stale: an earlier event of this batch closed this socket (making
                    # room, evicting) or registered it anew (answered, now lingering).
                    # Its fd may even be a newer socket's: that one's events come next.
                    continue
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
            if isinstance(key.data, Pending):
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
            self._pending[sock] = pending = Pending(sock, address, deadline)
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
        return plain_response(
            HTTPStatus.SERVICE_UNAVAILABLE, f"busy ({why}); retry", [("Retry-After", retry)]
        )

    def _receive(self, selector: selectors.BaseSelector, pending: Pending) -> None:
        try:
            chunk = pending.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:  # the client stopped sending before its request was complete
            if pending.data:  # it may still read (a half-close): tell it why
                answer = plain_response(HTTPStatus.BAD_REQUEST, "request ended early")
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
                answer = plain_response(framed.status, framed.message)
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
        self, selector: selectors.BaseSelector, pending: Pending, streaming: bool
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
        job = Job(pending.sock, pending.address, bytes(pending.data), pending.deadline, streaming)
        self._jobs.put(job)

    def _refuse(
        self, selector: selectors.BaseSelector, pending: Pending, answer: bytes, outcome: str
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
        with contextlib.suppress(KeyError, ValueError):  # never registered twice over
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
        self._closing.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError):
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
                answer = plain_response(HTTPStatus.REQUEST_TIMEOUT, "request not received in time")
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
                Handler(job, self, self.limits.request_timeout)
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
    host: str,
    port: int,
    app: WSGIApplication,
    *,
    limits: Limits | None = None,
    stats: ListenerStats | None = None,
) -> tuple[Listener, threading.Thread]:
    """Serve `app` on host:port in a daemon thread; port 0 picks one (see server.server_port)."""
    server = Listener((host, port), app, limits or Limits(), stats)
    thread = threading.Thread(target=server.serve_forever, name="macha-http", daemon=True)
    thread.start()
    log.info("listening on %s:%d", host, server.server_port)
    return server, thread


def shutdown(server: Listener, thread: threading.Thread, timeout: float = 10.0) -> None:
    """Stop accepting, close the socket, wait for the serving thread."""
    server.shutdown()
    server.server_close()
    thread.join(timeout)
