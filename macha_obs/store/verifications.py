"""The breaker's persisted state: verification results and whether it is open.

Invariant 7: an open breaker stays open across restarts until a human resets it. The
rule (how many failures in what window open it) is verify.py's `breaker_rule`; this is
its memory.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from macha_obs.store._db import Database, Part, ts
from macha_obs.store.audit import Audit

DDL = """
CREATE TABLE IF NOT EXISTS verifications (
    at REAL NOT NULL,
    action_id INTEGER,
    ok INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS breaker (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    opened_at REAL,
    reason TEXT NOT NULL DEFAULT '',
    reset_at REAL NOT NULL DEFAULT 0,
    reset_by TEXT NOT NULL DEFAULT ''
);
"""


class Verifications(Part):
    """The verifications and breaker tables' queries."""

    def __init__(self, db: Database, audit: Audit) -> None:
        super().__init__(db)
        self.log = audit

    def record_verification(self, action_id: int | None, ok: bool) -> None:
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO verifications(at, action_id, ok) VALUES (?,?,?)",
                (self.clock(), action_id, int(ok)),
            )

    def failed_verifications(self) -> list[datetime]:
        """Failures since the last human reset."""
        rows = self._query(
            "SELECT at FROM verifications WHERE ok = 0 AND at > "
            "COALESCE((SELECT reset_at FROM breaker WHERE id = 1), 0) ORDER BY at"
        )
        return [ts(r["at"]) for r in rows]  # type: ignore[misc]

    def breaker_opened(self) -> tuple[datetime | None, str]:
        rows = self._query("SELECT opened_at, reason FROM breaker WHERE id = 1")
        if not rows or rows[0]["opened_at"] is None:
            return None, ""
        return ts(rows[0]["opened_at"]), str(rows[0]["reason"])

    def open_breaker(self, reason: str) -> None:
        """Persist an open breaker: it stays open across restarts until reset (invariant 7)."""
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO breaker(id, opened_at, reason) VALUES (1, ?, ?) ON CONFLICT(id)"
                " DO UPDATE SET opened_at = COALESCE(opened_at, excluded.opened_at),"
                " reason = CASE WHEN opened_at IS NULL THEN excluded.reason ELSE reason END",
                (self.clock(), reason),
            )

    def reset_breaker(self, by: str) -> None:
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO breaker(id, opened_at, reason, reset_at, reset_by)"
                " VALUES (1, NULL, '', ?, ?) ON CONFLICT(id) DO UPDATE SET opened_at = NULL,"
                " reason = '', reset_at = excluded.reset_at, reset_by = excluded.reset_by",
                (self.clock(), by),
            )
        self.log.audit_action({"event": "breaker_reset", "by": by})


def prune_verifications(cur: sqlite3.Cursor, older_than: float) -> int:
    """Forget verifications older than any breaker window could count."""
    cur.execute("DELETE FROM verifications WHERE at < ?", (older_than,))
    return cur.rowcount
