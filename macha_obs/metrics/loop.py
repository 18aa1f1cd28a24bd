"""The orchestrator's counters: what it decided and did since start, bumped by the loop
and read by scrapes (through `LoopStatsView`) and by health.py."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from macha_obs.metrics.stats import Buckets, LoopCounts
from macha_obs.models import Action, Decision, ExecutionResult, Verdict

# From a unit restart (well under a second) to a NixOS rebuild on a slow host (many
# minutes); few buckets, because there is one histogram per action kind.
ACTION_DURATION_BUCKETS = (0.25, 1.0, 2.5, 10.0, 30.0, 60.0, 300.0, 1800.0)


@dataclass
class LoopStats:
    """Counters since process start. Bumped by the loop, read by scrapes."""

    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)  # (source, assessment)
    actions: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, result)
    action_durations: dict[str, Buckets] = field(default_factory=dict)  # by kind
    verdicts: Counter[str] = field(default_factory=Counter)  # outcome
    rate_limited: int = 0
    escalations: int = 0
    cycle_errors: int = 0
    failing_cycles: int = 0  # in a row, since the last cycle that completed
    last_cycle_error: str = ""
    cycles: int = 0
    last_cycle_timestamp: float = 0.0
    last_cycle_duration: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_decision(self, decision: Decision) -> None:
        with self.lock:
            self.decisions[(decision.source.value, decision.assessment.value)] += 1

    def count_handled(
        self, action: Action, verdict: Verdict, result: ExecutionResult | None
    ) -> None:
        with self.lock:
            self.verdicts[verdict.outcome.value] += 1
            if verdict.rate_limited:
                self.rate_limited += 1
            if result is not None:
                outcome = "verified" if result.verified else "failed"
                self.actions[(action.kind, outcome)] += 1
                buckets = self.action_durations.get(action.kind)
                if buckets is None:
                    buckets = self.action_durations[action.kind] = Buckets(ACTION_DURATION_BUCKETS)
                buckets.observe(result.duration_seconds)

    def note_cycle(self, started_at: float, duration: float) -> None:
        with self.lock:
            self.cycles += 1
            self.last_cycle_timestamp = started_at
            self.last_cycle_duration = duration

    def snapshot(self) -> LoopCounts:
        with self.lock:
            return LoopCounts(
                decisions=dict(self.decisions),
                actions=dict(self.actions),
                action_durations={k: b.histogram() for k, b in self.action_durations.items()},
                verdicts=dict(self.verdicts),
                rate_limited=self.rate_limited,
                escalations=self.escalations,
                cycle_errors=self.cycle_errors,
                cycles=self.cycles,
                last_cycle_timestamp=self.last_cycle_timestamp,
                last_cycle_duration=self.last_cycle_duration,
            )
