"""The action ledger: an intent before every side effect, its outcome after.

Invariant 6: the intent row is committed (synchronous=FULL) and its audit line fsynced
before anything touches the host; a process that dies between intent and outcome leaves
an intent that the next process to open the store marks `interrupted`, never re-runs.
An approval's claim and its intent are one transaction, and so are an outcome and the
approval it settles.
"""

from __future__ import annotations

import sqlite3

from macha_obs.models import (
    Action,
    ActionRecord,
    ActionStatus,
    ApprovalStatus,
    Execution,
    ExecutionResult,
    action_json,
    parse_action,
)
from macha_obs.store._db import Database, Part, owner_alive, ts
from macha_obs.store.approvals import ApprovalError
from macha_obs.store.audit import Audit

DDL = """
CREATE TABLE IF NOT EXISTS actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id TEXT NOT NULL,
    approval_id INTEGER,
    action TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    owner TEXT NOT NULL,             -- "pid:create_time" of the process that wrote the intent
    result TEXT
);
-- an approval is carried out at most once at a time, whatever races happen above; once
-- an attempt is recorded interrupted, a person may approve it again (a new row)
CREATE UNIQUE INDEX IF NOT EXISTS actions_once_per_live_approval
    ON actions(approval_id) WHERE approval_id IS NOT NULL AND status != 'interrupted';
CREATE INDEX IF NOT EXISTS actions_started ON actions(started_at);
"""

# What an approval becomes when the action carrying it out ends so.
_APPROVAL_AFTER = {
    ActionStatus.SUCCEEDED: ApprovalStatus.EXECUTED,
    ActionStatus.FAILED: ApprovalStatus.FAILED,
    ActionStatus.REFUSED: ApprovalStatus.REFUSED,
    ActionStatus.INTERRUPTED: ApprovalStatus.INTERRUPTED,
    ActionStatus.CHANGED: ApprovalStatus.EXECUTED,
    ActionStatus.INTENT: ApprovalStatus.APPROVED,
}


# the latest attempt at an approval (an interrupted one may be followed by another)
_LATEST = "actions.id = (SELECT MAX(a2.id) FROM actions a2 WHERE a2.approval_id = approvals.id)"


