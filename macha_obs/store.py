"""Durable state: SQLite (WAL) for approvals, the action ledger, the breaker and small
key/value state; JSONL audit logs appended with fsync.

The daemon and several CLI processes open the same state dir at once. Every
read-modify-write runs in a `BEGIN IMMEDIATE` transaction, so two approvers racing for
one approval are serialised by SQLite and exactly one wins (invariant 5).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from macha_obs import statedir
from macha_obs.models import (
    Action,
    ActionRecord,
    ActionStatus,
    Approval,
    ApprovalStatus,
    ExecutionResult,
    Risk,
    action_json,
    parse_action,
)
from macha_obs.policy import Execution

DB_NAME = "state.db"
DECISIONS_LOG = "decisions.jsonl"
ACTIONS_LOG = "actions.jsonl"
ORCHESTRATOR_LOG = "orchestrator.log"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
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
-- an approval is carried out at most once, whatever races happen above
CREATE UNIQUE INDEX IF NOT EXISTS actions_once_per_approval
    ON actions(approval_id) WHERE approval_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS actions_started ON actions(started_at);
CREATE TABLE IF NOT EXISTS verifications (
    at REAL NOT NULL,
    action_id INTEGER,
    ok INTEGER NOT NULL
);
-- Alertmanager webhook bodies, stored before the 2xx (see macha_obs/incidents.py)
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    group_key TEXT NOT NULL,
    body TEXT NOT NULL,
    new_alerts INTEGER NOT NULL DEFAULT 0
);
-- dedupe of HA deliveries: one row per alert state ever seen
CREATE TABLE IF NOT EXISTS alerts_seen (
    fingerprint TEXT NOT NULL,
    starts_at TEXT NOT NULL,
    status TEXT NOT NULL,
    seen_at REAL NOT NULL,
    PRIMARY KEY (fingerprint, starts_at, status)
) WITHOUT ROWID;
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
CREATE TABLE IF NOT EXISTS incident_alerts (
    incident_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL,
    alert TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (incident_id, fingerprint)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS breaker (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    opened_at REAL,
    reason TEXT NOT NULL DEFAULT '',
    reset_at REAL NOT NULL DEFAULT 0,
    reset_by TEXT NOT NULL DEFAULT ''
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

# What an approval becomes when the action carrying it out ends so.
_APPROVAL_AFTER = {
    ActionStatus.SUCCEEDED: ApprovalStatus.EXECUTED,
    ActionStatus.FAILED: ApprovalStatus.FAILED,
    ActionStatus.REFUSED: ApprovalStatus.REFUSED,
    ActionStatus.INTERRUPTED: ApprovalStatus.INTERRUPTED,
    ActionStatus.INTENT: ApprovalStatus.APPROVED,
}

_TERMINAL_APPROVAL = {
    ApprovalStatus.EXECUTED,
    ApprovalStatus.FAILED,
    ApprovalStatus.REJECTED,
    ApprovalStatus.EXPIRED,
    ApprovalStatus.CANCELLED,
    ApprovalStatus.REFUSED,
    ApprovalStatus.ACKNOWLEDGED,
    ApprovalStatus.INTERRUPTED,
}


class StoreError(Exception):
    """The state directory cannot be used."""


class ApprovalError(Exception):
    """An approval cannot be acted on; the message says why."""


def process_owner(pid: int | None = None) -> str:
    """Identify a process by pid and start time, so a reused pid is not mistaken for it."""
    proc = psutil.Process(pid)
    return f"{proc.pid}:{proc.create_time():.3f}"


def owner_alive(owner: str) -> bool:
    pid_text, _, started = owner.partition(":")
    try:
        return process_owner(int(pid_text)) == f"{int(pid_text)}:{float(started):.3f}"
    except (psutil.Error, ValueError):
        return False


def _private(path: Path) -> None:
    """State files quote alerts and journal lines: readable by the owner (and group)
    only, whatever the umask or an older release left. SQLite gives its -wal and -shm
    files the database file's mode."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640))
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"{path}: {exc.strerror}") from exc
    for suffix in ("", "-wal", "-shm"):
        target = path.with_name(path.name + suffix)
        with contextlib.suppress(OSError):
            info = os.lstat(target)
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid():
                os.chmod(target, stat.S_IMODE(info.st_mode) & 0o750 | 0o600)


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


