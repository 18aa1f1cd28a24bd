"""Intrusion signs on /metrics: authentication failures by service, and the posture
against the accepted baseline. No username, address or path is ever a label value."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from macha_obs.models import AUTH_SERVICES, IntrusionReading


def intrusion_families(r: IntrusionReading) -> Iterator[Metric]:
    # 3 series: service in the fixed set AUTH_SERVICES (sshd, sudo, su), 0 included, so
    # increase() has a series from the sidecar's start
    failures = CounterMetricFamily(
        "macha_auth_failures",
        "authentication failures seen in the journal since the sidecar started, by service",
        labels=["service"],
    )
    for service in AUTH_SERVICES:
        failures.add_metric([service], r.auth_failures_total.get(service, 0))
    yield failures
    if r.baseline_at is None:
        return  # no baseline accepted (or unreadable): nothing to compare, nothing to say
    # 1 series each, no labels: which sockets, units and files is in the findings
    yield GaugeMetricFamily(
        "macha_posture_baseline_timestamp_seconds",
        "when the posture baseline was accepted (macha-obs posture accept)",
        value=r.baseline_at,
    )
    counts = (
        ("unaccepted_listeners", r.unaccepted_listeners, "listening sockets not in the baseline"),
        ("new_enabled_units", r.new_enabled_units, "enabled units not in the baseline"),
        ("new_setid_files", r.new_setid_files, "setuid/setgid files not in the baseline"),
    )
    for name, items, doc in counts:
        if items is not None:  # None: not compared (the bus did not answer)
            yield GaugeMetricFamily(f"macha_posture_{name}", doc, value=len(items))
