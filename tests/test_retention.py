"""Retention: every file in the state directory stays bounded (issue 11).

The inbox and seen-alert keys are pruned by age and count, resolved incidents too (never
one a pending approval names), the logs rotate by rename with their crash guarantees,
snapshots are kept to N; `Store.retain` is the one entry point, called here as the
daemon's timer cycle calls it.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from macha_obs.intake.incidents import IncidentStore
from macha_obs.models import Alert, AlertGroup, RestartUnit, Risk
from macha_obs.statedir import StateDir
from macha_obs.statedir.retention import rotate_if_big
from macha_obs.store import Retention, Store

T0 = 1_700_000_000.0
DAY = 86400.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def group(n: int, *, firing: bool = True, unit: str | None = None) -> tuple[AlertGroup, Alert]:
    labels = {"alertname": "DiskFull", "instance": f"host{n}"}
    if unit:
        labels["name"] = unit
    alert = Alert.model_validate(
        {
            "status": "firing" if firing else "resolved",
            "labels": labels,
            "annotations": {"summary": f"disk {n} is full"},
            "startsAt": datetime.fromtimestamp(T0, UTC).isoformat(),
            "endsAt": (datetime.fromtimestamp(T0, UTC) + timedelta(hours=1)).isoformat(),
            "fingerprint": f"fp{n:06d}",
        }
    )
    grp = AlertGroup.model_validate(
        {
            "version": "4",
            "groupKey": f'{{}}:{{instance="host{n}"}}',
            "status": alert.status,
            "receiver": "macha",
            "groupLabels": {"instance": f"host{n}"},
            "commonLabels": labels,
            "commonAnnotations": {},
            "externalURL": "http://am",
            "alerts": [alert.model_dump(mode="json", by_alias=True)],
        }
    )
    return grp, alert


def storm(incidents: IncidentStore, count: int, *, resolve: bool = True) -> None:
    """`count` alert incidents, each opened by one firing alert and closed by its resolve."""
    for n in range(count):
        grp, alert = group(n)
        incidents.ingest(grp, grp.model_dump_json(by_alias=True), [alert])
        if resolve:
            grp, alert = group(n, firing=False)
            incidents.ingest(grp, grp.model_dump_json(by_alias=True), [alert])


def rows(store: Store, table: str) -> int:
    return int(store.query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"])  # noqa: S608


def test_retain_prunes_the_inbox_and_seen_alerts_by_count(tmp_path: Path) -> None:
    with Store(tmp_path / "state", clock=Clock()) as store:
        storm(IncidentStore(store), 300)
        assert rows(store, "inbox") == 600
        assert rows(store, "alerts_seen") == 600
        report = store.retain(Retention(inbox_max_rows=100, incident_max_resolved=100))
        assert (rows(store, "inbox"), rows(store, "alerts_seen")) == (100, 100)
        assert (report.inbox, report.alerts_seen, report.incidents) == (500, 500, 200)
        assert rows(store, "incidents") == 100
        assert rows(store, "incident_alerts") == 100


def test_retain_prunes_by_age_and_keeps_what_is_recent(tmp_path: Path) -> None:
    clock = Clock()
    with Store(tmp_path / "state", clock=clock) as store:
        incidents = IncidentStore(store)
        storm(incidents, 10)
        clock.now += 8 * DAY  # past inbox_retention (7 days), not incident_retention
        storm_later = [group(100 + n) for n in range(3)]
        for grp, alert in storm_later:
            incidents.ingest(grp, "{}", [alert])
        store.retain(Retention())
        assert rows(store, "inbox") == 3
        assert rows(store, "alerts_seen") == 3
        assert rows(store, "incidents") == 13
        clock.now += 31 * DAY  # past incident_retention: the resolved ten go
        store.retain(Retention())
        assert {s.incident.group_key for s in incidents.open_incidents()} == {
            g.group_key for g, _ in storm_later
        }
        assert rows(store, "incidents") == 3  # open incidents are never pruned


def test_a_resolved_incident_a_pending_approval_names_is_kept(tmp_path: Path) -> None:
    clock = Clock()
    with Store(tmp_path / "state", clock=clock) as store:
        incidents = IncidentStore(store)
        storm(incidents, 3)
        [named, *_] = [r["id"] for r in store.query("SELECT id FROM incidents ORDER BY id")]
        store.approvals.enqueue(
            named, RestartUnit(unit="a.service"), risk=Risk.LOW, reason="r", ttl=99 * DAY
        )
        clock.now += 60 * DAY
        store.retain(Retention())
        assert [r["id"] for r in store.query("SELECT id FROM incidents")] == [named]
        assert incidents.scope_of([named]) is not None


def test_a_group_pruned_to_its_newest_incident_never_reuses_an_id(tmp_path: Path) -> None:
    with Store(tmp_path / "state", clock=Clock()) as store:
        incidents = IncidentStore(store)

        def fire_and_resolve(day: int) -> str | None:
            grp, alert = group(1)
            alert = alert.model_copy(update={"starts_at": alert.starts_at + timedelta(days=day)})
            opened = incidents.ingest(grp, "{}", [alert]).incident_id
            incidents.ingest(grp, "{}", [alert.model_copy(update={"status": "resolved"})])
            return opened

        ids = [fire_and_resolve(day) for day in range(3)]
        assert [i.rsplit("-", 1)[1] for i in ids if i] == ["1", "2", "3"]
        store.retain(Retention(incident_max_resolved=1))  # keeps only the newest, "-3"
        fresh = fire_and_resolve(9)
        assert fresh is not None
        assert fresh.rsplit("-", 1)[1] == "4"


def test_rotation_is_by_rename_and_keeps_k_files(tmp_path: Path) -> None:
    with Store(tmp_path / "state") as store:
        paths = store.paths
        for n in range(6):
            store.audit.audit_action({"event": "filler", "n": n, "pad": "x" * 100})
            inode = os.stat(paths.actions_log).st_ino
            assert rotate_if_big(paths, paths.actions_log, 64, keep=3)
            # the file that was current is now .1, whole: renamed, never copied
            assert os.stat(paths.rotated(paths.actions_log, 3)[0]).st_ino == inode
        names = sorted(p.name for p in paths.root.glob("actions.jsonl*"))
        assert names == ["actions.jsonl.1", "actions.jsonl.2", "actions.jsonl.3"]
        kept = [json.loads(p.read_text())["n"] for p in paths.rotated(paths.actions_log, 3)]
        assert kept == [5, 4, 3]  # newest first
        assert not rotate_if_big(paths, paths.actions_log, 64, keep=3)  # nothing to rotate
        store.audit.audit_action({"event": "after"})
        assert store.audit.audit_records() == 4  # rotated records still count as history


def test_a_torn_line_stays_at_the_end_of_the_rotated_file_and_the_next_record_is_whole(
    tmp_path: Path,
) -> None:
    with Store(tmp_path / "state") as store:
        paths = store.paths
        store.audit.audit_action({"event": "first"})
        with paths.actions_log.open("a") as fh:
            fh.write('{"event": "torn by a cra')  # a crash mid-write
        assert rotate_if_big(paths, paths.actions_log, 1, keep=2)
        store.audit.audit_action({"event": "after"})
        [rotated, _] = paths.rotated(paths.actions_log, 2)
        assert rotated.read_text().splitlines()[-1] == '{"event": "torn by a cra'
        [line] = paths.actions_log.read_text().splitlines()
        assert json.loads(line)["event"] == "after"


def test_retain_rotates_every_log_and_keeps_n_snapshots(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    with Store(state.root) as store:
        for log in state.logs:
            log.write_bytes(b'{"x": 1}\n' * 10_000)
        for n in range(30):
            state.snapshot(T0 + n).write_text("{}")
        report = store.retain(Retention(log_max_bytes=64 * 1024, log_keep=2, snapshot_retention=5))
    assert sorted(report.rotated) == sorted(log.name for log in state.logs)
    for log in state.logs:
        assert not log.exists()  # recreated by the next writer
        assert state.rotated(log, 2)[0].stat().st_size == 90_000
    assert [p.name for p in state.snapshots()] == [
        state.snapshot(T0 + n).name for n in range(25, 30)
    ]
    assert report.snapshots == 25
