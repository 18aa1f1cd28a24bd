"""A human's pause: while it holds, nothing executes (DESIGN.md: the human can always step in).

One row in the state database, so the daemon, `macha-obs pause` and `macha-approve` all
see the same pause at once; every change is in the audit log with who and why.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

from macha_obs.policy.judge import Pause
from macha_obs.store import Store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pause (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    since REAL NOT NULL,
    until REAL,                      -- NULL: until `macha-obs resume`
    reason TEXT NOT NULL DEFAULT '',
    by TEXT NOT NULL DEFAULT ''
);
"""


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


class PauseBook:
    """The pause over a `Store`'s database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # a read first: scrapes build one of these, and must not write (read-only dirs)
        if not store.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'pause'"):
            with store.transaction() as cur:
                cur.execute(_SCHEMA)

    def get(self) -> Pause | None:
        """The pause as recorded, whether or not its time has run out (see `expire`)."""
        rows = self.store.query("SELECT since, until, reason, by FROM pause WHERE id = 1")
        return _pause(rows[0]) if rows else None

    def current(self, now: float) -> Pause | None:
        """The pause in force at `now`, or None."""
        pause = self.get()
        if pause is None or not pause.active(datetime.fromtimestamp(now, UTC)):
            return None
        return pause

    def pause(self, *, until: float | None, reason: str, by: str) -> Pause:
        now = self.store.clock()
        with self.store.transaction() as cur:
            cur.execute(
                "INSERT INTO pause(id, since, until, reason, by) VALUES (1, ?, ?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET since = excluded.since, until = excluded.until,"
                " reason = excluded.reason, by = excluded.by",
                (now, until, reason, by),
            )
        pause = Pause(datetime.fromtimestamp(now, UTC), _ts(until), reason, by)
        self.store.audit.audit_action(
            {
                "event": "paused",
                "by": by,
                "reason": reason,
                "until": pause.until.isoformat() if pause.until else None,
            }
        )
        return pause

    def resume(self, *, by: str, why: str = "resumed by a human") -> Pause | None:
        """End the pause (if any); the ended pause, or None when there was none."""
        with self.store.transaction() as cur:
            row = cur.execute("SELECT since, until, reason, by FROM pause WHERE id = 1").fetchone()
            cur.execute("DELETE FROM pause WHERE id = 1")
        if row is None:
            return None
        self.store.audit.audit_action({"event": "resumed", "by": by, "reason": why})
        return _pause(row)

    def expire(self) -> Pause | None:
        """A pause whose time ran out ends (and is audited) here; the ended pause or None."""
        now = self.store.clock()
        with self.store.transaction() as cur:
            row = cur.execute(
                "SELECT since, until, reason, by FROM pause WHERE id = 1"
                " AND until IS NOT NULL AND until <= ?",
                (now,),
            ).fetchone()
            if row is not None:
                cur.execute("DELETE FROM pause WHERE id = 1")
        if row is None:
            return None
        self.store.audit.audit_action(
            {"event": "resumed", "by": "timer", "reason": "the pause's duration ran out"}
        )
        return _pause(row)


def _pause(row: sqlite3.Row) -> Pause:
    since = datetime.fromtimestamp(row["since"], UTC)  # NOT NULL in the schema
    return Pause(since, _ts(row["until"]), row["reason"], row["by"])
