"""`Store`: one handle on a state directory, composed of its parts.

Each part keeps its DDL beside its queries and shares the one connection (`_db.py`):

    audit          decisions.jsonl, actions.jsonl (audit.py)
    meta           small key/value state (meta.py)
    approvals      the queue for humans (approvals.py)
    ledger         intents and outcomes (ledger.py)
    verifications  verification results and the breaker (verifications.py)
    outcomes       what became of each proposal (outcomes.py)

The incidents' SQL is incidents.py, under intake/incidents.py's `IncidentStore`. A
consumer takes the part it needs, not the handle. `retain` is the one retention pass the
daemon's timer cycle runs.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from macha_obs.statedir import StateDir
from macha_obs.statedir.retention import (
    Retention,
    RetentionReport,
    RetentionSettings,
    retain_files,
)
from macha_obs.store import (
    approvals,
    incidents,
    intake_bounds,
    ledger,
    meta,
    outcomes,
    outcomes_sync,
    verifications,
)
from macha_obs.store._db import Database
from macha_obs.store._group_commit import GroupCommitter
from macha_obs.store.approvals import Approvals
from macha_obs.store.audit import Audit
from macha_obs.store.ledger import Ledger
from macha_obs.store.meta import Meta
from macha_obs.store.outcomes import Outcomes
from macha_obs.store.verifications import Verifications

SCHEMA = (
    meta.DDL,
    approvals.DDL,
    ledger.DDL,
    verifications.DDL,
    incidents.DDL,
    intake_bounds.DDL,
    outcomes.DDL,
)
# A verification older than this counts for nothing: the breaker's window is at most
# 30 days (config.py's bound on breaker_window).
VERIFICATIONS_KEPT = 31 * 86400.0

T = TypeVar("T")


class Store:
    """One handle on a state directory: its parts on one connection. Thread-safe within
    a process."""

    def __init__(
        self,
        state_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        retention: RetentionSettings | None = None,
    ) -> None:
        """`retention` (the config) gives the caps every delivery is held to."""
        self.db = Database(state_dir, SCHEMA, watched=("approvals",), clock=clock)
        self.audit = Audit(self.db)
        self.meta = Meta(self.db)
        self.approvals = Approvals(self.db, self.audit)
        self.ledger = Ledger(self.db, self.audit)
        self.verifications = Verifications(self.db, self.audit)
        self.outcomes = Outcomes(self.db, self.audit)
        # in the order older databases need them: the learning columns first
        self.db.migrate(
            self.outcomes.migrate, self.approvals.migrate, self.ledger.migrate, self._migrate
        )
        self._shared = GroupCommitter(self.db)
        self.retention: RetentionSettings = retention or Retention()
        self.intake_drops = intake_bounds.Drops()  # what the caps dropped since start

    def _migrate(self) -> None:
        with self.db.transaction() as cur:
            rebuilt = incidents.rowid_alerts(cur)
        if rebuilt:
            self.db.script(intake_bounds.DDL)  # the triggers and indexes, again

    # ------------------------------------------------------------ the handle

    @property
    def paths(self) -> StateDir:
        return self.db.paths

    @property
    def state_dir(self) -> Path:
        return self.db.state_dir

    @property
    def clock(self) -> Callable[[], float]:
        return self.db.clock

    @property
    def owner(self) -> str:
        return self.db.owner

    def problem(self) -> str | None:
        """Why this handle no longer holds the state dir's ledger, or None (_db.py)."""
        return self.db.problem()

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Cursor]:
        return self.db.transaction()

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self.db.query(sql, args)

    def has_history(self) -> bool:
        return self.db.has_history()

    def close(self) -> None:
        self.db.close()

    def commit_shared(self, fn: Callable[[sqlite3.Cursor], T]) -> T:
        """Run `fn(cursor)` in a committed transaction that concurrent callers may share
        (one fsync for many webhook deliveries); returns once it is committed."""
        return self._shared.run(fn)

    @property
    def shared_commits(self) -> int:
        """Transactions `commit_shared` committed (for tests and the benchmark)."""
        return self._shared.commits

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def retain(
        self, settings: RetentionSettings | None = None, now: float | None = None
    ) -> RetentionReport:
        """Keep the state directory bounded: prune the inbox, the seen-alert keys,
        resolved incidents, old verifications and learning records, hold the intake's
        caps (lowered since?), rotate the logs that outgrew their size, keep the newest
        snapshots, and give a mostly free database file back."""
        settings = self.retention if settings is None else settings
        now = self.clock() if now is None else now
        with self.db.transaction() as cur:
            # learn from the queue and the ledger first, while every incident they
            # point at is still there to give its problem signature
            outcomes_sync.sync(cur)
            learned = outcomes_sync.prune(cur, now)
            inbox, seen = intake_bounds.prune_intake(
                cur, now - settings.inbox_retention, settings.inbox_max_rows
            )
            gone = intake_bounds.prune_resolved(
                cur, now - settings.incident_retention, settings.incident_max_resolved
            )
            dropped = intake_bounds.hold_caps(cur, settings)
            verifications.prune_verifications(cur, now - VERIFICATIONS_KEPT)
        self.intake_drops.add(dropped)
        report = retain_files(self.paths, settings)
        report.inbox, report.alerts_seen, report.incidents = inbox, seen, gone
        report.learned = learned
        report.vacuumed = self.db.compact()
        return report
