"""The sidecar's own metrics: what it decided and did, exported beside what it saw.

`SelfCollector` renders the orchestrator's counters (read through `LoopStatsView`) with
the store's persistent state (approvals pending, breaker, a human's pause) in fresh
metric families on every scrape, like the host exporter. Every label value comes from a
fixed enumeration in models, and every combination is exported from the start at 0, so
`increase()` and the alert rules have a series before the first event.
"""

from __future__ import annotations

import itertools
import logging
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from macha_obs.config import AutonomyLevel
from macha_obs.metrics.families import add_histogram, empty_histogram
from macha_obs.metrics.loop import ACTION_DURATION_BUCKETS
from macha_obs.metrics.stats import LoopCounts, LoopStatsView
from macha_obs.models import Action, Assessment, DecisionSource, Outcome

log = logging.getLogger(__name__)

# What can keep the sidecar from its job (macha_obs/server/health.py decides each one).
HEALTH_PROBLEMS = (
    "no_snapshot",
    "store",
    "cycles_failing",
    "alertmanager_pull",
    "collector_failing",
    "thread_died",
)
ACTION_RESULTS = ("verified", "failed")


def action_kinds() -> tuple[str, ...]:
    """Every kind in the Action union, in its order: models holds the one list."""
    union = typing.get_args(Action)[0]  # Annotated[A | B | ..., Field(discriminator=...)]
    return tuple(str(member.model_fields["kind"].default) for member in typing.get_args(union))


def _known_first(known: list[typing.Any], seen: typing.Iterable[typing.Any]) -> list[typing.Any]:
    """The known label values in their order, then any other seen (never dropped)."""
    return known + sorted(set(seen) - set(known))


# Pending items exported one series each (macha_approval_pending_info), oldest first.
LINKS_EXPORTED = 100


@dataclass(frozen=True)
class ApprovalLink:
    """A pending item and the plain URL of its page (web/links.py makes it): never a
    capability, since /metrics has no authentication (opening it needs the token)."""

    approval_id: int
    kind: str
    risk: str
    url: str


@dataclass(frozen=True)
class PersistentState:
    """What the store knows, read at scrape time (one small SQLite read)."""

    approvals_pending: int
    breaker_open: bool
    configured: AutonomyLevel
    effective: AutonomyLevel
    paused: bool = False  # a human's pause is in force (see pause.py)
    pause_until: float | None = None  # when it ends by itself (epoch s); None: at `resume`
    approval_links: tuple[ApprovalLink, ...] = ()  # pending items, oldest first


def _loop_families(c: LoopCounts) -> Iterator[Metric]:
    # sources x assessments: 3 x 4 series
    fam = CounterMetricFamily(
        "macha_decisions",
        "analysis decisions by source and assessment",
        labels=["source", "assessment"],
    )
    known = list(
        itertools.product([s.value for s in DecisionSource], [a.value for a in Assessment])
    )
    for key in _known_first(known, c.decisions):
        fam.add_metric(list(key), c.decisions.get(key, 0))
    yield fam
    kinds = _known_first(list(action_kinds()), (k for k, _ in c.actions))
    # action kinds x {verified, failed}: 9 x 2 series
    fam = CounterMetricFamily(
        "macha_actions",
        "executed actions by kind and verification result",
        labels=["kind", "result"],
    )
    for key in _known_first(list(itertools.product(kinds, ACTION_RESULTS)), c.actions):
        fam.add_metric(list(key), c.actions.get(key, 0))
    yield fam
    # one histogram per action kind: 9 x (8 buckets + +Inf + sum + count) = 99 series
    hist = HistogramMetricFamily(
        "macha_action_duration_seconds",
        "how long executed actions took, verification included",
        labels=["kind"],
    )
    empty = empty_histogram(ACTION_DURATION_BUCKETS)
    for kind in _known_first(kinds, c.action_durations):
        add_histogram(hist, [kind], c.action_durations.get(kind, empty))
    yield hist
    # policy outcomes: 4 series
    fam = CounterMetricFamily(
        "macha_policy_verdicts", "policy verdicts by outcome", labels=["outcome"]
    )
    for outcome in _known_first([o.value for o in Outcome], c.verdicts):
        fam.add_metric([outcome], c.verdicts.get(outcome, 0))
    yield fam
    yield CounterMetricFamily(
        "macha_rate_limited_actions", "actions refused by a rate limit", value=c.rate_limited
    )
    yield CounterMetricFamily(
        "macha_escalations",
        "fixes that failed verification and went to a human",
        value=c.escalations,
    )
    yield CounterMetricFamily(
        "macha_cycle_errors", "cycles that ended in a bug", value=c.cycle_errors
    )
    yield CounterMetricFamily("macha_cycles", "orchestrator cycles run", value=c.cycles)
    yield GaugeMetricFamily(
        "macha_last_cycle_timestamp_seconds",
        "when the last cycle started",
        value=c.last_cycle_timestamp,
    )
    yield GaugeMetricFamily(
        "macha_last_cycle_duration_seconds",
        "how long the last cycle took",
        value=c.last_cycle_duration,
    )


