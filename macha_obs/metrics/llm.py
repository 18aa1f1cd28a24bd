"""Metrics of the LLM clients, read through `LlmStatsView` on every scrape.

Outcomes are the clients' fixed set ("ok" and one per error kind), all exported from the
start; request time is a histogram whose buckets run from a small model on a GPU (0.1 s)
to a 70B model on CPU (10 min).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from macha_obs.metrics.families import add_histogram
from macha_obs.metrics.stats import LlmStatsView


class LlmCollector(Collector):
    def __init__(self, stats: LlmStatsView) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        requests, tokens_in, tokens_out, _, _ = self.stats.snapshot()
        durations = self.stats.durations()
        # "ok" and one per error kind: 7 series
        fam = CounterMetricFamily(
            "macha_llm_requests", "LLM chat requests by outcome", labels=["outcome"]
        )
        outcomes = self.stats.outcomes
        for outcome in [*outcomes, *sorted(set(requests) - set(outcomes))]:
            fam.add_metric([outcome], requests.get(outcome, 0))
        yield fam
        fam = CounterMetricFamily(
            "macha_llm_tokens", "tokens sent to and produced by the model", labels=["direction"]
        )
        fam.add_metric(["in"], tokens_in)
        fam.add_metric(["out"], tokens_out)
        yield fam
        # one histogram: 13 buckets + +Inf + sum + count = 16 series
        hist = HistogramMetricFamily(
            "macha_llm_request_duration_seconds",
            "time of LLM chat requests, retries included",
        )
        add_histogram(hist, [], durations)
        yield hist
