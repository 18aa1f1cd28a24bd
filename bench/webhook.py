"""Webhook ingest benchmark: durable alerts/s and latency at 1 and 100 alerts a notification.

    python bench/webhook.py [--seconds 5] [--clients 8]

Every notification carries new alerts, so each one is a committed SQLite transaction
(WAL, synchronous=FULL) before its 200. Two paths are measured: over HTTP through the
real listener (macha_obs.server, a thread per request; the load generator shares the
same cores), and the WSGI app called in-process (the receiver and store alone). Then a
storm of 100 alerts in 5 groups, delivered the way Alertmanager does (the group resent
with each new alert), is analysed and the LLM calls are counted.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import secrets
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from prometheus_client import CollectorRegistry

from macha_obs.agent.analyze import Analyzer
from macha_obs.agent.llm import ChatReply
from macha_obs.config import AnalysisMode
from macha_obs.incidents import IncidentStore, analyze_pending
from macha_obs.receiver import ReceiverApp
from macha_obs.server import make_app, shutdown, start_server
from macha_obs.store import Store

# The webhook is authenticated by default (DESIGN.md invariant 13): every path sends it.
TOKEN = secrets.token_urlsafe(32)
AUTH = f"Bearer {TOKEN}"

_seq = itertools.count()
_seq_lock = threading.Lock()


def notification(n_alerts: int, group: str = "") -> bytes:
    with _seq_lock:
        base = next(_seq) * 1000
    alerts = [
        {
            "status": "firing",
            "labels": {"alertname": "BenchFailed", "unit": f"u{base + i}.service"},
            "annotations": {"summary": "bench"},
            "startsAt": "2026-11-25T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": f"{base + i:016x}",
        }
        for i in range(n_alerts)
    ]
    body = {"version": "4", "groupKey": group or f"g{base}", "status": "firing",
            "receiver": "macha", "alerts": alerts}  # fmt: skip
    return json.dumps(body).encode()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(path: str, n_alerts: int, latencies: list[float], wall: float) -> dict[str, Any]:
    return {
        "path": path,
        "alerts_per_notification": n_alerts,
        "notifications": len(latencies),
        "alerts_per_second": round(len(latencies) * n_alerts / wall),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
    }


def drive(
    make_sender: Callable[[], Callable[[bytes], None]], n_alerts: int, seconds: float, clients: int
) -> tuple[list[float], float]:
    """`clients` threads each send new notifications for `seconds`; (latencies, wall time)."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        send = make_sender()
        mine = []
        while time.monotonic() < stop:
            body = notification(n_alerts)
            t0 = time.perf_counter()
            send(body)
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - t0


def call(app: ReceiverApp, body: bytes) -> None:
    environ = {"REQUEST_METHOD": "POST", "CONTENT_LENGTH": str(len(body)),
               "HTTP_AUTHORIZATION": AUTH, "wsgi.input": io.BytesIO(body)}  # fmt: skip
    app(environ, lambda status, headers: None)


def run_http(url: str, n_alerts: int, seconds: float, clients: int) -> dict[str, Any]:
    def make_sender() -> Callable[[bytes], None]:
        session = requests.Session()
        session.headers["Authorization"] = AUTH

        def send(body: bytes) -> None:
            resp = session.post(url, data=body, timeout=30)
            assert resp.status_code == 200, resp.text

        return send

    latencies, wall = drive(make_sender, n_alerts, seconds, clients)
    return summarize(f"http x{clients}", n_alerts, latencies, wall)


def run_wsgi(app: ReceiverApp, n_alerts: int, seconds: float, clients: int) -> dict[str, Any]:
    """The app called in-process from `clients` threads: receiver + store, no HTTP."""
    latencies, wall = drive(lambda: lambda body: call(app, body), n_alerts, seconds, clients)
    out = summarize(f"wsgi x{clients}", n_alerts, latencies, wall)
    out["commits"] = app.incidents.store.shared_commits
    return out


class CountingChat:
    backend = "counting"
    model = "none"

    def __init__(self) -> None:
        self.calls = 0

    def chat(self, messages: Any, schema: Any) -> ChatReply:
        self.calls += 1
        text = json.dumps({"assessment": "failing", "severity": "warning", "summary": "s",
                           "root_cause": "r", "confidence": 0.5, "proposals": []})  # fmt: skip
        return ChatReply(text, 0, 0, 0.0)

    def check(self) -> None:
        pass


def storm(app: ReceiverApp, incidents: IncidentStore) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = {f"storm{g}": [] for g in range(5)}
    for i in range(100):
        key = f"storm{i % 5}"
        groups[key].append({"status": "firing", "labels": {"alertname": key, "n": str(i)},
                            "startsAt": "2026-11-25T10:00:00Z"})  # fmt: skip
        body = json.dumps({"version": "4", "groupKey": key, "status": "firing",
                           "alerts": groups[key]}).encode()  # fmt: skip
        call(app, body)
    chat = CountingChat()
    analyzer = Analyzer(mode=AnalysisMode.LLM_FIRST, client=chat, hostname="bench")
    analyzed = analyze_pending(incidents, analyzer.analyze)
    return {"storm_alerts": 100, "groups": 5, "notifications": 100, "analyses": analyzed,
            "llm_calls": chat.calls}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()
    for clients in sorted({1, args.clients}):
        for n in (1, 100):
            with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "state") as store:
                app = ReceiverApp(IncidentStore(store), token=TOKEN, max_body_bytes=8 * 1_048_576)
                registry = CollectorRegistry()
                server, thread = start_server("127.0.0.1", 0, make_app(registry, alerts_app=app))
                try:
                    url = f"http://127.0.0.1:{server.server_port}/alerts"
                    result = run_http(url, n, args.seconds, clients)
                finally:
                    shutdown(server, thread)
                print(json.dumps(result), flush=True)
            with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "state") as store:
                app = ReceiverApp(IncidentStore(store), token=TOKEN, max_body_bytes=8 * 1_048_576)
                print(json.dumps(run_wsgi(app, n, args.seconds, clients)), flush=True)
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "state") as store:
        incidents = IncidentStore(store)
        print(json.dumps(storm(ReceiverApp(incidents, token=TOKEN), incidents)), flush=True)


if __name__ == "__main__":
    main()
