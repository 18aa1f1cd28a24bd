"""Backups that ran, as metric families (host.py renders them from the Snapshot).

Cardinality: one series per family and backup unit that exists on the host and matches
`backup_units` (a handful); a timestamp family has no series for a unit that never did
the thing (no run, no success), so "never" is absence, never a zero that reads as 1970.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from macha_obs.models import BackupsReading


def backup_families(r: BackupsReading) -> Iterator[Metric]:
    # 1 series per backup unit seen succeed (remembered across restarts and reboots)
    success = GaugeMetricFamily(
        "macha_backup_last_success_timestamp_seconds",
        "when the backup unit last finished successfully",
        labels=["unit"],
    )
    # 1 series per backup unit seen run
    run = GaugeMetricFamily(
        "macha_backup_last_run_timestamp_seconds",
        "when the backup unit's last run ended",
        labels=["unit"],
    )
    # 1 series per backup unit seen run
    ok = GaugeMetricFamily(
        "macha_backup_last_run_success",
        "1 when the backup unit's last run succeeded, 0 when it failed",
        labels=["unit"],
    )
    # 1 series per backup unit
    interval = GaugeMetricFamily(
        "macha_backup_expected_interval_seconds",
        "how often the backup unit is expected to run (config, its timer, else a day)",
        labels=["unit"],
    )
    # 1 series per backup unit: the age of "never succeeded" (MachaBackupStale)
    seen = GaugeMetricFamily(
        "macha_backup_first_seen_timestamp_seconds",
        "when the sidecar first saw the backup unit",
        labels=["unit"],
    )
    for unit in r.units:
        if unit.last_success is not None:
            success.add_metric([unit.unit], unit.last_success)
        if unit.last_run is not None:
            run.add_metric([unit.unit], unit.last_run)
        if unit.last_run_success is not None:
            ok.add_metric([unit.unit], float(unit.last_run_success))
        interval.add_metric([unit.unit], unit.expected_interval_seconds)
        seen.add_metric([unit.unit], unit.first_seen)
    yield from (success, run, ok, interval, seen)
