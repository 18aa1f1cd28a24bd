"""Metrics of the webhook receiver and the LLM clients, rendered fresh on every scrape.

Label values come from fixed sets (delivery results, LLM outcomes), never from payloads.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from macha_obs.agent.llm import ERROR_KINDS, LlmMetrics
from macha_obs.receiver import DELIVERY_RESULTS, ReceiverStats


class BrainCollector(Collector):
    def __init__(self, receiver: ReceiverStats | None, llm: LlmMetrics | None) -> None:
        self.receiver = receiver
        self.llm = llm

    def collect(self) -> Iterator[Metric]:
        if self.receiver is not None:
            yield from self._receiver(self.receiver)
        if self.llm is not None:
            yield from self._llm(self.llm)

    @staticmethod
    def _receiver(stats: ReceiverStats) -> Iterator[Metric]:
        snap = stats.snapshot()
        # one series per delivery result: 8 series
        fam = CounterMetricFamily(
            "macha_webhook_deliveries", "webhook deliveries by result", labels=["result"]
        )
        for result in DELIVERY_RESULTS:
            fam.add_metric([result], snap["deliveries"].get(result, 0))
        yield fam
        # new / duplicate (HA peers, repeats) / ignored (other hosts): 3 series
        fam = CounterMetricFamily(
            "macha_webhook_alerts", "alerts in accepted deliveries by result", labels=["result"]
        )
        for result in ("new", "duplicate", "ignored"):
            fam.add_metric([result], snap["alerts"].get(result, 0))
        yield fam
        yield CounterMetricFamily(
            "macha_webhook_truncated_alerts",
            "alerts Alertmanager left out of notifications (truncatedAlerts)",
            value=snap["truncated"]["alerts"],
        )

    @staticmethod
    def _llm(m: LlmMetrics) -> Iterator[Metric]:
        requests, tokens_in, tokens_out, count, total = m.snapshot()
        # "ok" and one per error kind: 6 series
        fam = CounterMetricFamily(
            "macha_llm_requests", "LLM chat requests by outcome", labels=["outcome"]
        )
        for outcome in ("ok", *ERROR_KINDS):
            fam.add_metric([outcome], requests.get(outcome, 0))
        yield fam
        fam = CounterMetricFamily(
            "macha_llm_tokens", "tokens sent to and produced by the model", labels=["direction"]
        )
        fam.add_metric(["in"], tokens_in)
        fam.add_metric(["out"], tokens_out)
        yield fam
        yield SummaryMetricFamily(
            "macha_llm_request_duration_seconds",
            "time of LLM chat requests, retries included",
            count_value=count,
            sum_value=total,
        )
