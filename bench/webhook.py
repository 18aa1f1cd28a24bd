"""Alert storm through a real Alertmanager into `macha-obs serve`, by push and by pull.

    python bench/webhook.py [--alerts 10000] [--groups 50] [--pull-interval 1]

One invocation, one machine, one lab systemd (tests/harness/labsd.py) for the daemons:

- reference: Alertmanager (Debian's) → a bare webhook sink in this process that parses
  each notification and counts its alerts, storing nothing. Alertmanager's own pace.
- push: Alertmanager → the daemon's POST /alerts (bearer token, max_alerts unlimited).
- pull: Alertmanager with no receiver for the host (a null receiver) ← the daemon
  polling its API v2 every `--pull-interval` seconds (alertmanager_urls).

In each, `--alerts` alerts in `--groups` groups (group_by alertname, instance = the
daemon's host) are posted to Alertmanager in one `POST /api/v2/alerts`, as a Prometheus
evaluation would send them (group_wait 2s, group_interval 5s). Reported:

- post → last stored: from the POST to the last alert committed in the daemon's state
  database (its inbox `received_at`, taken in the committing transaction);
- first → last stored: from the first notification (push) or poll (pull) that stored
  anything to the last: the sidecar's own share;
- analyses: the daemon's decisions about the storm's incidents once it has analysed
  every revision. Must equal the group count (asserted): one analysis per group;
- peak RSS of the daemon (VmHWM, its D-Bus child not included), beside its RSS before
  the storm.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/webhook.py` from anywhere: tests.* is ours
    sys.path.insert(0, str(ROOT))

from tests.harness.daemon_support import HOST, Daemon  # noqa: E402
from tests.harness.labsd import LabSystemd  # noqa: E402
from tests.harness.llm_fixtures import loopback_server  # noqa: E402
from tests.harness.stack import Alertmanager, poll  # noqa: E402

GROUPING = (
    "  group_by: [alertname]\n  group_wait: 2s\n  group_interval: 5s\n  repeat_interval: 1h\n"
)
SETTLE_TIMEOUT = 300.0


class BenchError(RuntimeError):
    pass


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Storm:
    alerts: int
    groups: int
    pull_interval: float

    def make(self) -> list[dict[str, Any]]:
        return storm_alerts(self.alerts, self.groups)


def storm_alerts(n_alerts: int, n_groups: int) -> list[dict[str, Any]]:
    """`n_alerts` alerts about this host in `n_groups` alertnames, as a Prometheus
    evaluation sends a storm that starts now (startsAt now: Alertmanager waits group_wait;
    an older startsAt would flush each group at its first alert)."""
    starts = datetime.now(UTC)
    return [
        {
            "labels": {
                "alertname": f"Storm{i % n_groups:02d}",
                "instance": HOST,
                "severity": "warning",
                "n": str(i),
            },
            "annotations": {"summary": f"storm alert {i}", "description": "x" * 120},
            "startsAt": starts.isoformat(),
            "endsAt": (starts + timedelta(hours=1)).isoformat(),
            "generatorURL": "http://prometheus.example.org/graph?g0.expr=up",
        }
        for i in range(n_alerts)
    ]


def post_storm(am: Alertmanager, alerts: list[dict[str, Any]]) -> float:
    """POST the storm to Alertmanager; the time it was sent (epoch s)."""
    sent = time.time()
    reply = requests.post(f"{am.url}/api/v2/alerts", json=alerts, timeout=120)
    if reply.status_code != 200:
        raise BenchError(f"Alertmanager refused the storm: {reply.status_code} {reply.text}")
    return sent


@dataclass
class Result:
    mode: str
    alerts: int
    groups: int
    post_to_last: float
    first_to_last: float
    notifications: int
    analyses: int | None = None
    rss_before_mib: float | None = None
    rss_peak_mib: float | None = None

    def row(self) -> str:
        def fmt(v: float | None, spec: str) -> str:
            return "-" if v is None else format(v, spec)

        return (
            f"| {self.mode} | {self.alerts:,} | {self.groups} | {self.post_to_last:.2f} s"
            f" | {self.first_to_last:.2f} s | {self.notifications} | {fmt(self.analyses, 'd')}"
            f" | {fmt(self.rss_before_mib, '.1f')} | {fmt(self.rss_peak_mib, '.1f')} |"
        )


# ---------------------------------------------------------------- reference: a bare sink


class Sink:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.alerts = 0
        self.arrivals: list[float] = []

    def handler(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                n = len(json.loads(body)["alerts"])
                with sink.lock:
                    sink.alerts += n
                    sink.arrivals.append(time.time())
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def reference(work: Path, storm: Storm) -> Result:
    alerts, groups = storm.make(), storm.groups
    sink = Sink()
    with loopback_server(sink.handler()) as url:
        config = (
            f"route:\n  receiver: sink\n{GROUPING}receivers:\n  - name: sink\n"
            f"    webhook_configs:\n      - url: {url}/alerts\n        max_alerts: 0\n"
        )
        with Alertmanager(work / "am-reference", config) as am:
            sent = post_storm(am, alerts)
            if not poll(lambda: sink.alerts >= len(alerts), SETTLE_TIMEOUT, 0.02):
                raise BenchError(f"the sink got {sink.alerts} of {len(alerts)} alerts")
    with sink.lock:
        first, last = min(sink.arrivals), max(sink.arrivals)
        return Result("reference (bare sink)", len(alerts), groups, last - sent, last - first,
                      len(sink.arrivals))  # fmt: skip


# ---------------------------------------------------------------- the daemon


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {field} for pid {pid}")


def stored(state: Path, storm: str = "Storm") -> tuple[int, float, float, int]:
    """(storm alerts stored, first and last inbox received_at, inbox rows) of the storm."""
    with sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True, timeout=5) as db:
        n = db.execute(
            "SELECT COUNT(*) FROM incident_alerts WHERE json_extract(alert, '$.labels.alertname')"
            " LIKE ?",
            (storm + "%",),
        ).fetchone()[0]
        first, last, rows = db.execute(
            "SELECT MIN(received_at), MAX(received_at), COUNT(*) FROM inbox WHERE new_alerts > 0"
        ).fetchone()
    return int(n), float(first or 0), float(last or 0), int(rows)


def analysed(state: Path) -> bool:
    """Every open incident's latest revision analysed."""
    with sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True, timeout=5) as db:
        pending = db.execute(
            "SELECT COUNT(*) FROM incidents WHERE status = 'open' AND revision > analyzed_revision"
        ).fetchone()[0]
    return int(pending) == 0


