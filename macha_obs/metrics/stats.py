"""What the metrics room reads from the rooms it measures: small protocols over plain data.

Counters are kept where things happen (`receiver.ReceiverStats`, `agent.llm.LlmMetrics`,
`server.ListenerStats`, and `LoopStats` here for the orchestrator); the collectors read
them through these protocols, so this room imports none of the rooms it measures
(DESIGN.md: `metrics/` may import `models` only), and a test can hand a collector any
small object with the right shape. Each snapshot is one consistent read under the
producer's lock.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Protocol

# A histogram as plain data: (upper bounds, count per bucket with +Inf last, sum).
# Counts are per bucket, not cumulative; the collector accumulates them.
Histogram = tuple[tuple[float, ...], tuple[int, ...], float]


class WebhookStatsView(Protocol):
    """The webhook's counters: {"deliveries": by result, "alerts": by result,
    "truncated": {"alerts": n}}, every known result present (0 before the first)."""

    def snapshot(self) -> dict[str, dict[str, int]]: ...


class LlmStatsView(Protocol):
    """The LLM clients' counters; `outcomes` is every outcome a chat can end in."""

    @property
    def outcomes(self) -> tuple[str, ...]: ...

    def snapshot(self) -> tuple[dict[str, int], int, int, int, float]:
        """(requests by outcome, tokens in, tokens out, request count, seconds)."""
        ...

    def durations(self) -> Histogram: ...


class LoginStatsView(Protocol):
    """The approvals page's refused tokens by reason, every known reason present."""

    def snapshot(self) -> dict[str, int]: ...


class ListenerStatsView(Protocol):
    """The listener's own decisions by outcome, every known outcome present."""

    def snapshot(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class LoopCounts:
    """One consistent read of what the orchestrator decided and did since start."""

    decisions: dict[tuple[str, str], int]  # (source, assessment)
    actions: dict[tuple[str, str], int]  # (kind, result)
    action_durations: dict[str, Histogram]  # by kind
    verdicts: dict[str, int]  # by outcome
    rate_limited: int = 0
    escalations: int = 0
    cycle_errors: int = 0
    cycles: int = 0
    last_cycle_timestamp: float = 0.0
    last_cycle_duration: float = 0.0


class LoopStatsView(Protocol):
    def snapshot(self) -> LoopCounts: ...


@dataclass
class Buckets:
    """Observations counted into fixed buckets: a histogram kept by hand, without a lock
    of its own (its owner holds one)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le is inclusive)
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def histogram(self) -> Histogram:
        return self.bounds, tuple(self.counts), self.total
