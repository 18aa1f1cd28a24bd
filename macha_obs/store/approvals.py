"""The approval queue: what waits for a human, one item per action.

Each change to the table (whoever's SQL makes it: this module, the ledger claiming or
settling an item, the incident store queueing an analysis' proposals) is noted by a
trigger, and after the commit `approval_queue.json` is rewritten from the table
(`queue_view.py`): a read-only view, the database is the truth.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping
from typing import Any

from macha_obs.errors import MachaError
from macha_obs.models import Action, Approval, ApprovalStatus, Risk, action_json, parse_action
from macha_obs.store import queue_view
from macha_obs.store._db import Database, Part, ts
from macha_obs.store.audit import Audit

log = logging.getLogger(__name__)

DDL = """
CREATE TABLE IF NOT EXISTS approvals (
    id INTEGER PRIMARY KEY,          -- from 0, so `macha-approve approve 0` works
    incident_id TEXT NOT NULL,
    action TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    risk TEXT NOT NULL,
    reason TEXT NOT NULL,
    evidence TEXT NOT NULL DEFAULT '[]',
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    decided_at REAL,
    decided_by TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT '',
    action_id INTEGER,
    incident_ids TEXT NOT NULL DEFAULT '[]'   -- every incident whose evidence it carries
);
"""

# Added after the first release: (column, DDL) applied to older databases on open.
_MIGRATIONS = (
    (
        "approvals",
        "incident_ids",
        "ALTER TABLE approvals ADD COLUMN incident_ids TEXT NOT NULL DEFAULT '[]'",
    ),
)
# One pending item per action, whichever incident proposed it: a later alert, event or
# cycle about the same action attaches its evidence to the item a person is reading, so
# its id never changes while the problem persists. Older databases kept one per
# (incident, action); `_migrate` folds those duplicates into the oldest item first.
_PENDING_ONCE = """
DROP INDEX IF EXISTS approvals_pending_once;
CREATE UNIQUE INDEX IF NOT EXISTS approvals_pending_action
    ON approvals(action) WHERE status = 'pending';
