"""Metrics of the Alertmanager pull intake, read through `PullStatsView` on every scrape.

Labels are small fixed sets (poll, round and alert results, from the intake's own
tuples) and `peer`, the configured Alertmanagers' host:port: bounded by the config,
never taken from an answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class PullStatsView(Protocol):
    """The pull intake's counters (`macha_obs.intake.pull_stats.PullStats.snapshot`):
    polls by (peer, result), rounds and alerts by result, each peer's last success and
    up, and why each failing peer's last poll failed ("failing", over "reasons")."""

    def snapshot(self) -> dict[str, Any]: ...


class PullCollector(Collector):
    def __init__(self, stats: PullStatsView) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        snap = self.stats.snapshot()
        yield _family(
            CounterMetricFamily,
            "macha_alertmanager_pulls",
            "polls of an Alertmanager peer's API v2 by result",
            ["peer", "result"],
            {peer_result: float(n) for peer_result, n in snap["polls"].items()},
        )
        yield _family(
            CounterMetricFamily,
            "macha_alertmanager_pull_rounds",
            "pull rounds (every peer asked once): complete, partial (a peer failed: nothing"
            " resolves), failed (no peer answered), store_error",
            ["result"],
            {(result,): float(n) for result, n in snap["rounds"].items()},
        )
        yield _family(
            CounterMetricFamily,
            "macha_alertmanager_pull_alerts",
            "pulled alerts by result: new, duplicate (HA peers, the webhook), ignored (other"
            " hosts), invalid, resolved (gone from every peer)",
            ["result"],
            {(result,): float(n) for result, n in snap["alerts"].items()},
        )
        yield _family(
            GaugeMetricFamily,
            "macha_alertmanager_pull_up",
            "1 when the last poll of the peer gave a usable answer",
            ["peer"],
            {(peer,): 1.0 if ok else 0.0 for peer, ok in snap["up"].items()},
        )
        # peers (bounded by the config) x the fixed failure results: at most 16 x 5
        failing = snap.get("failing", {})
        yield _family(
            GaugeMetricFamily,
            "macha_alertmanager_pull_peer_failing",
            "1 for the reason the peer's last poll failed (timeout: it stalled past its"
            " deadline; too_large: past a bound; invalid; http_error; unreachable)",
            ["peer", "reason"],
            {
                (peer, reason): 1.0 if failing.get(peer) == reason else 0.0
                for peer in snap["up"]
                for reason in snap.get("reasons", ())
            },
        )
        yield _family(
            GaugeMetricFamily,
            "macha_alertmanager_pull_last_success_timestamp_seconds",
            "when the peer last gave a usable answer",
            ["peer"],
            {(peer,): when for peer, when in snap["last_success"].items()},
        )


def _family(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    documentation: str,
    labels: list[str],
    values: dict[tuple[str, ...], float],
) -> Metric:
    """One family, its series in label order (a stable exposition)."""
    family = kind(name, documentation, labels=labels)
    for label_values, value in sorted(values.items()):
        family.add_metric(list(label_values), value)
    return family
