"""Connection churn (issue 20: 16 KeyErrors in the listener under 15,000 churns): clients
that connect and vanish, reset, half-close or stop mid-request, faster than the listener
can settle them, with room for only a few connections so evictions and lingering sockets
meet stale readiness events in the same select batch. Nothing may be logged as an error,
every connection's end is counted, and /healthz answers throughout.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
from pathlib import Path

import pytest

from macha_obs.server import Limits
from tests.harness.labsd import wait_until
from tests.test_listener_limits import healthz, request_bytes, serve

CHURNS = 3000  # per kind, spread over the threads below
THREADS = 6


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def churn(port: int, kind: int) -> None:
    partial = request_bytes("POST", "/alerts", b"{}")[:25]
    whole = request_bytes("GET", "/healthz")
    with contextlib.suppress(OSError), _connect(port) as sock:
        if kind == 0:  # connect and go
            sock.close()
        elif kind == 1:  # connect and reset
            _reset(sock)
        elif kind == 2:  # half a request, then reset
            sock.sendall(partial)
            _reset(sock)
        elif kind == 3:  # half a request, half-close (the server answers 400), go
            sock.sendall(partial)
            sock.shutdown(socket.SHUT_WR)
            sock.close()
        elif kind == 4:  # a whole request, reset before the answer is read
            sock.sendall(whole)
            _reset(sock)
        else:  # a whole request, then a close with the answer unread
            sock.sendall(whole)
            sock.close()


@pytest.mark.parametrize("connections", [2, 16])
def test_connection_churn_logs_no_error_and_healthz_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, connections: int
) -> None:
    caplog.set_level(logging.WARNING, logger="macha_obs.server")
    limits = Limits(connections=connections, workers=2, linger=0.5, request_timeout=2)
    with serve(tmp_path / "state", limits) as (server, port):

        def worker(offset: int) -> None:
            for i in range(offset, CHURNS, THREADS):
                churn(port, i % 6)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert wait_until(lambda: healthz(port) == 200)
        assert sum(server.stats.snapshot().values()) >= CHURNS // 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, "\n".join(f"{r.getMessage()}\n{r.exc_text or ''}" for r in errors[:3])
