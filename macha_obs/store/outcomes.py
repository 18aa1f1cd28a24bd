"""What became of every proposal, per problem signature and fix (models/learning.py).

Derived from the approvals queue and the action ledger, idempotently: each approvals
and actions row carries a `learned` mark (outcomes_sync.py) saying which of its events
are already counted, and `learn_sync` counts the rest and sets the marks in ONE
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
    FixKey,
    FixRecord,
    LearnOutcome,
    Outcome,
    Signature,
    Suppression,
    suppression_of,
)
from macha_obs.store._db import Database, Part, ts
from macha_obs.store.audit import Audit
from macha_obs.store.outcomes_sync import UNCOUNTED, Key, count_late_failure, sync

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

_COUNTS = tuple(o.value for o in LearnOutcome)


class SuppressSettings(Protocol):
    """What suppression reads from the config (config.Config has these)."""

    @property
    def suppress_after_rejections(self) -> int: ...
    @property
    def suppress_after_failures(self) -> int: ...
    @property
    def suppress_window(self) -> float: ...


class Outcomes(Part):
    """The learning tables' queries, on the store's connection."""

    def __init__(self, db: Database, audit: Audit) -> None:
        super().__init__(db)
        self.log = audit

    def migrate(self) -> None:
        with self._tx() as cur:
            for table, column, ddl in _COLUMNS:
                have = {r["name"] for r in cur.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    cur.execute(ddl)
        self.db.script(_INDEXES)

    # ------------------------------------------------------------ deriving

    def learn_sync(self) -> int:
        """Count what happened since the last sync; how many events were counted. A
        read finds out first whether there is anything to count (no write otherwise)."""
        if not self._query(UNCOUNTED)[0]["any"]:
            return 0
        with self._tx() as cur:
            return sync(cur)

    def record_late_failure(self, action_id: int) -> None:
        """An alert-driven fix the host took (counted verified) whose alert did not
        resolve in time: the failed verification (breaker) and the learning record's
        failed_verification, in one transaction."""
        with self._tx() as cur:
            count_late_failure(cur, action_id, self.clock())

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
        self.log.audit_decision(
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
