"""Incident storm: the state directory stays bounded (issue 11).

    python bench/storm.py [--incidents 5000] [--threads 8]

Alertmanager delivers `--incidents` alert groups, each one firing alert (a new incident)
and then its resolve (the incident closes), through the intake the webhook uses
(`IncidentStore.ingest`: inbox, dedupe keys, incidents, committed with synchronous=FULL,
concurrent deliveries sharing a commit). Then the retention pass the daemon's timer
cycle runs (`Store.retain(config)`, default settings) at three times: right after the
storm, eight days later (past `inbox_retention`), and 31 days later (past
`incident_retention`). Printed: the state directory's size (every file) and the rows
kept, at each step.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from macha_obs.config import Config
from macha_obs.intake.incidents import IncidentStore
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--incidents", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="macha-storm-") as tmp:
        state = Path(tmp) / "state"
        clock = Clock()
        config = Config(state_dir=state, hostname="bench")
        with Store(state, clock=clock) as store:
            incidents = IncidentStore(store)

            def deliver(n: int) -> None:
                for status in ("firing", "resolved"):
                    group, alert, body = delivery(n, status)
                    incidents.ingest(group, body, [alert])

            began = time.monotonic()
            with ThreadPoolExecutor(args.threads) as pool:
                list(pool.map(deliver, range(args.incidents)))
            took = time.monotonic() - began
            print(
                f"storm: {args.incidents} incidents, {2 * args.incidents} deliveries in {took:.1f}s"
            )
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


if __name__ == "__main__":
    main()