class Store:
    """One handle on a state directory. Thread-safe within a process."""

    def __init__(self, state_dir: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.state_dir = Path(state_dir)
        self.clock = clock
        try:
            statedir.check_dir(self.state_dir)
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
            statedir.check_dir(self.state_dir)
            _private(self.state_dir / DB_NAME)
            for suffix in ("", "-wal", "-shm"):  # SQLite opens these by name
                statedir.refuse_symlink(self.state_dir / (DB_NAME + suffix))
        except statedir.StateDirError as exc:
            raise StoreError(str(exc)) from exc
        except OSError as exc:
            raise StoreError(f"cannot use state dir {self.state_dir}: {exc.strerror}") from exc
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                self.state_dir / DB_NAME,
                timeout=30.0,
                isolation_level=None,  # we issue BEGIN IMMEDIATE ourselves
                check_same_thread=False,
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: an intent row must be on disk before the side effect it announces
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.executescript(_SCHEMA)
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.state_dir / DB_NAME}: {exc}") from exc
        self.owner = process_owner()
        # what the database file was when opened: replaced, truncated or deleted under
        # us, the daemon would write into a file nobody else reads (see `problem`)
        opened = os.stat(self.state_dir / DB_NAME)
        self._identity = (opened.st_dev, opened.st_ino)
        self.write_error: str | None = None

    def _migrate(self) -> None:
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
        self._db.executescript(_PENDING_ONCE)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Cursor]:
        """A `BEGIN IMMEDIATE` transaction for modules that keep their own tables here."""
        return self._tx()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._db.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self.write_error = str(exc)
                raise
            try:
                yield cur
            except BaseException as exc:
                # a constraint (an approval carried out twice) is the ledger working
                if isinstance(exc, sqlite3.DatabaseError) and not isinstance(
                    exc, sqlite3.IntegrityError
                ):
                    self.write_error = str(exc)
                with contextlib.suppress(sqlite3.Error):
                    cur.execute("ROLLBACK")
                raise
            try:
                cur.execute("COMMIT")
            except sqlite3.Error as exc:
                self.write_error = str(exc)
                with contextlib.suppress(sqlite3.Error):
                    cur.execute("ROLLBACK")
                raise
            self.write_error = None

    def problem(self) -> str | None:
        """Why this handle no longer holds the state dir's ledger, or None. Checked by
        identity, not just by name: a file replaced, truncated or deleted under a
        running daemon is the silent state loss /readyz must report."""
        path = self.state_dir / DB_NAME
        try:
            now = os.stat(path)
        except FileNotFoundError:
            return f"{path} was deleted while the daemon ran"
        except OSError as exc:
            return f"{path}: {exc.strerror}"
        if (now.st_dev, now.st_ino) != self._identity:
            return f"{path} was replaced while the daemon ran"
        if now.st_size == 0:
            return f"{path} was truncated to zero bytes while the daemon ran"
        if self.write_error is not None:
            return f"{path} cannot be written: {self.write_error}"
        return None

    def has_history(self) -> bool:
        """The database holds any row at all: every audit record is written with one."""
        tables = [
            r["name"]
            for r in self._query("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not str(r["name"]).startswith("sqlite_")
        ]
        return any(
            self._query(f'SELECT EXISTS(SELECT 1 FROM "{t}") AS any')[0]["any"]  # noqa: S608
            for t in tables
        )

    def audit_records(self) -> int:
        """How many records the audit logs hold (lines, without reading them whole)."""
        total = 0
        for log in (self.decisions_log, self.actions_log):
            with contextlib.suppress(FileNotFoundError), log.open("rb") as fh:
                total += sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 16), b""))
        return total

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """A read for modules that keep their own tables here."""
        return self._query(sql, args)

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ------------------------------------------------------------ paths

    @property
    def decisions_log(self) -> Path:
        return self.state_dir / DECISIONS_LOG

    @property
    def actions_log(self) -> Path:
        return self.state_dir / ACTIONS_LOG

    @property
    def orchestrator_log(self) -> Path:
        return self.state_dir / ORCHESTRATOR_LOG

    # ------------------------------------------------------------ key/value

    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0]["value"]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # ------------------------------------------------------------ audit logs

    def audit(self, log: Path, record: Mapping[str, Any]) -> None:
        """Append one JSON line and fsync it before returning (invariant 10)."""
        line = json.dumps({"ts": _ts(self.clock()).isoformat(), **record}, default=str)  # type: ignore[union-attr]
        data = (line.replace("\n", " ") + "\n").encode()
        fd = statedir.open_file(log, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # whole lines, even from several processes
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                # a crash tore the last line: start on a fresh one, so this record
                # stays whole and readable
                data = b"\n" + data
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def audit_decision(self, record: Mapping[str, Any]) -> None:
        self.audit(self.decisions_log, record)

    def audit_action(self, record: Mapping[str, Any]) -> None:
        self.audit(self.actions_log, record)

    # ------------------------------------------------------------ approvals

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

    def cancel_approval(self, approval_id: int, reason: str) -> bool:
        """A pending item whose problem is confirmed gone is cancelled, with why."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE approvals SET status = ?, decided_at = ?, note = ? WHERE id = ?"
                " AND status = ?",
                (
                    ApprovalStatus.CANCELLED.value,
                    self.clock(),
                    reason,
                    approval_id,
                    ApprovalStatus.PENDING.value,
                ),
            )
            return cur.rowcount > 0

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
        """The item, if it is still pending (one past its TTL expires here); else raise."""
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
        if status is not ApprovalStatus.PENDING:
            raise ApprovalError(f"approval {approval_id} is {status.value}, not pending")
        return self._must_get_approval(approval_id)

    def decide_approval(
        self, approval_id: int, status: ApprovalStatus, note: str, *, by: str
    ) -> Approval:
        """A pending item settled without running anything (refused, cancelled,
        acknowledged), in one step: only one caller can decide it."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE approvals SET status = ?, note = ?, decided_at = ?, decided_by = ?"
                " WHERE id = ? AND status = ?",
                (status.value, note, self.clock(), by, approval_id, ApprovalStatus.PENDING.value),
            )
            won = cur.rowcount > 0
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
        with self._tx() as cur:
            row = cur.execute(
                "SELECT status FROM approvals WHERE id = ?", (approval_id,)
            ).fetchone()
            if row is None:
                raise ApprovalError(f"no approval with id {approval_id}")
            if row["status"] != ApprovalStatus.PENDING.value:
                raise ApprovalError(f"approval {approval_id} is {row['status']}, not pending")
            cur.execute(
                "UPDATE approvals SET status = ?, decided_at = ?, decided_by = ?, note = ?"
                " WHERE id = ?",
                (ApprovalStatus.REJECTED.value, self.clock(), by, reason, approval_id),
            )
        return self._must_get_approval(approval_id)

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
            created_at=_ts(row["created_at"]),
            expires_at=_ts(row["expires_at"]),
            decided_at=_ts(row["decided_at"]),
            decided_by=row["decided_by"],
            note=row["note"],
            action_id=row["action_id"],
            incident_ids=json.loads(row["incident_ids"]) or [row["incident_id"]],
        )

    # ------------------------------------------------------------ the action ledger

    def record_intent(
        self,
        incident_id: str,
        action: Action,
        *,
        approval_id: int | None = None,
        by: str | None = None,
    ) -> int:
        """Write the intent row (fsynced) and its audit line before any side effect.

        For an approval, `by` claims it in the same transaction: pending → approved and
        the intent together, so no instant leaves an item claimed with nothing to show
        for it. A second intent violates the unique index: that is the "approving
        twice executes once" guarantee, enforced by the database.
        """
        now = self.clock()
        try:
            with self._tx() as cur:
                if approval_id is not None and by is not None:
                    cur.execute(
                        "UPDATE approvals SET status = ?, decided_at = ?, decided_by = ?"
                        " WHERE id = ? AND status = ? AND expires_at > ?",
                        (
                            ApprovalStatus.APPROVED.value,
                            now,
                            by,
                            approval_id,
                            ApprovalStatus.PENDING.value,
                            now,
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
                        self.owner,
                    ),
                )
                action_id = int(cur.lastrowid or 0)
        except sqlite3.IntegrityError as exc:
            raise ApprovalError(f"approval {approval_id} was already carried out") from exc
        self.audit_action(
            {
                "event": "intent",
                "action_id": action_id,
                "incident_id": incident_id,
                "approval_id": approval_id,
                "action": action.model_dump(mode="json"),
            }
        )
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
        self.audit_action(
            {
                "event": "outcome",
                "action_id": action_id,
                "incident_id": row["incident_id"] if row else None,
                "approval_id": row["approval_id"] if row else None,
                "status": status.value,
                "result": result.model_dump(mode="json") if result else None,
            }
        )

    def recover_interrupted(self) -> list[ActionRecord]:
        """Intent rows whose writer is gone become `interrupted` (invariant 6).

        Nothing is re-run: the record and its approval say what happened, and a human
        or the next cycle decides again from the host's current state.
        """
        interrupted: list[int] = []
        now = self.clock()
        with self._tx() as cur:
            rows = cur.execute(
                "SELECT id, owner, approval_id FROM actions WHERE status = ?",
                (ActionStatus.INTENT.value,),
            ).fetchall()
            for row in rows:
                if owner_alive(row["owner"]):
                    continue
                interrupted.append(int(row["id"]))
                cur.execute(
                    "UPDATE actions SET status = ?, finished_at = ? WHERE id = ?",
                    (ActionStatus.INTERRUPTED.value, now, row["id"]),
                )
                if row["approval_id"] is not None:
                    cur.execute(
                        "UPDATE approvals SET status = ?, note = ? WHERE id = ?",
                        (
                            ApprovalStatus.INTERRUPTED.value,
                            "the process carrying it out died; not re-run",
                            row["approval_id"],
                        ),
                    )
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
            # ... or one whose action ended before its approval was settled
            for after_action, after_approval in _APPROVAL_AFTER.items():
                if after_action is ActionStatus.INTENT:
                    continue
                cur.execute(
                    "UPDATE approvals SET status = ? WHERE status = ? AND EXISTS (SELECT 1"
                    " FROM actions WHERE actions.approval_id = approvals.id AND"
                    " actions.status = ?)",
                    (after_approval.value, ApprovalStatus.APPROVED.value, after_action.value),
                )
        records = [r for r in (self.get_action(i) for i in interrupted) if r is not None]
        for rec in records:
            self.audit_action(
                {
                    "event": "interrupted",
                    "action_id": rec.id,
                    "incident_id": rec.incident_id,
                    "approval_id": rec.approval_id,
                    "action": rec.action.model_dump(mode="json"),
                }
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
            Execution(r["kind"], r["target"], _ts(r["started_at"]))  # type: ignore[arg-type]
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
            started_at=_ts(row["started_at"]),
            finished_at=_ts(row["finished_at"]),
            result=ExecutionResult.model_validate_json(row["result"]) if row["result"] else None,
        )

    # ------------------------------------------------------------ breaker

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
        return [_ts(r["at"]) for r in rows]  # type: ignore[misc]

    def breaker_opened(self) -> tuple[datetime | None, str]:
        rows = self._query("SELECT opened_at, reason FROM breaker WHERE id = 1")
        if not rows or rows[0]["opened_at"] is None:
            return None, ""
        return _ts(rows[0]["opened_at"]), str(rows[0]["reason"])

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
        self.audit_action({"event": "breaker_reset", "by": by})