class Ledger(Part):
    """The actions table's queries; an approval it claims or settles changes in the same
    transaction (SQL on the approvals table, whose view the approvals part refreshes)."""

    def __init__(self, db: Database, audit: Audit) -> None:
        super().__init__(db)
        self.log = audit

    def migrate(self) -> None:
        # the older index forbade a second attempt after an interrupted one
        self.db.script("DROP INDEX IF EXISTS actions_once_per_approval")

    def record_intent(
        self,
        incident_id: str,
        action: Action,
        *,
        approval_id: int | None = None,
        by: str | None = None,
    ) -> int:
        """Write the intent row (fsynced) and its audit line before any side effect.

        For an approval, `by` claims it in the same transaction: pending (or
        interrupted) → approved and the intent together, so no instant leaves an item
        claimed with nothing to show for it. A second live intent violates the unique
        index: that is the "approving twice executes once" guarantee, enforced by the
        database. The audit line is written inside the transaction (audit.py).
        """
        now = self.clock()
        try:
            with self._tx() as cur:
                if approval_id is not None and by is not None:
                    cur.execute(
                        "UPDATE approvals SET status = ?, decided_at = ?, decided_by = ?"
                        " WHERE id = ? AND (status = ? AND expires_at > ? OR status = ?)",
                        (
                            ApprovalStatus.APPROVED.value,
                            now,
                            by,
                            approval_id,
                            ApprovalStatus.PENDING.value,
                            now,
                            ApprovalStatus.INTERRUPTED.value,
                        ),
                    )
                    if cur.rowcount == 0:
                        raise ApprovalError(f"approval {approval_id} is no longer pending")
                cur.execute(
                    "INSERT INTO actions(incident_id, approval_id, action, kind, target, status,"
                    " started_at, owner) VALUES (?,?,?,?,?,?,?,?)",
                    (
                        incident_id,
                        approval_id,
                        action_json(action),
                        action.kind,
                        action.target,
                        ActionStatus.INTENT.value,
                        now,
                        self.db.owner,
                    ),
                )
                action_id = int(cur.lastrowid or 0)
                self.log.audit_in(
                    self.log.actions_log,
                    {
                        "event": "intent",
                        "action_id": action_id,
                        "incident_id": incident_id,
                        "approval_id": approval_id,
                        "action": action.model_dump(mode="json"),
                    },
                )
        except sqlite3.IntegrityError as exc:
            raise ApprovalError(f"approval {approval_id} was already carried out") from exc
        return action_id

    def record_outcome(
        self, action_id: int, status: ActionStatus, result: ExecutionResult | None
    ) -> None:
        encoded = result.model_dump_json() if result is not None else None
        with self._tx() as cur:
            row = cur.execute(
                "SELECT incident_id, approval_id FROM actions WHERE id = ?", (action_id,)
            ).fetchone()
            cur.execute(
                "UPDATE actions SET status = ?, finished_at = ?, result = ? WHERE id = ?",
                (status.value, self.clock(), encoded, action_id),
            )
            if row is not None and row["approval_id"] is not None:
                # the approval it carries out is settled with it, in the same transaction
                cur.execute(
                    "UPDATE approvals SET status = ?, note = ?, action_id = ? WHERE id = ?",
                    (
                        _APPROVAL_AFTER[status].value,
                        result.detail if result is not None else "",
                        action_id,
                        row["approval_id"],
                    ),
                )
            self.log.audit_in(
                self.log.actions_log,
                {
                    "event": "outcome",
                    "action_id": action_id,
                    "incident_id": row["incident_id"] if row else None,
                    "approval_id": row["approval_id"] if row else None,
                    "status": status.value,
                    "result": result.model_dump(mode="json") if result else None,
                },
            )

    def recover_interrupted(self) -> list[ActionRecord]:
        """Intent rows whose writer is gone become `interrupted` (invariant 6).

        Nothing is re-run: the record and its approval say what happened, and a person
        (the approval stays decidable) or the next cycle decides again from the host's
        current state. Cheap enough for every cycle and every `macha-approve`: a process
        that died mid-approval strands nothing until the next restart.
        """
        with self._tx() as cur:
            rows = cur.execute(
                "SELECT * FROM actions WHERE status = ?", (ActionStatus.INTENT.value,)
            ).fetchall()
            dead = [r for r in rows if not owner_alive(r["owner"])]
            why = "the process carrying it out died; not re-run"
            records = self._interrupt_in(cur, dead, why, event="interrupted")
            # An item claimed by an older release that died before writing its intent
            # (claim and intent are one transaction now): back in the queue.
            cur.execute(
                "UPDATE approvals SET status = ?, note = ? WHERE status = ? AND NOT EXISTS"
                " (SELECT 1 FROM actions WHERE actions.approval_id = approvals.id)",
                (
                    ApprovalStatus.PENDING.value,
                    "claimed by a process that died before acting; back in the queue",
                    ApprovalStatus.APPROVED.value,
                ),
            )
            # ... or one whose latest attempt ended before its approval was settled
            for after_action, after_approval in _APPROVAL_AFTER.items():
                if after_action is ActionStatus.INTENT:
                    continue
                cur.execute(
                    # the latest attempt (an interrupted one may be followed by another)
                    "UPDATE approvals SET status = ? WHERE status = ? AND EXISTS (SELECT 1"
                    " FROM actions WHERE actions.id = (SELECT MAX(a2.id) FROM actions a2"
                    " WHERE a2.approval_id = approvals.id) AND actions.status = ?)",
                    (after_approval.value, ApprovalStatus.APPROVED.value, after_action.value),
                )
        return records

    def interrupt_own(self, approval_id: int | None, action: Action, reason: str) -> list[int]:
        """This process's open intent for `approval_id` (or, without one, for `action`)
        becomes `interrupted`, with its approval: Ctrl-C or SIGTERM landed anywhere
        between the intent's commit and the outcome. The ids."""
        with self._tx() as cur:
            if approval_id is not None:
                rows = cur.execute(
                    "SELECT * FROM actions WHERE status = ? AND owner = ? AND approval_id = ?",
                    (ActionStatus.INTENT.value, self.db.owner, approval_id),
                ).fetchall()
            else:
                rows = cur.execute(
                    "SELECT * FROM actions WHERE status = ? AND owner = ? AND action = ?"
                    " AND approval_id IS NULL",
                    (ActionStatus.INTENT.value, self.db.owner, action_json(action)),
                ).fetchall()
            records = self._interrupt_in(cur, rows, reason, event="interrupted")
        return [r.id for r in records]

    def _interrupt_in(
        self, cur: sqlite3.Cursor, rows: list[sqlite3.Row], why: str, *, event: str
    ) -> list[ActionRecord]:
        """Mark these intent rows interrupted, and their approvals, audited in the
        transaction (audit.py)."""
        now = self.clock()
        records: list[ActionRecord] = []
        for row in rows:
            cur.execute(
                "UPDATE actions SET status = ?, finished_at = ? WHERE id = ?",
                (ActionStatus.INTERRUPTED.value, now, row["id"]),
            )
            if row["approval_id"] is not None:
                cur.execute(
                    "UPDATE approvals SET status = ?, note = ?, action_id = ? WHERE id = ?",
                    (
                        ApprovalStatus.INTERRUPTED.value,
                        f"{why}; approve again or reject it",
                        row["id"],
                        row["approval_id"],
                    ),
                )
            record = self._action(row).model_copy(
                update={"status": ActionStatus.INTERRUPTED, "finished_at": ts(now)}
            )
            records.append(record)
            self.log.audit_in(
                self.log.actions_log,
                {
                    "event": event,
                    "action_id": record.id,
                    "incident_id": record.incident_id,
                    "approval_id": record.approval_id,
                    "action": record.action.model_dump(mode="json"),
                    "reason": why,
                },
            )
        return records

    def get_action(self, action_id: int) -> ActionRecord | None:
        rows = self._query("SELECT * FROM actions WHERE id = ?", (action_id,))
        return self._action(rows[0]) if rows else None

    def list_actions(self, limit: int = 100) -> list[ActionRecord]:
        rows = self._query("SELECT * FROM actions ORDER BY id DESC LIMIT ?", (limit,))
        return [self._action(r) for r in rows]

    def recent_executions(self, since: float) -> tuple[Execution, ...]:
        """Everything that started a side effect since `since`, for the rate limiter."""
        rows = self._query(
            "SELECT kind, target, started_at FROM actions WHERE started_at > ?"
            " AND status != ? AND kind != 'investigate'",
            (since, ActionStatus.REFUSED.value),
        )
        return tuple(
            Execution(r["kind"], r["target"], ts(r["started_at"]))  # type: ignore[arg-type]
            for r in rows
        )

    @staticmethod
    def _action(row: sqlite3.Row) -> ActionRecord:
        return ActionRecord(
            id=row["id"],
            incident_id=row["incident_id"],
            approval_id=row["approval_id"],
            action=parse_action(row["action"]),
            status=ActionStatus(row["status"]),
            started_at=ts(row["started_at"]),
            finished_at=ts(row["finished_at"]),
            result=ExecutionResult.model_validate_json(row["result"]) if row["result"] else None,
        )
