"""The sidecar's own metrics: what it decided and did, exported beside what it saw.

`LoopStats` is plain counters the orchestrator bumps; `SelfCollector` renders them with
the store's persistent state (approvals pending, breaker, a human's pause) in fresh
metric families on every scrape, like the snapshot exporter. Label values come from
fixed enumerations.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from macha_obs.config import AutonomyLevel
from macha_obs.models import Action, Decision, ExecutionResult, Verdict

log = logging.getLogger(__name__)


# What can keep the sidecar from its job (macha_obs/health.py decides each one).
HEALTH_PROBLEMS = ("no_snapshot", "store", "cycles_failing")


@dataclass
class LoopStats:
    """Counters since process start. Bumped by the loop, read by scrapes."""

    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)  # (source, assessment)
    actions: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, result)
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

    def note_cycle(self, started_at: float, duration: float) -> None:
        with self.lock:
            self.cycles += 1
            self.last_cycle_timestamp = started_at
            self.last_cycle_duration = duration


@dataclass(frozen=True)
class PersistentState:
    """What the store knows, read at scrape time (one small SQLite read)."""

    approvals_pending: int
    breaker_open: bool
    configured: AutonomyLevel
    effective: AutonomyLevel
    paused: bool = False  # a human's pause is in force (see pause.py)
    pause_until: float | None = None  # when it ends by itself (epoch s); None: at `resume`


class SelfCollector(Collector):
    def __init__(
        self,
        stats: LoopStats,
        state: Callable[[], PersistentState],
        health: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        """`health` gives the problems that make the sidecar not ready (health.py)."""
        self.stats = stats
        self.state = state
        self.health = health

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        with s.lock:
            decisions = dict(s.decisions)
            actions = dict(s.actions)
            verdicts = dict(s.verdicts)
            scalars = (s.rate_limited, s.escalations, s.cycle_errors, s.cycles)
            last, duration = s.last_cycle_timestamp, s.last_cycle_duration
        # sources x assessments: at most 3 x 4 series
        fam = CounterMetricFamily(
            "macha_decisions",
            "analysis decisions by source and assessment",
            labels=["source", "assessment"],
        )
        for (source, assessment), n in sorted(decisions.items()):
            fam.add_metric([source, assessment], n)
        yield fam
        # action kinds x {verified, failed}: at most 9 x 2 series
        fam = CounterMetricFamily(
            "macha_actions",
            "executed actions by kind and verification result",
            labels=["kind", "result"],
        )
        for (kind, result), n in sorted(actions.items()):
            fam.add_metric([kind, result], n)
        yield fam
        # policy outcomes: 4 series
        fam = CounterMetricFamily(
            "macha_policy_verdicts", "policy verdicts by outcome", labels=["outcome"]
        )
        for outcome in ("execute", "queue", "record", "refuse"):
            fam.add_metric([outcome], verdicts.get(outcome, 0))
        yield fam
        rate_limited, escalations, errors, cycles = scalars
        yield CounterMetricFamily(
            "macha_rate_limited_actions", "actions refused by a rate limit", value=rate_limited
        )
        yield CounterMetricFamily(
            "macha_escalations",
            "fixes that failed verification and went to a human",
            value=escalations,
        )
        yield CounterMetricFamily("macha_cycle_errors", "cycles that ended in a bug", value=errors)
        yield CounterMetricFamily("macha_cycles", "orchestrator cycles run", value=cycles)
        yield GaugeMetricFamily(
            "macha_last_cycle_timestamp_seconds", "when the last cycle started", value=last
        )
        yield GaugeMetricFamily(
            "macha_last_cycle_duration_seconds", "how long the last cycle took", value=duration
        )
        if self.health is not None:
            problems = self.health()
            yield GaugeMetricFamily(
                "macha_ready",
                "1 when the sidecar can do its job (what /readyz says)",
                value=0.0 if problems else 1.0,
            )
            # a fixed set of problems: 3 series
            problem = GaugeMetricFamily(
                "macha_health_problem",
                "1 while this problem keeps the sidecar from its job (/readyz says why)",
                labels=["problem"],
            )
            for name in HEALTH_PROBLEMS:
                problem.add_metric([name], 1.0 if name in problems else 0.0)
            yield problem
        try:
            state = self.state()
        except Exception:  # an unreadable ledger is /readyz's news; /metrics still answers
            log.warning("cannot read the ledger for the self-metrics", exc_info=True)
            return
        yield GaugeMetricFamily(
            "macha_approvals_pending", "actions waiting for a human", value=state.approvals_pending
        )
        yield GaugeMetricFamily(
            "macha_circuit_breaker_open",
            "1 when failed fixes capped autonomy at suggest",
            value=1.0 if state.breaker_open else 0.0,
        )
        # one series each; the end only while a pause with one is in force, never a 0
        # that would read as 1970
        yield GaugeMetricFamily(
            "macha_paused",
            "1 while a human's pause is in force: nothing executes (macha-obs pause)",
            value=1.0 if state.paused else 0.0,
        )
        if state.paused and state.pause_until is not None:
            yield GaugeMetricFamily(
                "macha_pause_until_timestamp_seconds",
                "when the human's pause ends by itself",
                value=state.pause_until,
            )
        # 4 series each: one per autonomy level, 1 for the current one
        for name, level, doc in (
            ("macha_autonomy_level", state.effective, "effective autonomy level"),
            ("macha_autonomy_configured_level", state.configured, "configured autonomy level"),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["level"])
            for candidate in AutonomyLevel:
                gauge.add_metric([candidate.value], 1.0 if candidate is level else 0.0)
            yield gauge
