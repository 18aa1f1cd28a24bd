"""Counting what became of every proposal: the derivation behind store/outcomes.py.

`sync` counts each queue and ledger event not yet counted and marks its row, in the
caller's transaction, so a crash leaves both or neither. What an event *means* (which
outcomes a settled item or a finished action stands for, whether a person agreed with
auto-safe) is the pure rules of models/learning.py; this module only reads and writes
the tables. `prune` keeps them bounded.
"""

from __future__ import annotations

import json
import sqlite3

from macha_obs.models import (
    REASONS_KEPT,
    SETTLED,
    Alert,
    ApprovalStatus,
    Finding,
    Incident,
    LearnOutcome,
    decision_outcomes,
    execution_outcomes,
    learns_from,
    parse_action,
    shadow_agrees,
    signature_of,
)

# `learned` bits on an approvals row; an actions row is 0 (not yet) or DONE.
PROPOSED_COUNTED = 1
DECISION_COUNTED = 2
DONE = PROPOSED_COUNTED | DECISION_COUNTED

# Bounds: records not seen for a year go, and at most this many stay (least recently
# seen first); dated events older than the longest suppress_window cannot matter.
OUTCOMES_RETENTION = 366 * 86400.0
OUTCOMES_MAX_ROWS = 5000
EVENTS_MAX_ROWS = 20_000

_SETTLED_SQL = ",".join(f"'{status.value}'" for status in sorted(SETTLED))
# rows with an event not yet counted: new items, items settled since, finished actions
UNCOUNTED_APPROVALS = (
    f"SELECT * FROM approvals WHERE learned = 0 OR (learned < {DONE}"  # noqa: S608
    f" AND status IN ({_SETTLED_SQL})) ORDER BY id"
)
UNCOUNTED_ACTIONS = "SELECT * FROM actions WHERE learned = 0 AND status != 'intent' ORDER BY id"
UNCOUNTED = (
    f"SELECT EXISTS({UNCOUNTED_APPROVALS.replace(' ORDER BY id', '')})"
    f" OR EXISTS({UNCOUNTED_ACTIONS.replace(' ORDER BY id', '')}) AS any"
)

Key = tuple[str, str, str, str]  # problem, subject, kind, target


def sync(cur: sqlite3.Cursor) -> int:
    """Count every uncounted event of the queue and the ledger, and mark it counted, in
    the caller's transaction. Idempotent: a second run counts nothing."""
    signatures = _Signatures(cur)
    counted = 0
    for row in cur.execute(UNCOUNTED_APPROVALS).fetchall():
        counted += _approval_events(cur, row, signatures)
    for row in cur.execute(UNCOUNTED_ACTIONS).fetchall():
        counted += _action_events(cur, row, signatures)
    return counted


def _approval_events(cur: sqlite3.Cursor, row: sqlite3.Row, signatures: _Signatures) -> int:
    """The events of one queue item not yet counted: proposed, then what a person (or
    the TTL, or the host) decided."""
    learned = int(row["learned"])
    status = ApprovalStatus(row["status"])
    action = parse_action(row["action"])
    final = status in SETTLED
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
        decided = decision_outcomes(status, by_person=bool(row["decided_by"]), merged=_merged(row))
        outcomes.extend((o, decided_at) for o in decided)
        _score(cur, row, action.kind, status, unit=_unit(action))
    for outcome, at in outcomes:
        reason = str(row["note"]) if outcome is LearnOutcome.REJECTED else None
        _bump(cur, key, outcome, at=at, unit=_unit(action), reason=reason)
    return len(outcomes)


def count_late_failure(cur: sqlite3.Cursor, action_id: int, at: float) -> None:
    """A fix counted verified whose alert did not resolve in time: a failed
    verification for the breaker and the learning record, in the caller's transaction."""
    cur.execute("INSERT INTO verifications(at, action_id, ok) VALUES (?,?,0)", (at, action_id))
    row = cur.execute("SELECT * FROM actions WHERE id = ?", (action_id,)).fetchone()
    if row is None:
        return
    action = parse_action(row["action"])
    if learns_from(action):
        key = (*_Signatures(cur).of(row["incident_id"], action), action.kind, action.target)
        _bump(cur, key, LearnOutcome.FAILED_VERIFICATION, at=at, unit=_unit(action))


def _score(
    cur: sqlite3.Cursor, row: sqlite3.Row, kind: str, status: ApprovalStatus, *, unit: str
) -> None:
    """Shadow scoring of a person's decision against what auto-safe would have done."""
    agreed = shadow_agrees(
        row["shadow"], status, by_person=bool(row["decided_by"]), merged=_merged(row)
    )
    if agreed is not None:
        _total(cur, "shadow", kind, "true" if agreed else "false", unit)


def _merged(row: sqlite3.Row) -> bool:
    return str(row["note"]).startswith("merged into")


def _action_events(cur: sqlite3.Cursor, row: sqlite3.Row, signatures: _Signatures) -> int:
    """An automatic execution is proposed and auto-executed; any fix that ran is then
    verified or failed verification (the executor's check on the host)."""
    cur.execute("UPDATE actions SET learned = ? WHERE id = ?", (DONE, row["id"]))
    action = parse_action(row["action"])
    if not learns_from(action):
        return 0
    key = (*signatures.of(row["incident_id"], action), action.kind, action.target)
    at = float(row["finished_at"] or row["started_at"])
    outcomes = execution_outcomes(automatic=row["approval_id"] is None, status=row["status"])
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
