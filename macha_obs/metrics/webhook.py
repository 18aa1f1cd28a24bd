"""Metrics of the Alertmanager webhook, read through `WebhookStatsView` on every scrape.

Label values come from the receiver's fixed sets (delivery and alert results), which its
snapshot always holds in full, never from payloads.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from macha_obs.metrics.stats import WebhookStatsView


class WebhookCollector(Collector):
    def __init__(self, stats: WebhookStatsView) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        snap = self.stats.snapshot()
        # one series per delivery result: 8 series
        fam = CounterMetricFamily(
            "macha_webhook_deliveries", "webhook deliveries by result", labels=["result"]
        )
        for result, n in snap["deliveries"].items():
            fam.add_metric([result], n)
        yield fam
        # new / duplicate (HA peers, repeats) / ignored (other hosts): 3 series
        fam = CounterMetricFamily(
            "macha_webhook_alerts", "alerts in accepted deliveries by result", labels=["result"]
        )
        for result, n in snap["alerts"].items():
            fam.add_metric([result], n)
        yield fam
        yield CounterMetricFamily(
            "macha_webhook_truncated_alerts",
            "alerts Alertmanager left out of notifications (truncatedAlerts)",
            value=snap["truncated"]["alerts"],
        )
