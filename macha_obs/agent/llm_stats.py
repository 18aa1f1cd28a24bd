"""What the model clients count: requests by outcome, tokens and time, for the exporter
(metrics.LlmStatsView reads `outcomes`, `snapshot()`, `durations()`)."""

from __future__ import annotations

import bisect
import threading
from collections import Counter

from macha_obs.agent.endpoint import EndpointUntrusted
from macha_obs.agent.llm_errors import ERROR_KINDS as _TRANSPORT_KINDS

# every outcome a chat can end in besides "ok", a fixed label set for the exporter
ERROR_KINDS = (*_TRANSPORT_KINDS, EndpointUntrusted.kind)


class LlmMetrics:
    """Request counts, errors by kind, tokens and time, read by the exporter (through
    metrics.LlmStatsView: `outcomes`, `snapshot()`, `durations()`)."""

    outcomes = ("ok", *ERROR_KINDS)
    # seconds: a small model on a GPU answers in 0.1 s, a 70B model on CPU in minutes
    buckets = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()  # "ok" or an error kind
        self.tokens_in = 0
        self.tokens_out = 0
        self.duration_sum = 0.0
        self.duration_count = 0
        self.duration_buckets = [0] * (len(self.buckets) + 1)  # per bucket, +Inf last

    def snapshot(self) -> tuple[dict[str, int], int, int, int, float]:
        """(requests by outcome, tokens in, tokens out, request count, seconds), consistent."""
        with self._lock:
            return (
                dict(self.requests),
                self.tokens_in,
                self.tokens_out,
                self.duration_count,
                self.duration_sum,
            )

    def observe(
        self, outcome: str, duration: float, tokens_in: int = 0, tokens_out: int = 0
    ) -> None:
        with self._lock:
            self.requests[outcome] += 1
            self.tokens_in += tokens_in
            self.tokens_out += tokens_out
            self.duration_sum += duration
            self.duration_count += 1
            self.duration_buckets[bisect.bisect_left(self.buckets, duration)] += 1

    def durations(self) -> tuple[tuple[float, ...], tuple[int, ...], float]:
        """(bucket upper bounds, count per bucket with +Inf last, seconds), consistent."""
        with self._lock:
            return self.buckets, tuple(self.duration_buckets), self.duration_sum
