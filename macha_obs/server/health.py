"""Health that tells the truth: what /readyz, `macha_ready` and MachaNotReady report.

Alive (/healthz) is the process answering; ready is the sidecar able to do its job: a
first snapshot taken, the ledger still the file the state dir holds and writable, and
cycles completing. Each problem is one of a fixed set (a metric label) with a reason
for a person.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from macha_obs.metrics import HEALTH_PROBLEMS, LoopStats
from macha_obs.store import Store

PROBLEMS = HEALTH_PROBLEMS
FAILED_CYCLES = 3  # in a row: one can be a blip (a bus that stalled once)


@dataclass
class Health:
    store: Store
    snapshot_ready: Callable[[], bool]
    stats: LoopStats
    failed_cycles: int = FAILED_CYCLES
    # the pull intake's own verdict (pull.PullStats.problem); without pull, never a problem
    pull_problem: Callable[[], str | None] = lambda: None

    def problems(self) -> dict[str, str]:
        """Problem → why; empty when ready."""
        found: dict[str, str] = {}
        if not self.snapshot_ready():
            found["no_snapshot"] = "no snapshot yet"
        store = self.store.problem()
        if store is not None:
            found["store"] = store
        with self.stats.lock:
            failing, last = self.stats.failing_cycles, self.stats.last_cycle_error
        if failing >= self.failed_cycles:
            found["cycles_failing"] = f"the last {failing} cycles failed: {last}"
        pulled = self.pull_problem()
        if pulled is not None:
            found["alertmanager_pull"] = pulled
        return found

    def ready(self) -> str | None:
        """None when ready, else every reason on one line each."""
        found = self.problems()
        return "\n".join(found.values()) if found else None
