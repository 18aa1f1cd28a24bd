"""A fake Alertmanager peer on loopback that answers `/api/v2/alerts/groups` as a broken
or hostile one would: a flood of tiny values, deep nesting, a drip. The network
boundary, where a fake belongs: a real Alertmanager does none of this on cue.

Answers are generated as they are sent (from one repeated block), so the peer itself
holds a few kilobytes whatever it sends: the memory a test measures is the reader's.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MB = 1_048_576


def flat_objects(size: int) -> Iterator[bytes]:
    """`[{},{},…]` of about `size` bytes: the shape that took the intake to 1.66 GB."""
    block = b"{}," * 21_845  # 64 KiB
    yield b"["
    for _ in range(size // len(block)):
        yield block
    yield b"{}]"


def alerts_of_nothing(size: int) -> Iterator[bytes]:
    """One group whose alerts are `{}` by the million: `[{"alerts":[{},{},…]}]`."""
    block = b"{}," * 21_845
    yield b'[{"labels":{},"receiver":{"name":"x"},"alerts":['
    for _ in range(size // len(block)):
        yield block
    yield b"{}]}]"


def deep(size: int) -> Iterator[bytes]:
    """Nesting as deep as `size` allows: `[{"alerts":[{"a":[[[[…]]]]}]}]`."""
    half = size // 2
    yield b'[{"alerts":[{"a":'
    for _ in range(half // 65536):
        yield b"[" * 65536
    for _ in range(half // 65536):
        yield b"]" * 65536
    yield b"}]}]"


def real_groups(groups: int, alerts: int, host: str = "otherhost") -> Iterator[bytes]:
    """`groups` groups of `alerts` alerts each, as Alertmanager writes them."""
    yield b"["
    for g in range(groups):
        group = {
            "labels": {"alertname": f"Storm{g}"},
            "receiver": {"name": "nobody"},
            "alerts": [
                {
                    "annotations": {"summary": f"unit{a} failed", "description": "x" * 80},
                    "endsAt": "2099-01-01T00:00:00.000Z",
                    "fingerprint": f"{g:06x}{a:010x}",
                    "receivers": [{"name": "nobody"}],
                    "startsAt": "2026-12-01T10:00:00.000Z",
                    "status": {"inhibitedBy": [], "silencedBy": [], "state": "active"},
                    "updatedAt": "2026-12-01T10:00:00.000Z",
                    "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
                    "labels": {
                        "alertname": f"Storm{g}",
                        "instance": f"{host}:9100",
                        "job": "node",
                        "severity": "warning",
                        "unit": f"unit{a}.service",
                    },
                }
                for a in range(alerts)
            ],
        }
        yield (b"," if g else b"") + json.dumps(group).encode()
    yield b"]"


class HostilePeer:
    """A loopback HTTP server; `mode` says how the next answers go:

    - "good": `[]`;
    - "flood", "alerts", "deep": `flat_objects`, `alerts_of_nothing`, `deep` of `size`;
    - "real": `real_groups(50, 400)` (20,000 alerts of another host, ~11 MiB);
    - "drip": a 200 and then `[` and a space every `drip_every` seconds, until the client
      goes or `release` is set (then the answer ends, cut short);
    - "drip_headers": the status line, then a header byte every `drip_every` seconds.
    """

    def __init__(self, mode: str = "good", size: int = 60 * MB) -> None:
        self.mode = mode
        self.size = size
        self.drip_every = 0.05
        self.release = threading.Event()
        self.dripping = threading.Event()  # a drip is in progress right now
        self.answers = 0
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                peer.answers += 1
                with contextlib.suppress(OSError):
                    peer.answer(self)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def name(self) -> str:
        return self.url.removeprefix("http://")

    def __enter__(self) -> HostilePeer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        mode = self.mode
        if mode == "drip_headers":
            self._drip(handler, b"HTTP/1.1 200 OK\r\n" + b"X-Drip: 1\r\n" * 10_000)
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        if mode == "drip":
            handler.send_header("Content-Length", str(self.size))
            handler.end_headers()
            self._drip(handler, b"[" + b" " * self.size)
            return
        chunks = {"flood": flat_objects, "alerts": alerts_of_nothing, "deep": deep,
                  "real": lambda _size: real_groups(50, 400)}  # fmt: skip
        body: Iterator[bytes] = iter([b"[]"]) if mode == "good" else chunks[mode](self.size)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for chunk in body:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        handler.wfile.write(b"0\r\n\r\n")

    def _drip(self, handler: BaseHTTPRequestHandler, data: bytes) -> None:
        self.dripping.set()
        try:
            for i in range(len(data)):
                handler.wfile.write(data[i : i + 1])
                handler.wfile.flush()
                if self.release.wait(self.drip_every):
                    return
        finally:
            self.dripping.clear()
