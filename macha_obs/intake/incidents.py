"""Incidents: Alertmanager groups and local findings, kept in the state database.

An incident is one Alertmanager group (by group key) while any of its alerts fires,
plus the local findings about the same units; findings about no alerted unit form
incidents of their own (one per unit, or per finding key). Every change of content bumps
`revision`; analysis runs once per revision, so a storm that arrives in one notification
is analysed once, however many alerts it carries.

The rules live here (dedupe, when an incident closes, how findings group); the SQL for
the inbox and incident tables is `macha_obs/store/incidents.py`, run in the store's
transactions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from macha_obs.models import Action, Alert, AlertGroup, Finding, FindingKind, Incident, Risk
from macha_obs.policy.scope import Scope
from macha_obs.store import Store
from macha_obs.store import incidents as tables

# an incident's status, compared by the orchestrator: exported from here, its room
from macha_obs.store.incidents import OPEN as OPEN  # noqa: PLC0414
from macha_obs.store.intake_bounds import hold_caps

FINDING_GROUP = "finding:"


def alert_fingerprint(alert: Alert) -> str:
    """Alertmanager's fingerprint, or a stable hash of the labels when a sender left it out."""
    if alert.fingerprint:
        return alert.fingerprint
    canon = json.dumps(sorted(alert.labels.items()), separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def starts_key(alert: Alert) -> str:
    """startsAt as the dedupe key holds it: UTC, to the millisecond. The webhook carries
    Go's nanoseconds, Alertmanager's API v2 milliseconds (truncated): both give one key,
    so an alert pulled and also pushed is one state. (Times already at whole
    milliseconds keep the key they always had.)"""
    t = alert.starts_at.astimezone(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000).isoformat()


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
    # what the caps dropped to make room (store/intake_bounds.py), by what
    dropped: Mapping[str, int] = field(default_factory=dict)

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

    # ------------------------------------------------------------ alerts

    def ingest(self, group: AlertGroup, body: str, alerts: Sequence[Alert]) -> IngestResult:
        """Store the body and apply the alerts in one transaction (committed before the 2xx).

        An alert state (fingerprint, startsAt, status) is applied once: Alertmanager HA
        peers each deliver the same notification, and repeat_interval re-sends it.
        """
        now = self.store.clock()
        # concurrent deliveries share a commit (and its fsync); each waits for it
        result = self.store.commit_shared(
            lambda cur: self._capped(cur, self._ingest(cur, group, body, alerts, now))
        )
        if result.dropped:
            self.store.intake_drops.add(Counter(result.dropped))
        return result

    def _capped(self, cur: sqlite3.Cursor, result: IngestResult) -> IngestResult:
        """Every intake table back under its cap, in the delivery's own transaction: a
        storm never grows the state dir beyond them, even between retention passes."""
        if not result.inbox_id:
            return result  # nothing stored
        dropped = hold_caps(cur, self.store.retention, result.incident_id)
        return dataclasses.replace(result, dropped=dict(dropped)) if dropped else result

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
            seen = tables.note_seen(cur, fp, starts_key(alert), alert.status, now)
            # Seen before, but changed since (a resolve, forged or early, then the
            # still-firing alert re-sent; then the real resolve): no duplicate.
            if seen or tables.latest_status(cur, group.group_key, fp) not in (
                None,
                alert.status,
            ):
                fresh.append((fp, alert))
        if not fresh:  # acknowledged, not stored again
            return IngestResult(0, None, 0, len(alerts))
        inbox_id = tables.add_to_inbox(cur, now, group.group_key, body, len(fresh))
        incident_id = self._open_incident(cur, "alert", group.group_key, now, fresh)
        if incident_id is None:  # only resolutions for an incident we never opened
            return IngestResult(inbox_id, None, 0, len(alerts))
        applied = sum(self._apply_alert(cur, incident_id, fp, a, now) for fp, a in fresh)
        if not applied:
            return IngestResult(inbox_id, incident_id, 0, len(alerts))
        tables.bump(cur, incident_id, now)
        firing = tables.count_firing(cur, incident_id)
        closed = firing == 0 and not _names_units(cur, incident_id)
        if closed:
            # Nothing systemd could contradict. An incident about units stays open until
            # the orchestrator has systemd confirm the problem is gone (a resolve is a
            # hint to look, never proof by itself); queued items stay until then too.
            tables.resolve(cur, incident_id, now)
        return IngestResult(inbox_id, incident_id, applied, len(alerts) - applied, firing, closed)

    def _open_incident(
        self,
        cur: sqlite3.Cursor,
        source: str,
        group_key: str,
        now: float,
        fresh: Sequence[tuple[str, Alert]] = (),
    ) -> str | None:
        found = tables.open_incident_of(cur, group_key)
        if found is not None:
            return found
        if source == "alert" and not any(a.firing for _, a in fresh):
            return None
        prefix = "am" if source == "alert" else "fd"
        return tables.insert_incident(
            cur, f"{prefix}-{_short_hash(group_key)}", source, group_key, now
        )

    @staticmethod
    def _apply_alert(
        cur: sqlite3.Cursor, incident_id: str, fp: str, alert: Alert, now: float
    ) -> bool:
        """Record one alert state; False when it changes nothing. A `resolved` counts
        only for an alert whose own fingerprint is firing in this incident."""
        if not alert.firing and tables.alert_status(cur, incident_id, fp) != "firing":
            return False
        encoded = alert.model_dump_json(by_alias=True)
        tables.put_alert(cur, incident_id, fp, status=alert.status, alert=encoded, now=now)
        return True

    # ------------------------------------------------------------ findings

    def set_findings(self, incident_id: str, findings: Sequence[Finding]) -> bool:
        """Replace an open incident's findings; True (and a new revision) if they changed."""
        encoded = _encode_findings(findings)
        with self.store.transaction() as cur:
            current = tables.open_findings(cur, incident_id)
            if current is None or _keys(current) == _keys(encoded):
                return False
            tables.set_findings(cur, incident_id, encoded, self.store.clock())
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
            return tables.bump_analysed(cur, incident_id, self.store.clock())

    def reopen_all(self, *, keep: Collection[str] = ()) -> int:
        """Every open incident but those in `keep` is analysed again (after a pause
        ends, or a restart: what was only recorded, or decided and never acted on, is
        decided anew from the host's state now). How many."""
        with self.store.transaction() as cur:
            return tables.reopen_all(cur, keep, self.store.clock())

    def resolve(self, incident_id: str) -> None:
        """Close an incident. Items queued for it are settled by the orchestrator, which
        cancels one only when its problem is confirmed gone."""
        with self.store.transaction() as cur:
            tables.resolve(cur, incident_id, self.store.clock())

    # ------------------------------------------------------------ reading

    def get(self, incident_id: str) -> IncidentState | None:
        row = tables.incident_row(self.store.db, incident_id)
        if row is None:
            return None
        alerts = [
            Alert.model_validate_json(a) for a in tables.stored_alerts(self.store.db, incident_id)
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
        return [s for s in (self.get(i) for i in tables.open_ids(self.store.db)) if s is not None]

    def pending_analysis(self) -> list[str]:
        """Open incidents whose latest revision has not been analysed yet."""
        return tables.pending_ids(self.store.db)

    def settle_analysis(
        self, incident_id: str, revision: int, queued: Sequence[Queued], ttl: float
    ) -> list[int]:
        """Queue an analysis' proposals for a human and mark the incident analysed, in one
        transaction: a crash at any instant leaves either both or neither. The ids."""
        with self.store.transaction() as cur:
            ids = [
                self.store.approvals.enqueue_in(
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
            tables.mark_analyzed(cur, incident_id, revision)
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
            tables.mark_analyzed(cur, incident_id, revision)

    def inbox_count(self) -> int:
        """Webhook bodies kept (bounded by `Store.retain`)."""
        return tables.inbox_count(self.store.db)


def _names_units(cur: sqlite3.Cursor, incident_id: str) -> bool:
    return any(Alert.model_validate_json(a).unit for a in tables.alerts_in(cur, incident_id))


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