def storm_incidents(state: Path) -> set[str]:
    with sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True, timeout=5) as db:
        rows = db.execute(
            "SELECT DISTINCT incident_id FROM incident_alerts"
            " WHERE json_extract(alert, '$.labels.alertname') LIKE 'Storm%'"
        ).fetchall()
    return {r[0] for r in rows}


def count_analyses(state: Path, incidents: set[str]) -> int:
    """Decisions the daemon recorded about the storm's incidents (decisions.jsonl)."""
    n = 0
    path = state / "decisions.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        record = json.loads(line)
        if record.get("event") == "decision" and record.get("incident_id") in incidents:
            n += 1
    return n


@contextmanager
def sampled_peak(pid: int) -> Iterator[list[int]]:
    """VmHWM is the process's peak RSS since start: read at the end, kept in a list."""
    peak: list[int] = []
    try:
        yield peak
    finally:
        peak.append(vm_kib(pid, "VmHWM"))


def daemon_run(mode: str, lab: LabSystemd, work: Path, storm: Storm) -> Result:
    state = work / f"state-{mode}"
    groups, pull_interval = storm.groups, storm.pull_interval
    settings: dict[str, object] = {"webhook_max_body_bytes": 16 * 1_048_576,
                                   "collect_interval": 15, "check_interval": 300}  # fmt: skip
    am: Alertmanager | None = None
    if mode == "pull":
        am = Alertmanager(work / "am-pull", f"route:\n  receiver: nobody\n{GROUPING}"
                                            "receivers:\n  - name: nobody\n")  # fmt: skip
        am.start()
        settings |= {"alertmanager_urls": am.url, "alertmanager_pull_interval": pull_interval}
    daemon = Daemon(lab, state, **settings).start()
    try:
        if am is None:
            config = (
                f"route:\n  receiver: macha\n{GROUPING}receivers:\n  - name: macha\n"
                f"    webhook_configs:\n      - url: {daemon.url}/alerts\n"
                "        send_resolved: true\n        max_alerts: 0\n"
                "        http_config:\n          authorization:\n            type: Bearer\n"
                f"            credentials_file: {daemon.token_file}\n"
            )
            am = Alertmanager(work / "am-push", config)
            am.start()
        assert daemon.proc is not None
        pid = daemon.proc.pid
        # settled: the daemon's own first cycles (the lab's findings) analysed
        poll(lambda: analysed(state), 60, 0.2)
        rss_before = vm_kib(pid, "VmRSS")
        alerts = storm.make()
        with sampled_peak(pid) as peak:
            sent = post_storm(am, alerts)
            if not poll(lambda: stored(state)[0] >= len(alerts), SETTLE_TIMEOUT, 0.05):
                raise BenchError(f"{mode}: stored {stored(state)[0]} of {len(alerts)}")
            _, first, last, rows = stored(state)
            if not poll(lambda: analysed(state), SETTLE_TIMEOUT, 0.2):
                raise BenchError(f"{mode}: analyses did not settle\n{daemon.log_tail()}")
            incidents = storm_incidents(state)
            analyses = count_analyses(state, incidents)
        return Result(mode, len(alerts), groups, last - sent, last - first, rows, analyses,
                      rss_before / 1024, peak[0] / 1024)  # fmt: skip
    finally:
        daemon.stop()
        if am is not None:
            am.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--alerts", type=int, default=10_000)
    ap.add_argument("--groups", type=int, default=50)
    ap.add_argument("--pull-interval", type=float, default=1.0)
    args = ap.parse_args()
    storm = Storm(args.alerts, args.groups, args.pull_interval)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="storm-") as tmp, LabSystemd() as lab:
        work = Path(tmp)
        say(f"lab systemd up in {lab.boot_seconds:.2f} s")
        results.append(reference(work, storm))
        say(results[-1].row())
        for mode in ("push", "pull"):
            results.append(daemon_run(mode, lab, work, storm))
            say(results[-1].row())
    print(
        f"storm: {args.alerts:,} alerts in {args.groups} groups, one POST to Alertmanager"
        f" 0.25 (group_wait 2s, group_interval 5s); pull every {args.pull_interval:g} s\n"
    )
    print(
        "| path | alerts | groups | post → last stored | first → last stored |"
        " notifications storing | analyses | RSS before, MiB | peak RSS, MiB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for result in results:
        print(result.row())
    wrong = [r for r in results if r.analyses is not None and r.analyses != r.groups]
    if wrong:
        raise SystemExit(
            "analyses must equal the group count: "
            + ", ".join(f"{r.mode} {r.analyses} for {r.groups}" for r in wrong)
        )


if __name__ == "__main__":
    main()
