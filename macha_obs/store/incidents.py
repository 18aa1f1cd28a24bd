"""The incident tables: the webhook inbox, seen alert states, incidents and their alerts.

Only the SQL lives here; what an alert or a finding does to an incident (dedupe rules,
when one closes, grouping) is `macha_obs/intake/incidents.py`, which calls these inside the
store's transactions (writes take the transaction's cursor). Their caps and retention
are `intake_bounds.py`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection

from macha_obs.store._db import Database

OPEN = "open"
RESOLVED = "resolved"

DDL = """
-- Alertmanager webhook bodies, stored before the 2xx (see macha_obs/intake/incidents.py)
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    group_key TEXT NOT NULL,
    body TEXT NOT NULL,
    new_alerts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS inbox_received ON inbox(received_at);
-- dedupe of HA deliveries: one row per alert state seen (within retention)
CREATE TABLE IF NOT EXISTS alerts_seen (
    fingerprint TEXT NOT NULL,
    starts_at TEXT NOT NULL,
    status TEXT NOT NULL,
    seen_at REAL NOT NULL,
    PRIMARY KEY (fingerprint, starts_at, status)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS alerts_seen_at ON alerts_seen(seen_at);
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    group_key TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,            -- open | resolved
    findings TEXT NOT NULL DEFAULT '[]',
    revision INTEGER NOT NULL DEFAULT 1,   -- bumped on every change of content
    analyzed_revision INTEGER NOT NULL DEFAULT 0,
    opened_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    resolved_at REAL
);
-- at most one open incident per group key
CREATE UNIQUE INDEX IF NOT EXISTS incidents_open_group
    ON incidents(group_key) WHERE status = 'open' AND group_key != '';
-- the partial index above cannot serve `status = ?` with a bound parameter: this one does
CREATE INDEX IF NOT EXISTS incidents_group ON incidents(group_key, status);
CREATE INDEX IF NOT EXISTS incidents_pending ON incidents(status, revision, analyzed_revision);
CREATE INDEX IF NOT EXISTS incidents_resolved ON incidents(status, resolved_at);
-- A rowid table: an alert is often over the ~1 KB a WITHOUT ROWID row keeps on its page,
-- and each spill took a page of its own (4x the bytes: issue 20's 2.35 GB)
CREATE TABLE IF NOT EXISTS incident_alerts (
    incident_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL,
    alert TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (incident_id, fingerprint)
);
"""


def rowid_alerts(cur: sqlite3.Cursor) -> bool:
    """Rebuild an older release's WITHOUT ROWID `incident_alerts` as a rowid table (its
    triggers and indexes go with it: the caller creates them again); True if it did."""
    row = cur.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'incident_alerts'"
    ).fetchone()
    if row is None or "WITHOUT ROWID" not in str(row[0]).upper():
        return False
    cur.execute("ALTER TABLE incident_alerts RENAME TO incident_alerts_old")
    cur.execute(DDL[DDL.index("CREATE TABLE IF NOT EXISTS incident_alerts") :])
    cur.execute("INSERT INTO incident_alerts SELECT * FROM incident_alerts_old")
    cur.execute("DROP TABLE incident_alerts_old")
    return True


# ---------------------------------------------------------------- writes (in a transaction)


def note_seen(cur: sqlite3.Cursor, fp: str, starts_at: str, status: str, now: float) -> bool:
    """Remember an alert state; False when it was seen before."""
    cur.execute(
        "INSERT OR IGNORE INTO alerts_seen(fingerprint, starts_at, status, seen_at)"
        " VALUES (?,?,?,?)",
        (fp, starts_at, status, now),
    )
    return cur.rowcount > 0


def latest_status(cur: sqlite3.Cursor, group_key: str, fp: str) -> str | None:
    """The fingerprint's latest state in this group's incidents, if it has one."""
    row = cur.execute(
        "SELECT a.status FROM incident_alerts a JOIN incidents i ON i.id = a.incident_id"
        " WHERE i.group_key = ? AND a.fingerprint = ? ORDER BY a.updated_at DESC LIMIT 1",
        (group_key, fp),
    ).fetchone()
    return None if row is None else str(row["status"])


def add_to_inbox(cur: sqlite3.Cursor, now: float, group_key: str, body: str, new: int) -> int:
    cur.execute(
        "INSERT INTO inbox(received_at, group_key, body, new_alerts) VALUES (?,?,?,?)",
        (now, group_key, body, new),
    )
    return int(cur.lastrowid or 0)


def open_incident_of(cur: sqlite3.Cursor, group_key: str) -> str | None:
    row = cur.execute(
        "SELECT id FROM incidents WHERE group_key = ? AND status = ?", (group_key, OPEN)
    ).fetchone()
    return None if row is None else str(row["id"])


def insert_incident(cur: sqlite3.Cursor, stem: str, source: str, group_key: str, now: float) -> str:
    """A new open incident, `<stem>-<n>` for the group's n-th; its id. Numbered after the
    newest kept one, so an id is never reused while retention keeps any of the group."""
    last = cur.execute(
        "SELECT MAX(CAST(substr(id, ?) AS INTEGER)) FROM incidents WHERE group_key = ?",
        (len(stem) + 2, group_key),
    ).fetchone()[0]
    incident_id = f"{stem}-{int(last or 0) + 1}"
    cur.execute(
        "INSERT INTO incidents(id, source, group_key, status, revision, opened_at,"
        " updated_at) VALUES (?,?,?,?,0,?,?)",
        (incident_id, source, group_key, OPEN, now, now),
    )
    return incident_id


def alert_status(cur: sqlite3.Cursor, incident_id: str, fp: str) -> str | None:
    row = cur.execute(
        "SELECT status FROM incident_alerts WHERE incident_id = ? AND fingerprint = ?",
        (incident_id, fp),
    ).fetchone()
    return None if row is None else str(row["status"])


def put_alert(
    cur: sqlite3.Cursor, incident_id: str, fp: str, *, status: str, alert: str, now: float
) -> None:
    cur.execute(
        "INSERT INTO incident_alerts(incident_id, fingerprint, status, alert, updated_at)"
        " VALUES (?,?,?,?,?) ON CONFLICT(incident_id, fingerprint) DO UPDATE SET"
        " status = excluded.status, alert = excluded.alert, updated_at = excluded.updated_at",
        (incident_id, fp, status, alert, now),
    )


def alerts_in(cur: sqlite3.Cursor, incident_id: str) -> list[str]:
    """The incident's alerts as stored (JSON), in fingerprint order."""
    rows = cur.execute(
        "SELECT alert FROM incident_alerts WHERE incident_id = ? ORDER BY fingerprint",
        (incident_id,),
    ).fetchall()
    return [str(r["alert"]) for r in rows]


