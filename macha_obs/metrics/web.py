"""Metrics of the approvals page's logins, read through `LoginStatsView` on every scrape.

Only the reason is a label (a fixed set the page's stats always hold in full); never the
address a wrong token came from: that is in the log, not worth a series per guesser.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from macha_obs.metrics.stats import LoginStatsView


class LoginCollector(Collector):
    def __init__(self, stats: LoginStatsView) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        # one series per reason: wrong_token (checked and wrong), throttled (refused
        # unchecked, its address still waiting): 2 series
        fam = CounterMetricFamily(
            "macha_web_login_failures",
            "tokens the approvals page refused (login form or bearer header), by reason",
            labels=["reason"],
        )
        for reason, n in self.stats.snapshot().items():
            fam.add_metric([reason], n)
        yield fam
