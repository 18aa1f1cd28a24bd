"""What became of every proposal, per problem signature and fix (models/learning.py).

Derived from the approvals queue and the action ledger, idempotently: each approvals
and actions row carries a `learned` mark (bits below) saying which of its events are
already counted, and `learn_sync` counts the rest and sets the marks in ONE
transaction. A crash at any instant leaves both or neither, so nothing is counted twice
or lost, whichever path (the daemon, `macha-approve`, the web page) changed the row.

    fix_outcomes   the counts per (signature, fix), bounded by age and row count
    learn_events   the dated rejections and failed verifications suppression reads
                   (invariant 14); a person's `macha-obs learn clear` deletes them
    learn_totals   monotonic totals behind the metrics: never pruned, so counters
                   survive restarts and retention

Shadow scoring: when an item was queued in `suggest` or `observe`, the remediator notes
on it what `auto-safe` would have done (`shadow`, a policy outcome). A person's
decision is then scored: approving agrees when auto-safe would have executed it;
rejecting agrees when it would not. Items nobody decided (expired, fixed elsewhere,
cancelled) are not scored.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Protocol

from macha_obs.models import (
    REASONS_KEPT,
    Alert,
    ApprovalStatus,
    Finding,
    FixKey,
    FixRecord,
    Incident,
    LearnOutcome,
    Outcome,
    Signature,
    Suppression,
    learns_from,
    parse_action,
    signature_of,
    suppression_of,
)
from macha_obs.store._db import ts
from macha_obs.store.audit import Audit

DDL = """
CREATE TABLE IF NOT EXISTS fix_outcomes (
    problem TEXT NOT NULL,
    subject TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    proposed INTEGER NOT NULL DEFAULT 0,
    auto_executed INTEGER NOT NULL DEFAULT 0,
    approved INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0,
    expired INTEGER NOT NULL DEFAULT 0,
    fixed_elsewhere INTEGER NOT NULL DEFAULT 0,
    verified INTEGER NOT NULL DEFAULT 0,
    failed_verification INTEGER NOT NULL DEFAULT 0,
    reasons TEXT NOT NULL DEFAULT '[]',     -- the last few rejection reasons
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    PRIMARY KEY (problem, subject, kind, target)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fix_outcomes_seen ON fix_outcomes(last_seen);
CREATE TABLE IF NOT EXISTS learn_events (
    problem TEXT NOT NULL,
    subject TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,              -- rejected | failed_verification
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS learn_events_key ON learn_events(problem, subject, kind, target);
CREATE INDEX IF NOT EXISTS learn_events_at ON learn_events(at);
CREATE TABLE IF NOT EXISTS learn_totals (
    metric TEXT NOT NULL,               -- outcome | shadow
    kind TEXT NOT NULL,
    label TEXT NOT NULL,                -- the outcome, or "true"/"false" (agreed)
    unit TEXT NOT NULL,                 -- the unit acted on, "" for host-wide fixes
    value INTEGER NOT NULL,
    PRIMARY KEY (metric, kind, label, unit)
) WITHOUT ROWID;
"""

# Columns added to the queue's and the ledger's tables (older databases too).
_COLUMNS = (
    ("approvals", "learned", "ALTER TABLE approvals ADD COLUMN learned INTEGER NOT NULL DEFAULT 0"),
    ("approvals", "shadow", "ALTER TABLE approvals ADD COLUMN shadow TEXT"),
    ("actions", "learned", "ALTER TABLE actions ADD COLUMN learned INTEGER NOT NULL DEFAULT 0"),
)
_INDEXES = """
CREATE INDEX IF NOT EXISTS approvals_learning ON approvals(learned);
CREATE INDEX IF NOT EXISTS actions_learning ON actions(learned);
"""
# `learned` bits on an approvals row; an actions row is 0 (not yet) or DONE.
PROPOSED_COUNTED = 1
DECISION_COUNTED = 2
DONE = PROPOSED_COUNTED | DECISION_COUNTED

# Bounds: records not seen for a year go, and at most this many stay (least recently
# seen first); dated events older than the longest suppress_window cannot matter.
OUTCOMES_RETENTION = 366 * 86400.0
OUTCOMES_MAX_ROWS = 5000
EVENTS_MAX_ROWS = 20_000

_FINAL = {
    ApprovalStatus.EXECUTED,
    ApprovalStatus.FAILED,
    ApprovalStatus.REJECTED,
    ApprovalStatus.EXPIRED,
    ApprovalStatus.CANCELLED,
    ApprovalStatus.REFUSED,
    ApprovalStatus.ACKNOWLEDGED,
    ApprovalStatus.INTERRUPTED,
}
_COUNTS = tuple(o.value for o in LearnOutcome)
_FINAL_SQL = ",".join(f"'{status.value}'" for status in sorted(_FINAL))
# rows with an event not yet counted: new items, items settled since, finished actions
_UNCOUNTED_APPROVALS = (
    f"SELECT * FROM approvals WHERE learned = 0 OR (learned < {DONE}"  # noqa: S608
    f" AND status IN ({_FINAL_SQL})) ORDER BY id"
)
_UNCOUNTED_ACTIONS = "SELECT * FROM actions WHERE learned = 0 AND status != 'intent' ORDER BY id"
_UNCOUNTED = (
    f"SELECT EXISTS({_UNCOUNTED_APPROVALS.replace(' ORDER BY id', '')})"
    f" OR EXISTS({_UNCOUNTED_ACTIONS.replace(' ORDER BY id', '')}) AS any"
)


class SuppressSettings(Protocol):
    """What suppression reads from the config (config.Config has these)."""

    @property
    def suppress_after_rejections(self) -> int: ...
    @property
    def suppress_after_failures(self) -> int: ...
    @property
    def suppress_window(self) -> float: ...


Key = tuple[str, str, str, str]  # problem, subject, kind, target


class Outcomes(Audit):
    """The learning tables' queries, on the store's connection."""

    def _migrate(self) -> None:
        super()._migrate()
        with self._tx() as cur:
            for table, column, ddl in _COLUMNS:
                have = {r["name"] for r in cur.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    cur.execute(ddl)
        self._db.executescript(_INDEXES)

    # ------------------------------------------------------------ deriving

    def learn_sync(self) -> int:
        """Count what happened since the last sync; how many events were counted. A
        read finds out first whether there is anything to count (no write otherwise)."""
        if not self._query(_UNCOUNTED)[0]["any"]:
            return 0
        with self._tx() as cur:
            return sync(cur)

    def record_late_failure(self, action_id: int) -> None:
        """An alert-driven fix the host took (counted verified) whose alert did not
        resolve in time: the failed verification (breaker) and the learning record's
        failed_verification, in one transaction."""
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO verifications(at, action_id, ok) VALUES (?,?,0)",
                (self.clock(), action_id),
            )
            row = cur.execute("SELECT * FROM actions WHERE id = ?", (action_id,)).fetchone()
            if row is None:
                return
            action = parse_action(row["action"])
            if learns_from(action):
                key = (*_Signatures(cur).of(row["incident_id"], action), action.kind, action.target)
                _bump(
                    cur, key, LearnOutcome.FAILED_VERIFICATION, at=self.clock(), unit=_unit(action)
                )

    def note_shadow(self, approval_id: int, outcome: Outcome) -> None:
        """What auto-safe would have done with a queued item (the first note wins)."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE approvals SET shadow = COALESCE(shadow, ?) WHERE id = ?",
                (outcome.value, approval_id),
            )

    # ------------------------------------------------------------ reading

    def fix_records(self) -> list[FixRecord]:
        """The whole table, most proposed first."""
        self.learn_sync()
        rows = self._query("SELECT * FROM fix_outcomes ORDER BY proposed DESC, last_seen DESC")
        return [_record(r) for r in rows]

    def fix_history(self, signature: Signature) -> list[FixRecord]:
        """Every fix proposed for `signature`, most proposed first."""
        self.learn_sync()
        rows = self._query(
            "SELECT * FROM fix_outcomes WHERE problem = ? AND subject = ?"
            " ORDER BY proposed DESC, last_seen DESC",
            (signature.problem, signature.subject),
        )
        return [_record(r) for r in rows]

    def fix_record(self, signature: Signature, fix: FixKey) -> FixRecord | None:
        self.learn_sync()
        rows = self._query(
            "SELECT * FROM fix_outcomes WHERE problem = ? AND subject = ? AND kind = ?"
            " AND target = ?",
            (signature.problem, signature.subject, fix.kind, fix.target),
        )
        return _record(rows[0]) if rows else None

    def suppressions(
        self, settings: SuppressSettings, now: float | None = None
    ) -> list[Suppression]:
        """Every fix suppressed now (invariant 14), soonest lapse first."""
        self.learn_sync()
        when = datetime.fromtimestamp(self.clock() if now is None else now, UTC)
        found = [
            s
            for key, events in self._events(None).items()
            if (s := _suppression(key, events, settings, when)) is not None
        ]
        return sorted(found, key=lambda s: (s.until, str(s.signature)))

    def suppression(
        self, signature: Signature, fix: FixKey, settings: SuppressSettings, now: float
    ) -> Suppression | None:
        """Whether this one fix is suppressed for this signature now."""
        self.learn_sync()
        key = (signature.problem, signature.subject, fix.kind, fix.target)
        events = self._events(key).get(key)
        when = datetime.fromtimestamp(now, UTC)
        return _suppression(key, events, settings, when) if events else None

    def clear_suppression(self, signature: Signature | None, by: str) -> int:
        """A person lifts suppression (of one signature, or all with None): the dated
        events it was computed from are forgotten, the counts stay. Audited."""
        self.learn_sync()
        with self._tx() as cur:
            if signature is None:
                cur.execute("DELETE FROM learn_events")
            else:
                cur.execute(
                    "DELETE FROM learn_events WHERE problem = ? AND subject = ?",
                    (signature.problem, signature.subject),
                )
            gone = cur.rowcount
        self.audit_decision(
            {
                "event": "learn_cleared",
                "signature": str(signature) if signature is not None else "*",
                "by": by,
                "events": gone,
            }
        )
        return gone

    def learn_totals(self) -> list[tuple[str, str, str, str, int]]:
        """(metric, kind, label, unit, value): the persisted totals behind the metrics."""
        self.learn_sync()
        rows = self._query("SELECT metric, kind, label, unit, value FROM learn_totals")
        return [(r["metric"], r["kind"], r["label"], r["unit"], int(r["value"])) for r in rows]

    def _events(self, key: Key | None) -> dict[Key, list[tuple[str, float]]]:
        sql = "SELECT problem, subject, kind, target, outcome, at FROM learn_events"
        args: tuple[str, ...] = ()
        if key is not None:
            sql += " WHERE problem = ? AND subject = ? AND kind = ? AND target = ?"
            args = key
        grouped: dict[Key, list[tuple[str, float]]] = defaultdict(list)
        for r in self._query(sql, args):
            grouped[(r["problem"], r["subject"], r["kind"], r["target"])].append(
                (r["outcome"], float(r["at"]))
            )
        return grouped


def _suppression(
    key: Key, events: list[tuple[str, float]], settings: SuppressSettings, now: datetime
) -> Suppression | None:
    def dated(outcome: LearnOutcome) -> list[datetime]:
        return [datetime.fromtimestamp(at, UTC) for o, at in events if o == outcome.value]

    return suppression_of(
        Signature(problem=key[0], subject=key[1]),
        FixKey(kind=key[2], target=key[3]),
        rejections=dated(LearnOutcome.REJECTED),
        failures=dated(LearnOutcome.FAILED_VERIFICATION),
        after_rejections=settings.suppress_after_rejections,
        after_failures=settings.suppress_after_failures,
        window=timedelta(seconds=settings.suppress_window),
        now=now,
    )


# ---------------------------------------------------------------- the derivation


def sync(cur: sqlite3.Cursor) -> int:
    """Count every uncounted event of the queue and the ledger, and mark it counted, in
    the caller's transaction. Idempotent: a second run counts nothing."""
    signatures = _Signatures(cur)
    counted = 0
    for row in cur.execute(_UNCOUNTED_APPROVALS).fetchall():
        counted += _approval_events(cur, row, signatures)
    for row in cur.execute(_UNCOUNTED_ACTIONS).fetchall():
        counted += _action_events(cur, row, signatures)
    return counted


def _approval_events(cur: sqlite3.Cursor, row: sqlite3.Row, signatures: _Signatures) -> int:
    """The events of one queue item not yet counted: proposed, then what a person (or
    the TTL, or the host) decided."""
    learned = int(row["learned"])
    status = ApprovalStatus(row["status"])
    action = parse_action(row["action"])
    final = status in _FINAL
    mark = learned | PROPOSED_COUNTED | (DECISION_COUNTED if final else 0)
    if mark == learned:
        return 0
    cur.execute("UPDATE approvals SET learned = ? WHERE id = ?", (mark, row["id"]))
    if not learns_from(action):
        return 0
    key = (*signatures.of(row["incident_id"], action), action.kind, action.target)
    decided_at = float(row["decided_at"] or row["created_at"])
    outcomes: list[tuple[LearnOutcome, float]] = []
    if not learned & PROPOSED_COUNTED:
        outcomes.append((LearnOutcome.PROPOSED, float(row["created_at"])))
    if final and not learned & DECISION_COUNTED:
        outcomes.extend((o, decided_at) for o in _decision(status, row))
        _score(cur, row, action.kind, status, unit=_unit(action))
    for outcome, at in outcomes:
        reason = str(row["note"]) if outcome is LearnOutcome.REJECTED else None
        _bump(cur, key, outcome, at=at, unit=_unit(action), reason=reason)
    return len(outcomes)


def _decision(status: ApprovalStatus, row: sqlite3.Row) -> list[LearnOutcome]:
    """What a settled item says: a person approved or rejected it, it expired, or the
    problem went away without the sidecar (cancelled as gone; merged items say nothing)."""
    by_person = bool(row["decided_by"])
    match status:
        case ApprovalStatus.REJECTED:
            return [LearnOutcome.REJECTED]
        case ApprovalStatus.EXPIRED:
            return [LearnOutcome.EXPIRED]
        case ApprovalStatus.CANCELLED:
            if str(row["note"]).startswith("merged into"):
                return []
            gone = [LearnOutcome.FIXED_ELSEWHERE]
            return [LearnOutcome.APPROVED, *gone] if by_person else gone
        case _:
            return [LearnOutcome.APPROVED] if by_person else []


def _score(
    cur: sqlite3.Cursor, row: sqlite3.Row, kind: str, status: ApprovalStatus, *, unit: str
) -> None:
    """Shadow scoring of a person's decision against what auto-safe would have done."""
    shadow = row["shadow"]
    if shadow is None or not row["decided_by"]:
        return
    if status is ApprovalStatus.REJECTED:
        agreed = shadow != Outcome.EXECUTE.value
    elif status is ApprovalStatus.CANCELLED and str(row["note"]).startswith("merged into"):
        return
    else:
        agreed = shadow == Outcome.EXECUTE.value
    _total(cur, "shadow", kind, "true" if agreed else "false", unit)


def _action_events(cur: sqlite3.Cursor, row: sqlite3.Row, signatures: _Signatures) -> int:
    """An automatic execution is proposed and auto-executed; any fix that ran is then
    verified or failed verification (the executor's check on the host)."""
    cur.execute("UPDATE actions SET learned = ? WHERE id = ?", (DONE, row["id"]))
    action = parse_action(row["action"])
    if not learns_from(action):
        return 0
    key = (*signatures.of(row["incident_id"], action), action.kind, action.target)
    at = float(row["finished_at"] or row["started_at"])
    outcomes: list[LearnOutcome] = []
    if row["approval_id"] is None:
        outcomes += [LearnOutcome.PROPOSED, LearnOutcome.AUTO_EXECUTED]
    match row["status"]:
        case "succeeded":
            outcomes.append(LearnOutcome.VERIFIED)
        case "failed":
            outcomes.append(LearnOutcome.FAILED_VERIFICATION)
    for outcome in outcomes:
        _bump(cur, key, outcome, at=at, unit=_unit(action))
    return len(outcomes)


def _unit(action: object) -> str:
    return str(getattr(action, "unit", "") or "")


def _bump(
    cur: sqlite3.Cursor,
    key: Key,
    outcome: LearnOutcome,
    *,
    at: float,
    unit: str,
    reason: str | None = None,
) -> None:
    """One event: the record's count, the metric's total and, for what suppression reads,
    the dated event."""
    column = outcome.value  # a LearnOutcome: one of the fixed column names, never input
    cur.execute(
        "INSERT INTO fix_outcomes(problem, subject, kind, target, first_seen, last_seen)"
        " VALUES (?,?,?,?,?,?) ON CONFLICT DO UPDATE SET"
        " last_seen = MAX(last_seen, excluded.last_seen)",
        (*key, at, at),
    )
    cur.execute(
        f"UPDATE fix_outcomes SET {column} = {column} + 1"  # noqa: S608
        " WHERE problem = ? AND subject = ? AND kind = ? AND target = ?",
        key,
    )
    if reason is not None:
        old = cur.execute(
            "SELECT reasons FROM fix_outcomes WHERE problem = ? AND subject = ? AND kind = ?"
            " AND target = ?",
            key,
        ).fetchone()
        kept = [*json.loads(old["reasons"]), reason[:300]][-REASONS_KEPT:]
        cur.execute(
            "UPDATE fix_outcomes SET reasons = ? WHERE problem = ? AND subject = ? AND kind = ?"
            " AND target = ?",
            (json.dumps(kept), *key),
        )
    if outcome in (LearnOutcome.REJECTED, LearnOutcome.FAILED_VERIFICATION):
        cur.execute(
            "INSERT INTO learn_events(problem, subject, kind, target, outcome, at)"
            " VALUES (?,?,?,?,?,?)",
            (*key, outcome.value, at),
        )
    _total(cur, "outcome", key[2], outcome.value, unit)


def _total(cur: sqlite3.Cursor, metric: str, kind: str, label: str, unit: str) -> None:
    cur.execute(
        "INSERT INTO learn_totals(metric, kind, label, unit, value) VALUES (?,?,?,?,1)"
        " ON CONFLICT DO UPDATE SET value = value + 1",
        (metric, kind, label, unit),
    )


class _Signatures:
    """The problem signature of each incident's proposals, read once per sync. An
    incident retention already removed is `manual` on the action's target."""

    def __init__(self, cur: sqlite3.Cursor) -> None:
        self.cur = cur
        self.incidents: dict[str, Incident] = {}

    def of(self, incident_id: str, action: object) -> tuple[str, str]:
        incident = self.incidents.get(incident_id)
        if incident is None:
            incident = self._load(incident_id)
            self.incidents[incident_id] = incident
        signature = signature_of(incident, action)  # type: ignore[arg-type]
        return signature.problem, signature.subject

    def _load(self, incident_id: str) -> Incident:
        row = self.cur.execute(
            "SELECT source, findings FROM incidents WHERE id = ?", (incident_id,)
        ).fetchone()
        if row is None:
            return Incident(id=incident_id[:100] or "-", source="manual")
        alerts = [
            Alert.model_validate_json(r["alert"])
            for r in self.cur.execute(
                "SELECT alert FROM incident_alerts WHERE incident_id = ? ORDER BY fingerprint",
                (incident_id,),
            )
        ]
        return Incident(
            id=incident_id,
            source=row["source"],
            alerts=[a for a in alerts if a.firing] or alerts,
            findings=[Finding.model_validate(f) for f in json.loads(row["findings"])],
        )


# ---------------------------------------------------------------- retention


def prune(cur: sqlite3.Cursor, now: float) -> int:
    """Keep the learning tables bounded: records unseen for a year and beyond the row
    cap go (least recently seen first), and so do dated events beyond a year or the
    cap. The totals stay: the metrics they back are counters."""
    cur.execute("DELETE FROM fix_outcomes WHERE last_seen < ?", (now - OUTCOMES_RETENTION,))
    gone = cur.rowcount
    cur.execute(
        "DELETE FROM fix_outcomes WHERE (problem, subject, kind, target) IN"
        " (SELECT problem, subject, kind, target FROM fix_outcomes"
        " ORDER BY last_seen DESC LIMIT -1 OFFSET ?)",
        (OUTCOMES_MAX_ROWS,),
    )
    gone += cur.rowcount
    cur.execute("DELETE FROM learn_events WHERE at < ?", (now - OUTCOMES_RETENTION,))
    cur.execute(
        "DELETE FROM learn_events WHERE rowid IN (SELECT rowid FROM learn_events"
        " ORDER BY at DESC LIMIT -1 OFFSET ?)",
        (EVENTS_MAX_ROWS,),
    )
    return gone


def _record(row: sqlite3.Row) -> FixRecord:
    counts = {name: int(row[name]) for name in _COUNTS}
    return FixRecord(
        signature=Signature(problem=row["problem"], subject=row["subject"]),
        fix=FixKey(kind=row["kind"], target=row["target"]),
        rejection_reasons=tuple(json.loads(row["reasons"])),
        first_seen=ts(row["first_seen"]),
        last_seen=ts(row["last_seen"]),
        **counts,
    )