def count_firing(cur: sqlite3.Cursor, incident_id: str) -> int:
    row = cur.execute(
        "SELECT COUNT(*) FROM incident_alerts WHERE incident_id = ? AND status = 'firing'",
        (incident_id,),
    ).fetchone()
    return int(row[0])


def bump(cur: sqlite3.Cursor, incident_id: str, now: float) -> None:
    """A new revision, to be analysed."""
    cur.execute(
        "UPDATE incidents SET revision = revision + 1, updated_at = ? WHERE id = ?",
        (now, incident_id),
    )


def bump_analysed(cur: sqlite3.Cursor, incident_id: str, now: float) -> bool:
    """A new revision of an open incident, only if its last one was analysed."""
    cur.execute(
        "UPDATE incidents SET revision = revision + 1, updated_at = ?"
        " WHERE id = ? AND status = ? AND revision = analyzed_revision",
        (now, incident_id, OPEN),
    )
    return cur.rowcount > 0


def open_findings(cur: sqlite3.Cursor, incident_id: str) -> str | None:
    """An open incident's findings (JSON), or None when it is not open."""
    row = cur.execute(
        "SELECT findings FROM incidents WHERE id = ? AND status = ?", (incident_id, OPEN)
    ).fetchone()
    return None if row is None else str(row["findings"])


def set_findings(cur: sqlite3.Cursor, incident_id: str, encoded: str, now: float) -> None:
    cur.execute(
        "UPDATE incidents SET findings = ?, revision = revision + 1, updated_at = ? WHERE id = ?",
        (encoded, now, incident_id),
    )


def reopen_all(cur: sqlite3.Cursor, keep: Collection[str], now: float) -> int:
    """A new revision for every analysed open incident but those in `keep`; how many."""
    rows = cur.execute(
        "SELECT id FROM incidents WHERE status = ? AND revision = analyzed_revision", (OPEN,)
    ).fetchall()
    ids = [r["id"] for r in rows if r["id"] not in keep]
    cur.executemany(
        "UPDATE incidents SET revision = revision + 1, updated_at = ? WHERE id = ?",
        [(now, i) for i in ids],
    )
    return len(ids)


def mark_analyzed(cur: sqlite3.Cursor, incident_id: str, revision: int) -> None:
    cur.execute(
        "UPDATE incidents SET analyzed_revision = MAX(analyzed_revision, ?) WHERE id = ?",
        (revision, incident_id),
    )


def resolve(cur: sqlite3.Cursor, incident_id: str, now: float) -> None:
    cur.execute(
        "UPDATE incidents SET status = ?, resolved_at = ?, updated_at = ? WHERE id = ?"
        " AND status = ?",
        (RESOLVED, now, now, incident_id, OPEN),
    )


# ---------------------------------------------------------------- reads


def incident_row(db: Database, incident_id: str) -> sqlite3.Row | None:
    rows = db.query("SELECT * FROM incidents WHERE id = ?", (incident_id,))
    return rows[0] if rows else None


def stored_alerts(db: Database, incident_id: str) -> list[str]:
    """The incident's alerts as stored (JSON), in fingerprint order."""
    rows = db.query(
        "SELECT alert FROM incident_alerts WHERE incident_id = ? ORDER BY fingerprint",
        (incident_id,),
    )
    return [str(r["alert"]) for r in rows]


def open_ids(db: Database) -> list[str]:
    return [
        str(r["id"])
        for r in db.query("SELECT id FROM incidents WHERE status = ? ORDER BY id", (OPEN,))
    ]


def pending_ids(db: Database) -> list[str]:
    """Open incidents whose latest revision has not been analysed yet, oldest change first."""
    rows = db.query(
        "SELECT id FROM incidents WHERE status = ? AND revision > analyzed_revision"
        " ORDER BY updated_at",
        (OPEN,),
    )
    return [str(r["id"]) for r in rows]


def inbox_count(db: Database) -> int:
    return int(db.query("SELECT COUNT(*) AS n FROM inbox")[0]["n"])
