"""Incidents: Alertmanager groups and local findings, kept in the state database.

An incident is one Alertmanager group (by group key) while any of its alerts fires,
plus the local findings about the same units; findings about no alerted unit form
incidents of their own (one per unit, or per finding key). Every change of content bumps
`revision`; analysis runs once per revision, so a storm that arrives in one notification
is analysed once, however many alerts it carries.

This module sits at the store's layer: it owns the inbox/incident tables declared in
store.py and uses the store's transactions.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from macha_obs.group_commit import GroupCommitter
from macha_obs.models import Action, Alert, AlertGroup, Finding, FindingKind, Incident, Risk
from macha_obs.scope import Scope
from macha_obs.store import Store

OPEN = "open"
RESOLVED = "resolved"
FINDING_GROUP = "finding:"


def alert_fingerprint(alert: Alert) -> str:
    """Alertmanager's fingerprint, or a stable hash of the labels when a sender left it out."""
    if alert.fingerprint:
        return alert.fingerprint
    canon = json.dumps(sorted(alert.labels.items()), separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class IngestResult:
    inbox_id: int
    incident_id: str | None
    new_alerts: int
    duplicates: int
    firing: int = 0
    resolved: bool = False

    @property
    def changed(self) -> bool:
        return self.incident_id is not None and self.new_alerts > 0


@dataclass(frozen=True)
class Queued:
    """One proposal an analysis queues for a human."""

    action: Action
    risk: Risk
    reason: str
    evidence: Sequence[str] = ()


@dataclass(frozen=True)
class IncidentState:
    incident: Incident
    status: str
    revision: int
    analyzed_revision: int
    cancelled: tuple[int, ...] = field(default=())


class IncidentStore:
    """Inbox, dedupe and incident bookkeeping over a `Store`'s database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.writer = GroupCommitter(store)

    # ------------------------------------------------------------ alerts

    def ingest(self, group: AlertGroup, body: str, alerts: Sequence[Alert]) -> IngestResult:
        """Store the body and apply the alerts in one transaction (committed before the 2xx).

        An alert state (fingerprint, startsAt, status) is applied once: Alertmanager HA
        peers each deliver the same notification, and repeat_interval re-sends it.
        """
        now = self.store.clock()
        # concurrent deliveries share a commit (and its fsync); each waits for it
        return self.writer.run(lambda cur: self._ingest(cur, group, body, alerts, now))

    def _ingest(
        self,
        cur: sqlite3.Cursor,
        group: AlertGroup,
        body: str,
        alerts: Sequence[Alert],
        now: float,
    ) -> IngestResult:
        fresh: list[tuple[str, Alert]] = []
        for alert in alerts:
            fp = alert_fingerprint(alert)
            cur.execute(
                "INSERT OR IGNORE INTO alerts_seen(fingerprint, starts_at, status, seen_at)"
                " VALUES (?,?,?,?)",
                (fp, alert.starts_at.isoformat(), alert.status, now),
            )
            # Seen before, but changed since (a resolve, forged or early, then the
            # still-firing alert re-sent; then the real resolve): no duplicate.
            if cur.rowcount or _latest_status(cur, group.group_key, fp) not in (
                None,
                alert.status,
            ):
                fresh.append((fp, alert))
        if not fresh:  # acknowledged, not stored again
            return IngestResult(0, None, 0, len(alerts))
        cur.execute(
            "INSERT INTO inbox(received_at, group_key, body, new_alerts) VALUES (?,?,?,?)",
            (now, group.group_key, body, len(fresh)),
        )
        inbox_id = int(cur.lastrowid or 0)
        incident_id = self._open_incident(cur, "alert", group.group_key, now, fresh)
        if incident_id is None:  # only resolutions for an incident we never opened
            return IngestResult(inbox_id, None, 0, len(alerts))
        applied = sum(self._apply_alert(cur, incident_id, fp, a, now) for fp, a in fresh)
        if not applied:
            return IngestResult(inbox_id, incident_id, 0, len(alerts))
        cur.execute(
            "UPDATE incidents SET revision = revision + 1, updated_at = ? WHERE id = ?",
            (now, incident_id),
        )
        firing = _count_firing(cur, incident_id)
        closed = firing == 0 and not _names_units(cur, incident_id)
        if closed:
            # Nothing systemd could contradict. An incident about units stays open until
            # the orchestrator has systemd confirm the problem is gone (a resolve is a
            # hint to look, never proof by itself); queued items stay until then too.
            _resolve(cur, incident_id, now)
        return IngestResult(inbox_id, incident_id, applied, len(alerts) - applied, firing, closed)

    def _open_incident(
        self,
        cur: sqlite3.Cursor,
        source: str,
        group_key: str,
        now: float,
        fresh: Sequence[tuple[str, Alert]] = (),
    ) -> str | None:
        row = cur.execute(
            "SELECT id FROM incidents WHERE group_key = ? AND status = ?", (group_key, OPEN)
        ).fetchone()
        if row is not None:
            return str(row["id"])
        if source == "alert" and not any(a.firing for _, a in fresh):
            return None
        n = cur.execute("SELECT COUNT(*) FROM incidents WHERE group_key = ?", (group_key,))
        prefix = "am" if source == "alert" else "fd"
        incident_id = f"{prefix}-{_short_hash(group_key)}-{int(n.fetchone()[0]) + 1}"
        cur.execute(
            "INSERT INTO incidents(id, source, group_key, status, revision, opened_at,"
            " updated_at) VALUES (?,?,?,?,0,?,?)",
            (incident_id, source, group_key, OPEN, now, now),
        )
        return incident_id

    @staticmethod
    def _apply_alert(
        cur: sqlite3.Cursor, incident_id: str, fp: str, alert: Alert, now: float
    ) -> bool:
        """Record one alert state; False when it changes nothing. A `resolved` counts
        only for an alert whose own fingerprint is firing in this incident."""
        row = cur.execute(
            "SELECT status FROM incident_alerts WHERE incident_id = ? AND fingerprint = ?",
            (incident_id, fp),
        ).fetchone()
        if not alert.firing and (row is None or row["status"] != "firing"):
            return False
        cur.execute(
            "INSERT INTO incident_alerts(incident_id, fingerprint, status, alert, updated_at)"
            " VALUES (?,?,?,?,?) ON CONFLICT(incident_id, fingerprint) DO UPDATE SET"
            " status = excluded.status, alert = excluded.alert, updated_at = excluded.updated_at",
            (incident_id, fp, alert.status, alert.model_dump_json(by_alias=True), now),
        )
        return True

    # ------------------------------------------------------------ findings

    def set_findings(self, incident_id: str, findings: Sequence[Finding]) -> bool:
        """Replace an open incident's findings; True (and a new revision) if they changed."""
        encoded = _encode_findings(findings)
        with self.store.transaction() as cur:
            row = cur.execute(
                "SELECT findings FROM incidents WHERE id = ? AND status = ?", (incident_id, OPEN)
            ).fetchone()
            if row is None or _keys(row["findings"]) == _keys(encoded):
                return False
            cur.execute(
                "UPDATE incidents SET findings = ?, revision = revision + 1, updated_at = ?"
                " WHERE id = ?",
                (encoded, self.store.clock(), incident_id),
            )
        return True

    def open_for_findings(self, group: str, findings: Sequence[Finding]) -> tuple[str, bool]:
        """The open finding incident for `group` (a unit or finding key) with `findings`,
        and whether that changed it."""
        with self.store.transaction() as cur:
            incident_id = self._open_incident(
                cur, "finding", FINDING_GROUP + group, self.store.clock()
            )
        if incident_id is None:  # pragma: no cover - finding incidents always open
            raise RuntimeError(f"cannot open a finding incident for {group!r}")
        return incident_id, self.set_findings(incident_id, findings)

    def touch(self, incident_id: str) -> bool:
        """The same problem happened again (a unit failed again after a fix): one new
        revision, so it is analysed again. Only once per analysis: no inflation."""
        with self.store.transaction() as cur:
            cur.execute(
                "UPDATE incidents SET revision = revision + 1, updated_at = ?"
                " WHERE id = ? AND status = ? AND revision = analyzed_revision",
                (self.store.clock(), incident_id, OPEN),
            )
            return cur.rowcount > 0

    def reopen_all(self, *, keep: Collection[str] = ()) -> int:
        """Every open incident but those in `keep` is analysed again (after a pause
        ends, or a restart: what was only recorded, or decided and never acted on, is
        decided anew from the host's state now). How many."""
        with self.store.transaction() as cur:
            rows = cur.execute(
                "SELECT id FROM incidents WHERE status = ? AND revision = analyzed_revision",
                (OPEN,),
            ).fetchall()
            ids = [r["id"] for r in rows if r["id"] not in keep]
            cur.executemany(
                "UPDATE incidents SET revision = revision + 1, updated_at = ? WHERE id = ?",
                [(self.store.clock(), i) for i in ids],
            )
            return len(ids)

    def resolve(self, incident_id: str) -> None:
        """Close an incident. Items queued for it are settled by the orchestrator, which
        cancels one only when its problem is confirmed gone."""
        with self.store.transaction() as cur:
            _resolve(cur, incident_id, self.store.clock())

    # ------------------------------------------------------------ reading

    def get(self, incident_id: str) -> IncidentState | None:
        rows = self.store.query("SELECT * FROM incidents WHERE id = ?", (incident_id,))
        if not rows:
            return None
        row = rows[0]
        alerts = [
            Alert.model_validate_json(r["alert"])
            for r in self.store.query(
                "SELECT alert FROM incident_alerts WHERE incident_id = ? ORDER BY fingerprint",
                (incident_id,),
            )
        ]
        incident = Incident(
            id=row["id"],
            source=row["source"],
            group_key=row["group_key"],
            opened_at=datetime.fromtimestamp(row["opened_at"], UTC),
            alerts=alerts,
            findings=[Finding.model_validate(f) for f in json.loads(row["findings"])],
        )
        return IncidentState(
            incident, row["status"], int(row["revision"]), int(row["analyzed_revision"])
        )

    def scope_of(self, incident_ids: Iterable[str]) -> Scope:
        """What the evidence of these incidents (open or not) names: the scope lock."""
        states = [self.get(i) for i in incident_ids]
        return Scope.of(s.incident for s in states if s is not None)

    def is_open(self, incident_id: str) -> bool:
        state = self.get(incident_id)
        return state is not None and state.status == OPEN

    def open_incidents(self) -> list[IncidentState]:
        rows = self.store.query("SELECT id FROM incidents WHERE status = ? ORDER BY id", (OPEN,))
        return [s for s in (self.get(r["id"]) for r in rows) if s is not None]

    def pending_analysis(self) -> list[str]:
        """Open incidents whose latest revision has not been analysed yet."""
        rows = self.store.query(
            "SELECT id FROM incidents WHERE status = ? AND revision > analyzed_revision"
            " ORDER BY updated_at",
            (OPEN,),
        )
        return [str(r["id"]) for r in rows]

    def settle_analysis(
        self, incident_id: str, revision: int, queued: Sequence[Queued], ttl: float
    ) -> list[int]:
        """Queue an analysis' proposals for a human and mark the incident analysed, in one
        transaction: a crash at any instant leaves either both or neither. The ids."""
        with self.store.transaction() as cur:
            ids = [
                self.store.enqueue_in(
                    cur,
                    incident_id,
                    q.action,
                    risk=q.risk,
                    reason=q.reason,
                    evidence=list(q.evidence),
                    ttl=ttl,
                )
                for q in queued
            ]
            cur.execute(
                "UPDATE incidents SET analyzed_revision = MAX(analyzed_revision, ?) WHERE id = ?",
                (revision, incident_id),
            )
        return ids

    def open_but_quiet(self) -> list[IncidentState]:
        """Open alert incidents none of whose alerts fire any more: about units, waiting
        for systemd to confirm the problem is gone before they close."""
        return [
            s
            for s in self.open_incidents()
            if s.incident.source == "alert" and not any(a.firing for a in s.incident.alerts)
        ]

    def mark_analyzed(self, incident_id: str, revision: int) -> None:
        with self.store.transaction() as cur:
            cur.execute(
                "UPDATE incidents SET analyzed_revision = MAX(analyzed_revision, ?) WHERE id = ?",
                (revision, incident_id),
            )

    def inbox_count(self) -> int:
        return int(self.store.query("SELECT COUNT(*) AS n FROM inbox")[0]["n"])

    def prune(self, older_than: float) -> int:
        """Forget inbox bodies and dedupe keys older than `older_than` (epoch seconds)."""
        with self.store.transaction() as cur:
            cur.execute("DELETE FROM inbox WHERE received_at < ?", (older_than,))
            removed = cur.rowcount
            cur.execute("DELETE FROM alerts_seen WHERE seen_at < ?", (older_than,))
        return removed


def _latest_status(cur: sqlite3.Cursor, group_key: str, fp: str) -> str | None:
    """The fingerprint's latest state in this group's incidents, if it has one."""
    row = cur.execute(
        "SELECT a.status FROM incident_alerts a JOIN incidents i ON i.id = a.incident_id"
        " WHERE i.group_key = ? AND a.fingerprint = ? ORDER BY a.updated_at DESC LIMIT 1",
        (group_key, fp),
    ).fetchone()
    return None if row is None else str(row["status"])


def _names_units(cur: sqlite3.Cursor, incident_id: str) -> bool:
    rows = cur.execute(
        "SELECT alert FROM incident_alerts WHERE incident_id = ?", (incident_id,)
    ).fetchall()
    return any(Alert.model_validate_json(r["alert"]).unit for r in rows)


def _count_firing(cur: sqlite3.Cursor, incident_id: str) -> int:
    row = cur.execute(
        "SELECT COUNT(*) FROM incident_alerts WHERE incident_id = ? AND status = 'firing'",
        (incident_id,),
    ).fetchone()
    return int(row[0])


def _resolve(cur: sqlite3.Cursor, incident_id: str, now: float) -> None:
    cur.execute(
        "UPDATE incidents SET status = ?, resolved_at = ?, updated_at = ? WHERE id = ?"
        " AND status = ?",
        (RESOLVED, now, now, incident_id, OPEN),
    )


def _encode_findings(findings: Iterable[Finding]) -> str:
    ordered = sorted(findings, key=lambda f: f.key)
    return json.dumps([f.model_dump(mode="json") for f in ordered], separators=(",", ":"))


def _keys(encoded: str) -> list[tuple[str, str, str]]:
    """What counts as a change: which findings, and how severe, not their wording."""
    return [(f["kind"], f["subject"], f["severity"]) for f in json.loads(encoded)]


def assign_findings(
    incidents: Sequence[Incident], findings: Iterable[Finding]
) -> tuple[dict[str, list[Finding]], dict[str, list[Finding]]]:
    """Findings about an alerted unit join that alert incident; the rest are grouped by
    unit (or by finding key when they name no unit). Pure."""
    by_unit: dict[str, str] = {}
    for incident in incidents:
        if incident.source == "alert":
            for unit in incident.units:
                by_unit.setdefault(unit, incident.id)
    joined: dict[str, list[Finding]] = {i.id: [] for i in incidents if i.source == "alert"}
    alone: dict[str, list[Finding]] = {}
    for finding in findings:
        if finding.unit and finding.unit in by_unit:
            joined[by_unit[finding.unit]].append(finding)
        else:
            alone.setdefault(finding.unit or finding.key, []).append(finding)
    return joined, alone


def sync_findings(
    incidents: IncidentStore,
    findings: Sequence[Finding],
    unknown: Collection[FindingKind] = (),
) -> list[str]:
    """Apply the current findings to the open incidents; return the ids that changed.

    Finding incidents whose findings are gone are resolved. `unknown` are the kinds whose
    collector failed this cycle: a failed look is "unknown", never "resolved", so the
    open incidents keep their last findings of those kinds.
    """
    open_now = incidents.open_incidents()
    if unknown:
        current = {f.key for f in findings}
        carried = {
            f.key: f
            for s in open_now
            for f in s.incident.findings
            if f.kind in unknown and f.key not in current
        }
        findings = [*findings, *carried.values()]
    joined, alone = assign_findings([s.incident for s in open_now], findings)
    changed = [i for i, fs in joined.items() if incidents.set_findings(i, fs)]
    live: set[str] = set()
    for group, fs in alone.items():
        incident_id, was_changed = incidents.open_for_findings(group, fs)
        live.add(incident_id)
        if was_changed:
            changed.append(incident_id)
    for state in open_now:
        if state.incident.source == "finding" and state.incident.id not in live:
            incidents.resolve(state.incident.id)
    return changed


def analyze_pending(incidents: IncidentStore, analyze: Callable[[Incident], object]) -> int:
    """Analyse every incident whose latest revision was not analysed yet, once each.

    Changes that arrived since the last analysis are coalesced: however many alerts
    joined, the incident is analysed once, at its newest revision.
    """
    done = 0
    for incident_id in incidents.pending_analysis():
        state = incidents.get(incident_id)
        if state is None or state.status != OPEN:
            continue
        analyze(state.incident)
        incidents.mark_analyzed(incident_id, state.revision)
        done += 1
    return done
