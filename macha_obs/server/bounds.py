"""The listener's bounds and the decisions they make, pure: `Limits`, framing a request's
start (where its head ends, how long its body says it is), the answers the listener
gives itself, and the counts of its decisions by outcome (exported by metrics/listener.py
through a protocol, so the metrics room does not import the server).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus


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


def plain_response(
    status: HTTPStatus, message: str, headers: Iterable[tuple[str, str]] = ()
) -> bytes:
    body = f"{message}\n".encode()
    lines = [
        f"HTTP/1.0 {status.value} {status.phrase}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


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
