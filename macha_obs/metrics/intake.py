"""What the intake's caps dropped (store/intake_bounds.py), read on every scrape.

The label is a fixed set (body, seen_key, alert, incident), every value present from the
start, never anything from a payload.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


class DropStatsView(Protocol):
    """The caps' drops since start, by what (`Store.intake_drops`)."""

    def snapshot(self) -> dict[str, int]: ...


class IntakeDropCollector(Collector):
    def __init__(self, drops: DropStatsView) -> None:
        self.drops = drops

    def collect(self) -> Iterator[Metric]:
        # one series per kind of evidence a cap drops: 4 series
        fam = CounterMetricFamily(
            "macha_intake_dropped",
            "evidence the intake's caps dropped to keep the state bounded, oldest first",
            labels=["what"],
        )
        for what, n in self.drops.snapshot().items():
            fam.add_metric([what], n)
        yield fam
