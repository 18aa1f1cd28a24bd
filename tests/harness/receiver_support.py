"""Alertmanager v4 webhook bodies for tests, shaped like the real ones (see REAL_STACK.md)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

ZERO = "0001-01-01T00:00:00Z"


def alert(
    name: str = "UnitFailed",
    *,
    status: str = "firing",
    starts: str = "2026-11-25T10:00:00Z",
    ends: str = ZERO,
    **labels: str,
) -> dict[str, Any]:
    all_labels = {"alertname": name, "severity": "warning", **labels}
    fp = hashlib.sha256(json.dumps(sorted(all_labels.items())).encode()).hexdigest()[:16]
    return {
        "status": status,
        "labels": all_labels,
        "annotations": {"summary": f"{name} on {labels.get('unit', 'the host')}"},
        "startsAt": starts,
        "endsAt": ends,
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
        "fingerprint": fp,
    }


def payload(*alerts: dict[str, Any], group_key: str = '{}:{alertname="UnitFailed"}',
            truncated: int = 0) -> dict[str, Any]:  # fmt: skip
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    common = dict(alerts[0]["labels"]) if alerts else {}
    return {
        "receiver": "macha",
        "status": status,
        "alerts": list(alerts),
        "groupLabels": {"alertname": common.get("alertname", "")},
        "commonLabels": common,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": truncated,
    }


def resolved(a: dict[str, Any], ends: str = "2026-11-25T10:05:00Z") -> dict[str, Any]:
    return {**a, "status": "resolved", "endsAt": ends}


# ---------------------------------------------------------------- a real HTTP server


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


@contextlib.contextmanager
def serve_wsgi(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `app` on a free loopback port (wsgiref, one thread per request); yield its URL."""
    server = make_server(
        host, 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
