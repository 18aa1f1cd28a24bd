"""The exposure reading as metric families (host.py renders them with the rest).

Cardinality: one series per family for each running service the latest run scored (at
most `exposure_max_units`, and only services that run), plus a fixed handful.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from macha_obs.models import ExposureReading

# how a running service fared in the latest run: a fixed set, one series each
OUTCOMES = ("scored", "failed", "skipped")


def exposure_families(r: ExposureReading) -> Iterator[Metric]:
    # one series per scored running service
    score = GaugeMetricFamily(
        "macha_unit_security_exposure",
        "systemd-analyze security's overall exposure of a running service (0 best, 10 worst)",
        labels=["unit"],
    )
    # one series per scored running service
    unsafe = GaugeMetricFamily(
        "macha_unit_security_unsafe_settings",
        "settings systemd-analyze security marks unsafe for a running service",
        labels=["unit"],
    )
    # one series per running service the run looked at (scored or failed)
    listening = GaugeMetricFamily(
        "macha_unit_listening_non_loopback",
        "1 when a running service has a socket listening on a non-loopback address",
        labels=["unit"],
    )
    for u in r.units:
        listening.add_metric([u.unit], float(u.listening_non_loopback))
        if u.score is not None:
            score.add_metric([u.unit], u.score)
            unsafe.add_metric([u.unit], u.unsafe)
    yield from (score, unsafe, listening)
    # 3 series: OUTCOMES
    outcomes = GaugeMetricFamily(
        "macha_security_exposure_units",
        "running services in the latest exposure run, by outcome",
        labels=["outcome"],
    )
    # a skipped service keeps its last score: scored counts this run's scores only
    scored = sum(1 for u in r.units if u.score is not None and u.scored_at == r.ran_at)
    counts = {"scored": scored, "failed": len(r.failed), "skipped": len(r.skipped)}
    for outcome in OUTCOMES:
        outcomes.add_metric([outcome], counts[outcome])
    yield outcomes
    # one series each
    yield GaugeMetricFamily(
        "macha_security_exposure_run_timestamp_seconds",
        "when the latest exposure run started",
        value=r.ran_at,
    )
    yield GaugeMetricFamily(
        "macha_security_exposure_run_seconds",
        "how long the latest exposure run took",
        value=r.duration_seconds,
    )
    if r.packages_changed_at is not None:
        yield GaugeMetricFamily(
            "macha_packages_changed_timestamp_seconds",
            "newest change of the package databases or the NixOS system profile, as of "
            "the latest exposure run",
            value=r.packages_changed_at,
        )
