"""One peer's answer over HTTP, whole within a wall-clock deadline, streamed into the
bounded reader (`pull_answer`).

A per-read timeout (requests' `timeout`) does not bound a peer that drips its answer a
byte at a time: each read succeeds, and the round waited 138 s on one. Here the deadline
is for the whole exchange: before every read the socket's timeout is set to what is left
of it (from the injected monotonic clock), and a timer shuts the socket down when it
passes, which also ends a connect or a header read that trickles. The answer is asked
for uncompressed (`Accept-Encoding: identity`): the byte bound is then the bound.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Callable, Mapping
from urllib.parse import unquote, urlencode, urlsplit

from macha_obs.intake.pull_answer import AnswerLimits, AnswerReader, AnswerRefused
from macha_obs.intake.pull_rules import PeerAnswer

CHUNK = 65536


class _Deadline:
    """Shuts a connection's socket down when the deadline passes, from its own timer."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float) -> None:
        self.conn = conn
        self.passed = threading.Event()
        self._timer = threading.Timer(max(0.0, seconds), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        self.passed.set()
        sock = self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # wakes a read blocked in another thread
                sock.shutdown(socket.SHUT_RDWR)


def fetch_answer(
    url: str,
    params: Mapping[str, str],
    *,
    peer: str,
    timeout: float,
    limits: AnswerLimits,
    clock: Callable[[], float] = time.monotonic,
) -> PeerAnswer:
    """GET `url` with `params`; the groups read within `timeout` seconds and `limits`,
    or a PeerAnswer saying why not (timeout, too_large, invalid, http_error, unreachable)."""
    parts = urlsplit(url)
    deadline = clock() + timeout
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname or "", parts.port, timeout=timeout)
    headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
    if parts.username is not None:
        user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(user_pass.encode()).decode()
    late = PeerAnswer(peer, "timeout", problem=f"answer not complete within {timeout:g}s")
    try:
        with _Deadline(conn, timeout) as timer:
            try:
                conn.request("GET", f"{parts.path}?{urlencode(params)}", headers=headers)
                reply = conn.getresponse()
                if reply.status != 200:
                    return PeerAnswer(peer, "http_error", problem=f"HTTP {reply.status}")
                reader = AnswerReader(limits)
                while True:
                    left = deadline - clock()
                    if left <= 0:
                        return late
                    if conn.sock is not None:
                        conn.sock.settimeout(left)
                    chunk = reply.read1(CHUNK)
                    if timer.passed.is_set():
                        return late
                    if not chunk:
                        break
                    reader.feed(chunk)
                groups = reader.finish()
            except AnswerRefused as exc:
                return PeerAnswer(peer, exc.result, problem=str(exc))
            except TimeoutError:
                return late
            except (OSError, http.client.HTTPException) as exc:
                if timer.passed.is_set():
                    return late
                return PeerAnswer(peer, "unreachable", problem=_cause(exc))
    finally:
        conn.close()
    return PeerAnswer(peer, "ok", groups)


def _cause(exc: BaseException) -> str:
    """The root cause of a request error, short ("[Errno 111] Connection refused")."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return f"{type(exc).__name__}: [Errno {seen.errno}] {seen.strerror}"
        seen = seen.__cause__ or seen.__context__
    return f"{type(exc).__name__}: {exc}"
