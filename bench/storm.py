"""Incident storms: the state directory stays bounded (issues 11 and 20).

    python bench/storm.py [--incidents 5000] [--threads 8] [--distinct 401]

Part 1 (`--incidents`, 0 skips it):
Alertmanager delivers `--incidents` alert groups, each one firing alert (a new incident)
and then its resolve (the incident closes), through the intake the webhook uses
(`IncidentStore.ingest`: inbox, dedupe keys, incidents, committed with synchronous=FULL,
concurrent deliveries sharing a commit). Then the retention pass the daemon's timer
cycle runs (`Store.retain(config)`, default settings) at three times: right after the
storm, eight days later (past `inbox_retention`), and 31 days later (past
`incident_retention`). Printed: the state directory's size (every file) and the rows
kept, at each step.

Part 2 (`--distinct`, 0 skips it): a storm of distinct alerts, as issue 20 sent it:
`--distinct` webhook deliveries of ~1 MiB, each its own group of 1,000 alerts never seen
before, through the real webhook (`ReceiverApp`, authenticated, on a Store), then what
the orchestrator reads every cycle (`IncidentStore.open_incidents()`). Run twice, each in
a child process: with the default caps (config.py: `inbox_max_bytes`,
`incident_max_open`, `incident_max_alerts`, `incident_alerts_max_bytes`) and, for
reference, with every cap at its largest allowed value (the unbounded storm of issue 20).
Printed side by side: the state dir's size, the rows kept, the child's peak RSS, and the
drops counted (macha_intake_dropped_total).
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from macha_obs.config import Config
from macha_obs.intake.incidents import IncidentStore
from macha_obs.intake.webhook import HostMatcher, ReceiverApp
from macha_obs.models import Alert, AlertGroup
from macha_obs.store import Store

T0 = 1_700_000_000.0
DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def delivery(n: int, status: str) -> tuple[AlertGroup, Alert, str]:
    start = datetime.fromtimestamp(T0, UTC)
    labels = {"alertname": "DiskFull", "instance": f"host{n}", "mountpoint": "/srv"}
    alert = Alert.model_validate(
        {
            "status": status,
            "labels": labels,
            "annotations": {"summary": f"/srv on host{n} is 97% full", "description": "x" * 200},
            "startsAt": start.isoformat(),
            "endsAt": (start + timedelta(hours=1)).isoformat(),
            "fingerprint": f"{n:016x}",
        }
    )
    group = AlertGroup.model_validate(
        {
            "version": "4",
            "groupKey": f'{{}}/{{}}:{{instance="host{n}"}}',
            "status": status,
            "receiver": "macha",
            "groupLabels": {"instance": f"host{n}"},
            "commonLabels": labels,
            "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "alerts": [alert.model_dump(mode="json", by_alias=True)],
        }
    )
    return group, alert, group.model_dump_json(by_alias=True)


def size(state: Path) -> int:
    return sum(p.stat().st_size for p in state.iterdir() if p.is_file())


def counts(store: Store) -> str:
    tables = ("inbox", "alerts_seen", "incidents", "incident_alerts")
    found = {t: store.query(f"SELECT COUNT(*) AS n FROM {t}")[0]["n"] for t in tables}  # noqa: S608
    return " ".join(f"{t}={n}" for t, n in found.items())


def resolve_storm(n: int, threads: int) -> None:
    """Part 1: `n` incidents fire and resolve; retention at three times."""
    with tempfile.TemporaryDirectory(prefix="macha-storm-") as tmp:
        state = Path(tmp) / "state"
        clock = Clock()
        config = Config(state_dir=state, hostname="bench")
        with Store(state, clock=clock) as store:
            incidents = IncidentStore(store)

            def deliver(i: int) -> None:
                for status in ("firing", "resolved"):
                    group, alert, body = delivery(i, status)
                    incidents.ingest(group, body, [alert])

            began = time.monotonic()
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(deliver, range(n)))
            took = time.monotonic() - began
            print(f"storm: {n} incidents, {2 * n} deliveries in {took:.1f}s")
            print(f"{'step':<34} {'state dir':>12}  rows")
            print(f"{'after the storm':<34} {size(state):>12,}  {counts(store)}")
            for label, later in (
                ("retain() at once", 0.0),
                ("retain() 8 days later", 8 * DAY),
                ("retain() 31 days later", 31 * DAY),
            ):
                clock.now = T0 + later
                store.retain(config)
                print(f"{label:<34} {size(state):>12,}  {counts(store)}")


# ---------------------------------------------------------------- part 2: distinct alerts

TOKEN = "storm-token"  # noqa: S105  # the bench's own receiver
PER_DELIVERY = 1000  # the webhook's MAX_ALERTS
CAPS = ("inbox_max_bytes", "incident_max_open", "incident_max_alerts", "incident_alerts_max_bytes")


def distinct_body(d: int) -> bytes:
    """One ~1 MiB notification: its own group, 1,000 alerts never seen before."""
    start = datetime.fromtimestamp(T0, UTC).isoformat()
    alerts = [
        {
            "status": "firing",
            "labels": {"alertname": f"Storm{d}", "instance": "bench:9100", "n": str(n)},
            "annotations": {"description": f"delivery {d} alert {n} " + "x" * 760},
            "startsAt": start,
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": f"{d:08x}{n:08x}",
        }
        for n in range(PER_DELIVERY)
    ]
    body = {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="Storm{d}"}}',
        "status": "firing",
        "receiver": "macha",
        "groupLabels": {"alertname": f"Storm{d}"},
        "commonLabels": {"instance": "bench:9100"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts,
    }
    return json.dumps(body).encode()


def _start_response(status: str, headers: list[tuple[str, str]]) -> None:
    if not status.startswith("200"):
        raise SystemExit(f"the webhook answered {status}")


def distinct_child(kind: str, deliveries: int) -> None:
    """One run of part 2, in its own process (its peak RSS is its own); prints JSON."""
    defaults = Config(hostname="bench")
    caps = {name: getattr(defaults, name) for name in CAPS}
    if kind == "reference":  # every cap at the largest value config.py allows
        caps = {name: Config.model_fields[name].metadata[-1].le for name in CAPS}
    with tempfile.TemporaryDirectory(prefix="macha-storm-") as tmp:
        state = Path(tmp) / "state"
        config = Config(state_dir=state, hostname="bench", **caps)
        with Store(state, retention=config) as store:
            receiver = ReceiverApp(
                IncidentStore(store), token=TOKEN, max_body_bytes=2 * 1024 * 1024,
                hosts=HostMatcher("bench"),
            )  # fmt: skip
            biggest, sizes = 0, 0
            began = time.monotonic()
            for d in range(deliveries):
                body = distinct_body(d)
                sizes += len(body)
                environ = {
                    "REQUEST_METHOD": "POST",
                    "HTTP_AUTHORIZATION": f"Bearer {TOKEN}",
                    "CONTENT_LENGTH": str(len(body)),
                    "wsgi.input": io.BytesIO(body),
                }
                answer = b"".join(receiver(environ, _start_response))
                if b'"accepted"' not in answer:
                    raise SystemExit(f"delivery {d}: {answer[:200]!r}")
                biggest = max(biggest, size(state))
            took = time.monotonic() - began
            open_now = IncidentStore(store).open_incidents()  # what every cycle reads
            print(
                json.dumps(
                    {
                        "kind": kind,
                        "seconds": took,
                        "mean_body": sizes // max(deliveries, 1),
                        "peak_dir": biggest,
                        "dir": size(state),
                        "rows": counts(store),
                        "open": len(open_now),
                        "alerts_open": sum(len(s.incident.alerts) for s in open_now),
                        "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                        "dropped": store.intake_drops.snapshot(),
                        "caps": caps,
                    }
                )
            )


def distinct_storm(deliveries: int) -> None:
    """Part 2: the capped run beside the reference run, each in a child process."""
    runs = []
    for kind in ("capped", "reference"):
        argv = [sys.executable, __file__, "--child", kind, "--distinct", str(deliveries)]
        done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=3600)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    mib = 1024 * 1024
    print(
        f"\nstorm of distinct alerts: {deliveries} deliveries of {runs[0]['mean_body']:,} bytes,"
        f" {PER_DELIVERY} new alerts each, through the webhook"
    )
    rows: list[tuple[str, ...]] = [
        ("caps", "config defaults", "largest allowed (reference)"),
        ("time", *(f"{r['seconds']:.1f}s" for r in runs)),
        ("state dir, peak during the storm", *(f"{r['peak_dir'] / mib:,.1f} MiB" for r in runs)),
        ("state dir, after", *(f"{r['dir'] / mib:,.1f} MiB" for r in runs)),
        ("peak RSS (storm + open_incidents())", *(f"{r['rss'] / mib:,.0f} MiB" for r in runs)),
        ("open incidents / their alerts", *(f"{r['open']} / {r['alerts_open']}" for r in runs)),
        ("rows", *(r["rows"] for r in runs)),
        ("dropped", *(" ".join(f"{k}={v}" for k, v in r["dropped"].items()) for r in runs)),
    ]
    for label, capped, reference in rows:
        print(f"{label:<38} {capped:<48} {reference}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--incidents", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--distinct", type=int, default=401)
    parser.add_argument("--child", choices=("capped", "reference"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        distinct_child(args.child, args.distinct)
        return
    if args.incidents:
        resolve_storm(args.incidents, args.threads)
    if args.distinct:
        distinct_storm(args.distinct)


if __name__ == "__main__":
    main()
