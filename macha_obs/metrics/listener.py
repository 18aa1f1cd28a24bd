"""The HTTP listener's own decisions, read through `ListenerStatsView` on every scrape.

Each connection ends in exactly one outcome from the listener's fixed set (served, or
refused or closed by one of its bounds), all exported from the start at 0, so a
listener that sheds load (saturated, evicted, timed_out) shows in `increase()` and in
an alert rule, not only in a client's error log.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from macha_obs.metrics.stats import ListenerStatsView


class ListenerCollector(Collector):
    def __init__(self, stats: ListenerStatsView) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        # one series per outcome: 9 series
        fam = CounterMetricFamily(
            "macha_listener_connections",
            "connections the HTTP listener ended, by how (served, or which bound refused it)",
            labels=["result"],
        )
        for result, n in self.stats.snapshot().items():
            fam.add_metric([result], n)
        yield fam
