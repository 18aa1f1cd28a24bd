"""`Store`: one handle on a state directory, its table groups put together.

Each table group keeps its DDL beside its queries (meta.py, approvals.py, ledger.py,
breaker.py, incidents.py, outcomes.py); the JSONL audit logs are audit.py; `retain` is the one
retention pass the daemon's timer cycle runs.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from macha_obs.statedir.retention import (
    Retention,
    RetentionReport,
    RetentionSettings,
    retain_files,
)
from macha_obs.store import (
    approvals,
    breaker,
    incidents,
    intake_bounds,
    ledger,
    meta,
    outcomes,
    outcomes_sync,
)
from macha_obs.store._group_commit import GroupCommitter
from macha_obs.store.breaker import Breaker
from macha_obs.store.ledger import Ledger
from macha_obs.store.meta import Meta
from macha_obs.store.outcomes import Outcomes

SCHEMA = (
    meta.DDL,
    approvals.DDL,
    ledger.DDL,
    breaker.DDL,
    incidents.DDL,
    intake_bounds.DDL,
    outcomes.DDL,
)
# A verification older than this counts for nothing: the breaker's window is at most
# 30 days (config.py's bound on breaker_window).
VERIFICATIONS_KEPT = 31 * 86400.0

T = TypeVar("T")


class Store(Ledger, Breaker, Outcomes, Meta):
    """One handle on a state directory. Thread-safe within a process."""

    def __init__(
        self,
        state_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        retention: RetentionSettings | None = None,
    ) -> None:
        """`retention` (the config) gives the caps every delivery is held to."""
        super().__init__(state_dir, SCHEMA, watched=("approvals",), clock=clock)
        self._shared = GroupCommitter(self)
        self.retention: RetentionSettings = retention or Retention()
        self.intake_drops = intake_bounds.Drops()  # what the caps dropped since start

    def _migrate(self) -> None:
        super()._migrate()
        with self._tx() as cur:
            rebuilt = incidents.rowid_alerts(cur)
        if rebuilt:
            self._db.executescript(intake_bounds.DDL)  # the triggers and indexes, again

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
        with self._tx() as cur:
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
            breaker.prune_verifications(cur, now - VERIFICATIONS_KEPT)
        self.intake_drops.add(dropped)
        report = retain_files(self.paths, settings)
        report.inbox, report.alerts_seen, report.incidents = inbox, seen, gone
        report.learned = learned
        report.vacuumed = self.compact()
        return report
