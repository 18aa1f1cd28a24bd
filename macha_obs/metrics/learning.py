"""What the sidecar learned from its operator, as metrics (store/outcomes.py keeps it).

    macha_shadow_decisions_total{kind, agreed}   a person's decision on an item queued in
        suggest/observe, scored against what auto-safe would have done: approving
        agrees when auto-safe would have executed it, rejecting when it would not
    macha_learn_outcomes_total{kind, outcome}   what became of proposals (models'
        LearnOutcome); a `unit` label only with learn_metrics_unit_label = true
    macha_suppressed_fixes                      fixes suppressed now (invariant 14)

The counters are read from totals the store persists and never prunes, so they stay
monotonic across restarts and retention. Every kind x label is exported from the start
at 0 (without the unit label), so `increase()` has a series before the first event.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from macha_obs.metrics.sidecar import action_kinds
from macha_obs.models import LearnOutcome

log = logging.getLogger(__name__)

AGREED = ("true", "false")


@dataclass(frozen=True)
class LearnState:
    """The persisted totals: (metric, kind, label, unit, value) rows, metric being
    "outcome" or "shadow"; and how many fixes are suppressed now."""

    totals: tuple[tuple[str, str, str, str, int], ...] = ()
    suppressed: int = 0


class LearnCollector(Collector):
    def __init__(self, read: Callable[[], LearnState], *, unit_label: bool = False) -> None:
        self.read = read
        self.unit_label = unit_label

    def collect(self) -> Iterator[Metric]:
        try:
            state = self.read()
        except Exception as exc:  # a scrape never fails on the store: the rest still shows
            log.warning("learning metrics unavailable: %s", exc)
            return
        yield from learn_families(state, unit_label=self.unit_label)


# a look and the patches a person applies: nothing runs, so nothing is learned about them
_NOT_LEARNED = ("investigate", "config_change", "harden_unit", "tune_unit", "tune_journald")


def learn_families(state: LearnState, *, unit_label: bool) -> Iterator[Metric]:
    kinds = [k for k in action_kinds() if k not in _NOT_LEARNED]
    shadow: dict[tuple[str, ...], int] = {(k, a): 0 for k in kinds for a in AGREED}
    outcomes: dict[tuple[str, ...], int] = defaultdict(int)
    if not unit_label:
        outcomes.update({(k, o.value): 0 for k in kinds for o in LearnOutcome})
    for metric, kind, label, unit, value in state.totals:
        if metric == "shadow":
            shadow[(kind, label)] = shadow.get((kind, label), 0) + value
        elif metric == "outcome":
            outcomes[(kind, label, unit) if unit_label else (kind, label)] += value
    family = CounterMetricFamily(
        "macha_shadow_decisions",
        "Decisions a person made on items queued in suggest/observe, by whether they agreed "
        "with what auto-safe would have done",
        labels=["kind", "agreed"],
    )
    for labels, value in sorted(shadow.items()):
        family.add_metric(list(labels), value)
    yield family
    family = CounterMetricFamily(
        "macha_learn_outcomes",
        "What became of the sidecar's proposals, by action kind and outcome",
        labels=["kind", "outcome", "unit"] if unit_label else ["kind", "outcome"],
    )
    for labels, value in sorted(outcomes.items()):
        family.add_metric(list(labels), value)
    yield family
    yield GaugeMetricFamily(
        "macha_suppressed_fixes",
        "Fixes not proposed as actions now: rejected or failing verification too often "
        "for the same problem (macha-obs learn shows them)",
        value=state.suppressed,
    )