"""
EVIDENCE_KEPT = 10
# What a person can still decide: a pending item, or one whose action was interrupted
# (recorded, never re-run by itself: a person approves it again or rejects it).
DECIDABLE = frozenset({ApprovalStatus.PENDING, ApprovalStatus.INTERRUPTED})


class ApprovalError(MachaError):
    """An approval cannot be acted on; the message says why."""


class Approvals(Part):
    """The approvals table's queries, on the store's connection."""

    def __init__(self, db: Database, audit: Audit) -> None:
        super().__init__(db)
        self.log = audit
        db.on_commit.append(self._after_commit)

    def migrate(self) -> None:
        with self._tx() as cur:
            for table, column, ddl in _MIGRATIONS:
                have = {r["name"] for r in cur.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    cur.execute(ddl)
            cur.execute(
                "UPDATE approvals SET incident_ids = json_array(incident_id)"
                " WHERE incident_ids = '[]'"
            )
            dupes = cur.execute(
                "SELECT a.id, MIN(b.id) AS keep FROM approvals a JOIN approvals b"
                " ON a.action = b.action AND b.status = 'pending' AND b.id < a.id"
                " WHERE a.status = 'pending' GROUP BY a.id"
            ).fetchall()
            cur.executemany(
                "UPDATE approvals SET status = ?, note = ? WHERE id = ?",
                [
                    (ApprovalStatus.CANCELLED.value, f"merged into approval {r['keep']}", r["id"])
                    for r in dupes
                ],
            )
        self.db.script(_PENDING_ONCE)

    def _after_commit(self, changed: set[str]) -> None:
        if "approvals" in changed:
            self.refresh_queue_view()

    def refresh_queue_view(self) -> None:
        """Rewrite approval_queue.json from the table. The view failing to be written
        never fails the change it follows: the database already holds it."""
        try:
            queue_view.write(self.paths, lambda: self.list_approvals({ApprovalStatus.PENDING}))
        except Exception as exc:  # a view: never worth failing a decision
            log.warning("cannot rewrite %s: %s", self.paths.approval_queue, exc)

    def enqueue(
        self,
        incident_id: str,
        action: Action,
        *,
        risk: Risk,
        reason: str,
        evidence: list[str] | None = None,
        ttl: float,
    ) -> Approval:
        """Queue `action` for a human. When the same action is already pending (from this
        incident or another) that item is returned, with this incident and its evidence
        attached: the id a person is reading never changes while the problem persists."""
        with self._tx() as cur:
            approval_id = self.enqueue_in(
                cur, incident_id, action, risk=risk, reason=reason, evidence=evidence, ttl=ttl
            )
        return self._must_get_approval(approval_id)

    def enqueue_in(
        self,
        cur: sqlite3.Cursor,
        incident_id: str,
        action: Action,
        *,
        risk: Risk,
        reason: str,
        evidence: list[str] | None = None,
        ttl: float,
    ) -> int:
        """`enqueue` inside the caller's transaction (the incident store marks an
        incident analysed in the same one); the item's id."""
        now = self.clock()
        encoded = action_json(action)
        evidence = list(evidence or [])
        row = cur.execute(
            "SELECT id, evidence, incident_ids FROM approvals WHERE action = ? AND status = ?",
            (encoded, ApprovalStatus.PENDING.value),
        ).fetchone()
        if row is None:
            next_id = int(
                cur.execute("SELECT COALESCE(MAX(id) + 1, 0) FROM approvals").fetchone()[0]
            )
            cur.execute(
                "INSERT INTO approvals(id, incident_id, action, kind, target, risk, reason,"
                " evidence, status, created_at, expires_at, incident_ids)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    next_id,
                    incident_id,
                    encoded,
                    action.kind,
                    action.target,
                    risk.value,
                    reason,
                    json.dumps(evidence[:EVIDENCE_KEPT]),
                    ApprovalStatus.PENDING.value,
                    now,
                    now + ttl,
                    json.dumps([incident_id]),
                ),
            )
            return next_id
        kept = json.loads(row["evidence"])
        merged = list(dict.fromkeys([*kept, *evidence]))
        # the first lines (why it was queued) stay; the newest fill the rest
        merged = merged[:1] + merged[1:][-(EVIDENCE_KEPT - 1) :]
        ids = list(dict.fromkeys([*(json.loads(row["incident_ids"]) or []), incident_id]))
        cur.execute(
            "UPDATE approvals SET evidence = ?, incident_ids = ? WHERE id = ?",
            (json.dumps(merged), json.dumps(ids), row["id"]),
        )
        return int(row["id"])

    def cancel_approval(
        self, approval_id: int, reason: str, record: Mapping[str, Any] | None = None
    ) -> bool:
        """An item whose problem is confirmed gone is cancelled, with why; `record` is
        its audit line, written in the same step (audit.py)."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE approvals SET status = ?, decided_at = ?, note = ? WHERE id = ?"
                " AND status IN ('pending', 'interrupted')",
                (ApprovalStatus.CANCELLED.value, self.clock(), reason, approval_id),
            )
            done = cur.rowcount > 0
            if done and record is not None:
                self.log.audit_in(self.log.decisions_log, record)
            return done

    def get_approval(self, approval_id: int) -> Approval | None:
        rows = self._query("SELECT * FROM approvals WHERE id = ?", (approval_id,))
        return self._approval(rows[0]) if rows else None

    def _must_get_approval(self, approval_id: int) -> Approval:
        approval = self.get_approval(approval_id)
        if approval is None:
            raise ApprovalError(f"no approval with id {approval_id}")
        return approval

    def list_approvals(self, statuses: set[ApprovalStatus] | None = None) -> list[Approval]:
        rows = self._query("SELECT * FROM approvals ORDER BY id")
        out = [self._approval(r) for r in rows]
        return [a for a in out if statuses is None or a.status in statuses]

    def pending_count(self) -> int:
        rows = self._query(
            "SELECT COUNT(*) AS n FROM approvals WHERE status = ?", (ApprovalStatus.PENDING.value,)
        )
        return int(rows[0]["n"])

    def pending_approval(self, approval_id: int) -> Approval:
        """The item, if a person can still decide it: pending (one past its TTL expires
        here), or interrupted (its action was cut short; a person decides again). Else
        raise."""
        now = self.clock()
        with self._tx() as cur:
            row = cur.execute(
                "SELECT status, expires_at FROM approvals WHERE id = ?", (approval_id,)
            ).fetchone()
            if row is None:
                raise ApprovalError(f"no approval with id {approval_id}")
            status = ApprovalStatus(row["status"])
            if status is ApprovalStatus.PENDING and row["expires_at"] <= now:
                cur.execute(
                    "UPDATE approvals SET status = ?, decided_at = ?, note = ? WHERE id = ?",
                    (ApprovalStatus.EXPIRED.value, now, "expired before approval", approval_id),
                )
                status = ApprovalStatus.EXPIRED
        # raised after the commit, so an expiry found here is kept
        if status not in DECIDABLE:
            raise ApprovalError(f"approval {approval_id} is {status.value}, not pending")
        return self._must_get_approval(approval_id)

    def decide_approval(
        self,
        approval_id: int,
        status: ApprovalStatus,
        note: str,
        *,
        by: str,
        record: Mapping[str, Any] | None = None,
    ) -> Approval:
        """An item settled without running anything (refused, cancelled, acknowledged,
        rejected), in one step with its audit line `record`: only one caller can decide
        it, and a decision the audit cannot take is not taken (audit.py)."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE approvals SET status = ?, note = ?, decided_at = ?, decided_by = ?"
                " WHERE id = ? AND status IN ('pending', 'interrupted')",
                (status.value, note, self.clock(), by, approval_id),
            )
            won = cur.rowcount > 0
            if won and record is not None:
                self.log.audit_in(self.log.decisions_log, record)
        if not won:
            current = self._must_get_approval(approval_id)
            raise ApprovalError(f"approval {approval_id} is {current.status.value}, not pending")
        return self._must_get_approval(approval_id)

    def settle_approval(
        self,
        approval_id: int,
        status: ApprovalStatus,
        note: str = "",
        *,
        action_id: int | None = None,
        by: str | None = None,
    ) -> Approval:
        """Record what became of an approval (or put a claimed one back to pending)."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE approvals SET status = ?, note = ?, action_id = COALESCE(?, action_id),"
                " decided_at = ?, decided_by = COALESCE(?, decided_by) WHERE id = ?",
                (status.value, note, action_id, self.clock(), by, approval_id),
            )
        return self._must_get_approval(approval_id)

    def reject_approval(self, approval_id: int, by: str, reason: str = "") -> Approval:
        """A person's no, audited in the same step: if the audit line cannot be written
        the item stays as it was (pending or interrupted) and the error is raised."""
        approval = self._must_get_approval(approval_id)
        record = {
            "event": "rejected",
            "incident_id": approval.incident_id,
            "approval_id": approval_id,
            "by": by,
            "reason": reason,
        }
        return self.decide_approval(
            approval_id, ApprovalStatus.REJECTED, reason, by=by, record=record
        )

    def expire_approvals(self) -> list[int]:
        """Pending approvals past their TTL become `expired`; returns their ids."""
        now = self.clock()
        with self._tx() as cur:
            ids = [
                int(r[0])
                for r in cur.execute(
                    "SELECT id FROM approvals WHERE status = ? AND expires_at <= ?",
                    (ApprovalStatus.PENDING.value, now),
                ).fetchall()
            ]
            cur.executemany(
                "UPDATE approvals SET status = ?, decided_at = ?, note = ? WHERE id = ?",
                [(ApprovalStatus.EXPIRED.value, now, "expired (TTL)", i) for i in ids],
            )
        return ids

    @staticmethod
    def _approval(row: sqlite3.Row) -> Approval:
        return Approval(
            id=row["id"],
            incident_id=row["incident_id"],
            action=parse_action(row["action"]),
            risk=Risk(row["risk"]),
            reason=row["reason"],
            evidence=json.loads(row["evidence"]),
            status=ApprovalStatus(row["status"]),
            created_at=ts(row["created_at"]),
            expires_at=ts(row["expires_at"]),
            decided_at=ts(row["decided_at"]),
            decided_by=row["decided_by"],
            note=row["note"],
            action_id=row["action_id"],
            incident_ids=json.loads(row["incident_ids"]) or [row["incident_id"]],
        )