def _health_families(problems: Mapping[str, str]) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "macha_ready",
        "1 when the sidecar can do its job (what /readyz says)",
        value=0.0 if problems else 1.0,
    )
    # a fixed set of problems (HEALTH_PROBLEMS): 6 series
    problem = GaugeMetricFamily(
        "macha_health_problem",
        "1 while this problem keeps the sidecar from its job (/readyz says why)",
        labels=["problem"],
    )
    for name in HEALTH_PROBLEMS:
        problem.add_metric([name], 1.0 if name in problems else 0.0)
    yield problem


def _state_families(state: PersistentState) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "macha_approvals_pending", "actions waiting for a human", value=state.approvals_pending
    )
    yield from _link_families(state.approval_links)
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


def _link_families(links: tuple[ApprovalLink, ...]) -> Iterator[Metric]:
    """The approvals page's links, for the alerts' annotations (alert_rules: the
    `approvals_url` of MachaApprovalsPending, MachaApprovalPendingItem). A URL as a label
    value is deliberate: it is the alert's link. It is the item's plain address, which
    decides nothing (the page asks for the token), and stable while the item waits, so
    the series, and the alert, do not flap."""
    if not links:
        return  # no series at all while nothing waits: the alert has nothing to link
    # one series: the oldest pending item's page
    oldest = GaugeMetricFamily(
        "macha_approvals_link_info",
        "1 while approvals wait: url is the oldest pending item's page (it needs a login)",
        labels=["url"],
    )
    oldest.add_metric([links[0].url], 1.0)
    yield oldest
    # one series per pending item, at most LINKS_EXPORTED: the queue holds one item per
    # action, so this is a handful; the labels never change while the item waits
    each = GaugeMetricFamily(
        "macha_approval_pending_info",
        "1 per pending approval, with its page's URL (it needs a login)",
        labels=["approval_id", "kind", "risk", "url"],
    )
    for link in links[:LINKS_EXPORTED]:
        each.add_metric([str(link.approval_id), link.kind, link.risk, link.url], 1.0)
    yield each


class SelfCollector(Collector):
    def __init__(
        self,
        stats: LoopStatsView,
        state: Callable[[], PersistentState],
        health: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        """`health` gives the problems that make the sidecar not ready (health.py)."""
        self.stats = stats
        self.state = state
        self.health = health

    def collect(self) -> Iterator[Metric]:
        yield from _loop_families(self.stats.snapshot())
        if self.health is not None:
            yield from _health_families(self.health())
        try:
            state = self.state()
        except Exception:  # an unreadable ledger is /readyz's news; /metrics still answers
            log.warning("cannot read the ledger for the self-metrics", exc_info=True)
            return
        yield from _state_families(state)
