"""Family builders the collectors share: histograms from plain bucket counts."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from macha_obs.metrics.stats import Histogram


def empty_histogram(bounds: tuple[float, ...]) -> Histogram:
    """No observations yet: every bucket present at 0, so rate() and
    histogram_quantile() have a series before the first one."""
    return bounds, (0,) * (len(bounds) + 1), 0.0


def add_histogram(family: HistogramMetricFamily, labels: Sequence[str], data: Histogram) -> None:
    """One labelled histogram into `family`, its bucket counts made cumulative."""
    bounds, counts, total = data
    les = [floatToGoString(b) for b in bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
    running, buckets = 0, []
    for le, count in zip(les, counts, strict=True):
        running += count
        buckets.append((le, float(running)))
    family.add_metric(list(labels), buckets, total)
