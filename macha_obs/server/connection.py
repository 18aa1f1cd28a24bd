"""One connection's states and a worker's side of it: `Pending` while its request arrives
(in the accepting thread), a `Job` once handed to a worker, which reads the rest from the
socket within the request's deadline and answers with wsgiref's handler."""

from __future__ import annotations

import io
import socket
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from macha_obs.server.bounds import Framing


@dataclass(eq=False)
class Pending:
    """A connection whose request is still arriving, in the accepting thread."""

    sock: socket.socket
    address: Any
    deadline: float
    data: bytearray = field(default_factory=bytearray)
    scanned: int = 0
    framing: Framing | None = None


@dataclass(frozen=True)
class Job:
    sock: socket.socket
    address: Any
    start: bytes
    deadline: float
    streaming: bool  # the body is still arriving: the worker reads it, within the deadline


class RequestStream(io.RawIOBase):
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


class Handler(WSGIRequestHandler):
    """wsgiref's handler on a request whose start is already in hand; no access log."""

    def __init__(self, job: Job, server: WSGIServer, request_timeout: float) -> None:
        self._job, self._timeout = job, request_timeout
        super().__init__(job.sock, job.address, server)

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self.rfile = io.BufferedReader(
            RequestStream(self._job.start, self.connection, self._job.deadline, self._timeout)
        )

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        if code >= 500:  # only 505 for "HTTP/2.0": a client's mistake, so a 4xx
            code, message = HTTPStatus.BAD_REQUEST, f"{message or 'bad request'}; use HTTP/1.x"
        if self.request_version == "HTTP/0.9":  # not parsed yet: still answer with a status
            self.request_version = "HTTP/1.0"
        super().send_error(code, message, explain)

    def log_message(self, format: str, *args: Any) -> None:
        del format, args
