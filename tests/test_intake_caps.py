"""The intake's caps (issue 20): a storm of distinct alerts keeps every table under its cap,
the oldest evidence goes first, and every drop is counted in macha_intake_dropped_total.

The storm goes through the real listener and webhook on a real Store, and through a real
Alertmanager; the order of the drops is checked on the store itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client import CollectorRegistry

from macha_obs.intake.incidents import IncidentStore
from macha_obs.intake.webhook import HostMatcher, ReceiverApp
from macha_obs.metrics import IntakeDropCollector
from macha_obs.models import AlertGroup, JournalVacuum, Risk
from macha_obs.server import make_app, shutdown, start_server
from macha_obs.store import Retention, Store
from tests.harness.receiver_support import alert, payload, resolved
from tests.harness.stack import Alertmanager, poll
from tests.test_receiver_stack import am_config

TOKEN = "caps-token"
MiB = 1024 * 1024
CAPS = Retention(
    inbox_max_rows=100,
    inbox_max_bytes=MiB,
    incident_max_open=10,
    incident_max_alerts=20,
    incident_alerts_max_bytes=MiB,
)


@dataclass
class Served:
    url: str
    store: Store
    incidents: IncidentStore
    registry: CollectorRegistry
    receiver: ReceiverApp

    def post(self, body: dict[str, Any]) -> int:
        data = json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        return requests.post(
            f"{self.url}/alerts", data=data, headers=headers, timeout=30
        ).status_code

    def dropped(self, what: str) -> float:
        return self.registry.get_sample_value("macha_intake_dropped_total", {"what": what}) or 0.0


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with Store(tmp_path / "state", retention=CAPS) as store:
        incidents = IncidentStore(store)
        receiver = ReceiverApp(
            incidents, token=TOKEN, max_body_bytes=4 * MiB, hosts=HostMatcher("testhost")
        )
        registry = CollectorRegistry()
        registry.register(IntakeDropCollector(store.intake_drops))
        server, thread = start_server("127.0.0.1", 0, make_app(registry, alerts_app=receiver))
        try:
            url = f"http://127.0.0.1:{server.server_port}"
            yield Served(url, store, incidents, registry, receiver)
        finally:
            shutdown(server, thread)


def big_alert(group: int, n: int, **extra: str) -> dict[str, Any]:
    a = alert(f"Storm{group}", instance="testhost:9100", n=str(n), **extra)
    a["annotations"]["description"] = f"{group}/{n} " + "x" * 1500
    return a


def measured(store: Store) -> dict[str, int]:
    """What the tables hold, counted the slow way (not from the triggers' totals)."""
    q = store.query
    return {
        "open": q("SELECT COUNT(*) AS n FROM incidents WHERE status = 'open'")[0]["n"],
        "most_alerts": q(
            "SELECT COALESCE(MAX(n), 0) AS n FROM (SELECT COUNT(*) AS n FROM incident_alerts"
            " GROUP BY incident_id)"
        )[0]["n"],
        "alert_bytes": q(
            "SELECT COALESCE(SUM(length(CAST(alert AS BLOB))), 0) AS n FROM incident_alerts"
        )[0]["n"],
        "alert_rows": q("SELECT COUNT(*) AS n FROM incident_alerts")[0]["n"],
        "inbox_bytes": q("SELECT COALESCE(SUM(length(CAST(body AS BLOB))), 0) AS n FROM inbox")[0][
            "n"
        ],
        "inbox_rows": q("SELECT COUNT(*) AS n FROM inbox")[0]["n"],
    }


def assert_within_caps(store: Store) -> dict[str, int]:
    have = measured(store)
    assert have["open"] <= CAPS.incident_max_open
    assert have["most_alerts"] <= CAPS.incident_max_alerts
    assert have["alert_bytes"] <= CAPS.incident_alerts_max_bytes
    assert have["inbox_bytes"] <= CAPS.inbox_max_bytes
    assert have["inbox_rows"] <= CAPS.inbox_max_rows
    # the triggers' running totals say what the tables hold
    totals = {
        r["what"]: (r["rows"], r["bytes"]) for r in store.query("SELECT * FROM intake_totals")
    }
    assert totals["alerts"] == (have["alert_rows"], have["alert_bytes"])
    assert totals["inbox"] == (have["inbox_rows"], have["inbox_bytes"])
    return have


def test_a_storm_of_distinct_alerts_stays_under_the_caps_and_the_drops_are_counted(
    served: Served,
) -> None:
    groups, per_group = 40, 50  # 2,000 distinct alerts of ~1.7 KB in 40 ~85 KB deliveries
    for g in range(40):
        alerts = [big_alert(g, n) for n in range(per_group)]
        body = payload(*alerts, group_key=f'{{}}:{{alertname="Storm{g}"}}')
        assert served.post(body) == 200
        assert_within_caps(served.store)  # after every delivery, not only at the end
    have = assert_within_caps(served.store)
    assert have["open"] == CAPS.incident_max_open
    # every drop counted: 30 incidents closed, 30 alerts cut off each delivery, the rest
    # for the byte caps
    assert served.dropped("incident") == groups - CAPS.incident_max_open
    total = groups * per_group
    assert served.dropped("alert") == total - have["alert_rows"] - 20 * 30
    assert served.dropped("body") == groups - have["inbox_rows"]
    assert served.dropped("body") > 0
    # the newest incidents are the ones kept open
    kept = {s.incident.group_key for s in served.incidents.open_incidents()}
    assert kept == {f'{{}}:{{alertname="Storm{g}"}}' for g in range(30, 40)}
    assert (served.store.state_dir / "state.db").stat().st_size < 8 * MiB


def test_resolved_alerts_go_before_firing_ones(served: Served) -> None:
    firing = [big_alert(1, n) for n in range(20)]
    key = '{}:{alertname="Storm1"}'
    assert served.post(payload(*firing, group_key=key)) == 200
    assert served.post(payload(*[resolved(a) for a in firing[:5]], group_key=key)) == 200
    newer = [big_alert(1, n) for n in range(20, 25)]
    assert served.post(payload(*newer, group_key=key)) == 200
    [state] = served.incidents.open_incidents()
    assert len(state.incident.alerts) == CAPS.incident_max_alerts
    # the five resolved made room for the five new ones: every firing alert is kept
    assert all(a.firing for a in state.incident.alerts)
    assert served.dropped("alert") == 5
    assert_within_caps(served.store)  # the totals followed the updates (firing → resolved)


def test_an_incident_a_pending_item_names_is_not_the_one_dropped(served: Served) -> None:
    for g in range(CAPS.incident_max_open):
        body = payload(big_alert(g, 0), group_key=f'{{}}:{{alertname="Storm{g}"}}')
        assert served.post(body) == 200
    oldest = _id_of(served, '{}:{alertname="Storm0"}')
    served.store.approvals.enqueue(oldest, JournalVacuum(), risk=Risk.LOW, reason="x", ttl=600)
    body = payload(big_alert(99, 0), group_key='{}:{alertname="Storm99"}')
    assert served.post(body) == 200
    open_ids = {s.incident.id for s in served.incidents.open_incidents()}
    assert oldest in open_ids  # its evidence is the pending item's scope lock
    assert len(open_ids) == CAPS.incident_max_open
    assert served.dropped("incident") == 1
    # the next oldest went instead, and its alerts with it
    dropped = _id_of(served, '{}:{alertname="Storm1"}')
    assert not served.incidents.is_open(dropped)
    assert served.incidents.get(dropped).incident.alerts == []  # type: ignore[union-attr]


def _id_of(served: Served, group_key: str) -> str:
    rows = served.store.query("SELECT id FROM incidents WHERE group_key = ?", (group_key,))
    return str(rows[0]["id"])


def test_lowered_caps_hold_at_the_next_retention_pass(tmp_path: Path) -> None:
    with Store(tmp_path / "state") as store:  # the default caps
        incidents = IncidentStore(store)
        for g in range(30):
            body = payload(big_alert(g, 0), group_key=f"g{g}")
            group = AlertGroup.model_validate(body)
            incidents.ingest(group, json.dumps(body), group.alerts)
        assert len(incidents.open_incidents()) == 30
        store.retain(CAPS)
        assert len(incidents.open_incidents()) == CAPS.incident_max_open
        assert store.intake_drops.snapshot()["incident"] == 20


def test_a_database_from_before_the_caps_gets_its_totals(tmp_path: Path) -> None:
    with Store(tmp_path / "state") as store:
        incidents = IncidentStore(store)
        body = payload(big_alert(1, 0), big_alert(1, 1), group_key="g")
        group = AlertGroup.model_validate(body)
        incidents.ingest(group, json.dumps(body), group.alerts)
        before = measured(store)
        with store.transaction() as cur:  # as an older release left it
            cur.execute("DROP TABLE intake_totals")
            for name in ("inbox_total_in", "alerts_total_in", "seen_total_in"):
                cur.execute(f"DROP TRIGGER {name}")
    with Store(tmp_path / "state") as store:
        assert_within_caps(store)
        totals = {r["what"]: r["rows"] for r in store.query("SELECT * FROM intake_totals")}
        assert totals == {"inbox": 1, "alerts": 2, "seen": 2}
        assert measured(store) == before


@pytest.mark.stack
@pytest.mark.usefixtures("amtool")
def test_a_storm_through_a_real_alertmanager_stays_under_the_caps(
    served: Served, alertmanager_factory: Callable[[str], Alertmanager], tmp_path: Path
) -> None:
    token_file = tmp_path / "am.token"
    token_file.write_text(TOKEN + "\n")
    am = alertmanager_factory(am_config(served.url, token_file))
    start = datetime.now(UTC) - timedelta(seconds=5)
    groups, per_group = 25, 30
    posted = [
        {
            "labels": {"alertname": f"Storm{g}", "instance": "testhost:9100", "n": str(n)},
            "annotations": {"description": "x" * 1500},
            "startsAt": start.isoformat(),
        }
        for g in range(groups)
        for n in range(per_group)
    ]
    answer = requests.post(f"{am.url}/api/v2/alerts", json=posted, timeout=30)
    assert answer.status_code == 200, answer.text

    def every_alert_arrived() -> bool:
        return served.receiver.stats.snapshot()["alerts"]["new"] >= groups * per_group

    assert poll(every_alert_arrived, 60), am.log_tail()
    have = assert_within_caps(served.store)
    assert have["open"] == CAPS.incident_max_open
    assert served.dropped("incident") >= groups - CAPS.incident_max_open
    assert served.dropped("alert") > 0
    assert served.dropped("body") > 0


def test_an_older_without_rowid_alerts_table_is_rebuilt(tmp_path: Path) -> None:
    """An alert of over ~1 KB spilled a page of its own in a WITHOUT ROWID table."""
    with Store(tmp_path / "state") as store:
        incidents = IncidentStore(store)
        body = payload(big_alert(1, 0), big_alert(1, 1), group_key="g")
        group = AlertGroup.model_validate(body)
        incidents.ingest(group, json.dumps(body), group.alerts)
        before = measured(store)
        with store.transaction() as cur:  # as an older release made it
            cur.execute("ALTER TABLE incident_alerts RENAME TO a_old")
            cur.execute(
                "CREATE TABLE incident_alerts (incident_id TEXT NOT NULL, fingerprint TEXT"
                " NOT NULL, status TEXT NOT NULL, alert TEXT NOT NULL, updated_at REAL NOT"
                " NULL, PRIMARY KEY (incident_id, fingerprint)) WITHOUT ROWID"
            )
            cur.execute("INSERT INTO incident_alerts SELECT * FROM a_old")
            cur.execute("DROP TABLE a_old")
    with Store(tmp_path / "state") as store:
        [sql] = store.query("SELECT sql FROM sqlite_master WHERE name = 'incident_alerts'")
        assert "WITHOUT ROWID" not in sql["sql"]
        assert measured(store) == before
        assert_within_caps(store)  # the triggers are back: totals match
        incidents = IncidentStore(store)
        body = payload(big_alert(1, 2), group_key="g")
        group = AlertGroup.model_validate(body)
        incidents.ingest(group, json.dumps(body), group.alerts)
        assert assert_within_caps(store)["alert_rows"] == 3
