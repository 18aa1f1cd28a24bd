"""The intake tables' bounds: caps held at every delivery, and retention by age.

A storm of distinct alerts must not grow the state dir (issue 20: 401 deliveries of
~1 MiB made 2.35 GB). Four caps hold inside the delivery's own transaction, so nothing is
over them between retention passes:

- webhook bodies (`inbox`): the newest `inbox_max_rows`, and at most `inbox_max_bytes`;
- seen-alert keys (`alerts_seen`): the newest `inbox_max_rows`;
- alerts of one incident: `incident_max_alerts`, and of all incidents together at most
  `incident_alerts_max_bytes`;
- open incidents: `incident_max_open`.

Past a cap the oldest evidence goes first: resolved alerts before firing ones, alerts of
resolved incidents before those of open ones, the least recently changed open incident
(one no pending or approved item names) before the others. A dropped open incident is
closed and its alerts deleted. An item queued on evidence that was dropped is refused at
execution by the scope lock (fail closed); the drops are counted by `what`.

Row and byte counts are kept in `intake_totals` by triggers, so a check costs one read
however large the tables are. The tables themselves are `store/incidents.py`'s.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from typing import Protocol

from macha_obs.store.incidents import OPEN, RESOLVED

# what a cap dropped: a fixed set (the label of macha_intake_dropped_total)
DROPPED = ("body", "seen_key", "alert", "incident")
_BATCH = 256  # rows deleted per statement while over a byte cap

DDL = """
-- rows and bytes of the intake tables, kept by the triggers below (see intake_bounds.py)
CREATE TABLE IF NOT EXISTS intake_totals (
    what TEXT PRIMARY KEY,
    rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO intake_totals
    SELECT 'inbox', COUNT(*), COALESCE(SUM(length(CAST(body AS BLOB))), 0) FROM inbox
    WHERE NOT EXISTS (SELECT 1 FROM intake_totals WHERE what = 'inbox');
INSERT OR IGNORE INTO intake_totals
    SELECT 'alerts', COUNT(*), COALESCE(SUM(length(CAST(alert AS BLOB))), 0)
    FROM incident_alerts WHERE NOT EXISTS (SELECT 1 FROM intake_totals WHERE what = 'alerts');
INSERT OR IGNORE INTO intake_totals
    SELECT 'seen', COUNT(*), 0 FROM alerts_seen
    WHERE NOT EXISTS (SELECT 1 FROM intake_totals WHERE what = 'seen');
CREATE TRIGGER IF NOT EXISTS inbox_total_in AFTER INSERT ON inbox BEGIN
    UPDATE intake_totals SET rows = rows + 1, bytes = bytes + length(CAST(NEW.body AS BLOB))
    WHERE what = 'inbox';
END;
CREATE TRIGGER IF NOT EXISTS inbox_total_out AFTER DELETE ON inbox BEGIN
    UPDATE intake_totals SET rows = rows - 1, bytes = bytes - length(CAST(OLD.body AS BLOB))
    WHERE what = 'inbox';
END;
CREATE TRIGGER IF NOT EXISTS alerts_total_in AFTER INSERT ON incident_alerts BEGIN
    UPDATE intake_totals SET rows = rows + 1, bytes = bytes + length(CAST(NEW.alert AS BLOB))
    WHERE what = 'alerts';
END;
CREATE TRIGGER IF NOT EXISTS alerts_total_change AFTER UPDATE OF alert ON incident_alerts BEGIN
    UPDATE intake_totals SET bytes = bytes + length(CAST(NEW.alert AS BLOB))
        - length(CAST(OLD.alert AS BLOB)) WHERE what = 'alerts';
END;
CREATE TRIGGER IF NOT EXISTS alerts_total_out AFTER DELETE ON incident_alerts BEGIN
    UPDATE intake_totals SET rows = rows - 1, bytes = bytes - length(CAST(OLD.alert AS BLOB))
    WHERE what = 'alerts';
END;
CREATE TRIGGER IF NOT EXISTS seen_total_in AFTER INSERT ON alerts_seen BEGIN
    UPDATE intake_totals SET rows = rows + 1 WHERE what = 'seen';
END;
CREATE TRIGGER IF NOT EXISTS seen_total_out AFTER DELETE ON alerts_seen BEGIN
    UPDATE intake_totals SET rows = rows - 1 WHERE what = 'seen';
END;
-- the oldest first, for the caps
CREATE INDEX IF NOT EXISTS incidents_age ON incidents(status, updated_at);
CREATE INDEX IF NOT EXISTS incident_alerts_age ON incident_alerts(updated_at);
"""


class IntakeCaps(Protocol):
    """The caps, as `Config` (and `statedir.retention.Retention`) carry them."""

    @property
    def inbox_max_rows(self) -> int: ...
    @property
    def inbox_max_bytes(self) -> int: ...
    @property
    def incident_max_open(self) -> int: ...
    @property
    def incident_max_alerts(self) -> int: ...
    @property
    def incident_alerts_max_bytes(self) -> int: ...


class Drops:
    """What the caps dropped since start, by `what` (every value of DROPPED present)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter(dict.fromkeys(DROPPED, 0))

    def add(self, dropped: Counter[str]) -> None:
        with self._lock:
            self._counts.update(dropped)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def totals(cur: sqlite3.Cursor) -> dict[str, tuple[int, int]]:
    """{"inbox" | "alerts" | "seen": (rows, bytes)}."""
    return {
        str(r["what"]): (int(r["rows"]), int(r["bytes"]))
        for r in cur.execute("SELECT what, rows, bytes FROM intake_totals")
    }


def hold_caps(
    cur: sqlite3.Cursor, caps: IntakeCaps, incident_id: str | None = None
) -> Counter[str]:
    """Bring every intake table back under its cap, the oldest evidence first; what went.
    `incident_id` is the incident a delivery just changed: its own alerts are capped, and
    it is the last open incident to be dropped."""
    dropped: Counter[str] = Counter()
    have = totals(cur)
    if have["inbox"][0] > caps.inbox_max_rows:
        cur.execute(
            "DELETE FROM inbox WHERE id IN (SELECT id FROM inbox ORDER BY id LIMIT ?)",
            (have["inbox"][0] - caps.inbox_max_rows,),
        )
        dropped["body"] += cur.rowcount
    while totals(cur)["inbox"][1] > caps.inbox_max_bytes:
        cur.execute(
            "DELETE FROM inbox WHERE id IN (SELECT id FROM inbox ORDER BY id LIMIT 1)",
        )
        if not cur.rowcount:
            break
        dropped["body"] += cur.rowcount
    if have["seen"][0] > caps.inbox_max_rows:
        cur.execute(
            "DELETE FROM alerts_seen WHERE (fingerprint, starts_at, status) IN (SELECT"
            " fingerprint, starts_at, status FROM alerts_seen ORDER BY seen_at LIMIT ?)",
            (have["seen"][0] - caps.inbox_max_rows,),
        )
        dropped["seen_key"] += cur.rowcount
    if incident_id is not None:
        dropped["alert"] += _cap_incident_alerts(cur, incident_id, caps.incident_max_alerts)
    dropped["incident"] += _cap_open(cur, caps.incident_max_open, incident_id)
    dropped["alert"] += _cap_alert_bytes(cur, caps.incident_alerts_max_bytes)
    return +dropped


def _cap_incident_alerts(cur: sqlite3.Cursor, incident_id: str, keep: int) -> int:
    """One incident's alerts beyond `keep`: resolved ones first, then the oldest."""
    cur.execute(
        "DELETE FROM incident_alerts WHERE incident_id = ?1 AND fingerprint IN (SELECT"
        " fingerprint FROM incident_alerts WHERE incident_id = ?1 ORDER BY"
        " (status = 'firing') DESC, updated_at DESC, fingerprint LIMIT -1 OFFSET ?2)",
        (incident_id, keep),
    )
    return cur.rowcount


def _cap_open(cur: sqlite3.Cursor, keep: int, current: str | None) -> int:
    """Close the least recently changed open incidents beyond `keep` (never one a pending
    or approved item names: its evidence is that item's scope lock), and drop their alerts."""
    n = int(cur.execute("SELECT COUNT(*) FROM incidents WHERE status = ?", (OPEN,)).fetchone()[0])
    if n <= keep:
        return 0
    rows = cur.execute(
        "SELECT id FROM incidents WHERE status = ?1 AND id != ?2 AND id NOT IN (SELECT"
        " j.value FROM approvals, json_each(approvals.incident_ids) AS j WHERE"
        " approvals.status IN ('pending', 'approved')) ORDER BY updated_at, id LIMIT ?3",
        (OPEN, current or "", n - keep),
    ).fetchall()
    for row in rows:
        cur.execute("DELETE FROM incident_alerts WHERE incident_id = ?", (row["id"],))
        cur.execute(
            "UPDATE incidents SET status = ?, resolved_at = updated_at WHERE id = ?",
            (RESOLVED, row["id"]),
        )
    return len(rows)


_OLDEST_ALERTS = (
    # alerts of resolved incidents first ...
    "DELETE FROM incident_alerts WHERE (incident_id, fingerprint) IN (SELECT incident_id,"
    " fingerprint FROM incident_alerts WHERE incident_id IN (SELECT id FROM incidents"
    " WHERE status = 'resolved') ORDER BY updated_at LIMIT ?)",
    # ... then any, the oldest first
    "DELETE FROM incident_alerts WHERE (incident_id, fingerprint) IN (SELECT incident_id,"
    " fingerprint FROM incident_alerts ORDER BY updated_at LIMIT ?)",
)


def _cap_alert_bytes(cur: sqlite3.Cursor, max_bytes: int) -> int:
    """Alerts of every incident together within `max_bytes`, the oldest evidence first."""
    gone = 0
    for sql in _OLDEST_ALERTS:
        while totals(cur)["alerts"][1] > max_bytes:
            cur.execute(sql, (_BATCH,))
            if not cur.rowcount:
                break
            gone += cur.rowcount
    return gone


# ---------------------------------------------------------------- retention by age


def _beyond(cur: sqlite3.Cursor, table: str, order: str, keep: int, where: str = "") -> int:
    """Delete all but the newest `keep` rows of `table` by `order`; how many went."""
    cur.execute(
        f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} {where}"  # noqa: S608
        f" ORDER BY {order} DESC LIMIT -1 OFFSET ?)",
        (keep,),
    )
    return cur.rowcount


def prune_intake(cur: sqlite3.Cursor, older_than: float, max_rows: int) -> tuple[int, int]:
    """Forget inbox bodies and seen-alert keys older than `older_than` or beyond the
    newest `max_rows` of each; (inbox rows, seen keys) removed. A state forgotten and
    delivered again counts as new once: one more analysis, never a missed alert."""
    cur.execute("DELETE FROM inbox WHERE received_at < ?", (older_than,))
    inbox = cur.rowcount + _beyond(cur, "inbox", "id", max_rows)
    cur.execute("DELETE FROM alerts_seen WHERE seen_at < ?", (older_than,))
    seen = cur.rowcount
    # WITHOUT ROWID: by key, newest first
    cur.execute(
        "DELETE FROM alerts_seen WHERE (fingerprint, starts_at, status) IN (SELECT"
        " fingerprint, starts_at, status FROM alerts_seen ORDER BY seen_at DESC"
        " LIMIT -1 OFFSET ?)",
        (max_rows,),
    )
    return inbox, seen + cur.rowcount


def prune_resolved(cur: sqlite3.Cursor, older_than: float, max_kept: int) -> int:
    """Forget resolved incidents (and their alerts) resolved before `older_than`, or
    beyond the newest `max_kept`. Never one a pending or in-flight approval names: its
    evidence is the scope lock that approval is checked against."""
    cur.execute("CREATE TEMP TABLE IF NOT EXISTS doomed_incidents (id TEXT PRIMARY KEY)")
    cur.execute(
        "INSERT OR IGNORE INTO temp.doomed_incidents SELECT id FROM incidents"
        " WHERE status = ? AND (resolved_at < ? OR id NOT IN (SELECT id FROM incidents"
        " WHERE status = ? ORDER BY resolved_at DESC LIMIT ?))",
        (RESOLVED, older_than, RESOLVED, max_kept),
    )
    cur.execute(
        "DELETE FROM temp.doomed_incidents WHERE id IN (SELECT j.value FROM approvals,"
        " json_each(approvals.incident_ids) AS j WHERE approvals.status IN (?, ?))",
        ("pending", "approved"),
    )
    cur.execute(
        "DELETE FROM incident_alerts WHERE incident_id IN (SELECT id FROM temp.doomed_incidents)"
    )
    cur.execute("DELETE FROM incidents WHERE id IN (SELECT id FROM temp.doomed_incidents)")
    gone = cur.rowcount
    cur.execute("DELETE FROM temp.doomed_incidents")
    return gone
