"""The host exporter: the Prometheus view of the latest Snapshot.

Every collect() builds fresh metric families from the snapshot the collection loop
published last and keeps nothing between scrapes: a scrape never touches the host and
never waits for a collector (registry.py puts it on our own registry beside the
sidecar's own metrics).

Cardinality, family by family, is noted beside each metric: every label value comes
from a fixed set, from the host's units and filesystems, or from the configured probe
targets; never free text.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel

from macha_obs import __version__
from macha_obs.metrics.backups import backup_families
from macha_obs.metrics.exposure import exposure_families
from macha_obs.metrics.intrusion import intrusion_families
from macha_obs.models import (
    CPU_MODES,
    BootReading,
    DisksReading,
    FindingKind,
    JournalReading,
    NetworkReading,
    NixosReading,
    ResourcesReading,
    Snapshot,
    SystemdReading,
)

# systemd's ActiveState values: one series per unit and state, valued 0/1, so that a
# state that comes and goes is a value change, not a series appearing and vanishing.
UNIT_ACTIVE_STATES = ("active", "reloading", "inactive", "failed", "activating", "deactivating")

SnapshotSource = Callable[[], Snapshot | None]

# What node_exporter already exports (filesystem, memory, swap, load, CPU, boot time),
# left out of /metrics when the config says node_exporter runs beside the sidecar: the
# collectors still read them (the sidecar's findings need them), only the export stops.
# The rules then read node_exporter's series (rules.py's node_* variant).
NODE_EXPORTER_FAMILIES = frozenset({
    "macha_cpus", "macha_cpu_seconds", "macha_memory_total_bytes",
    "macha_memory_available_bytes", "macha_swap_total_bytes", "macha_swap_used_bytes",
    "macha_load1", "macha_load5", "macha_load15", "macha_filesystem_size_bytes",
    "macha_filesystem_avail_bytes", "macha_filesystem_free_bytes", "macha_filesystem_files",
    "macha_filesystem_files_free", "macha_filesystem_readonly", "macha_boot_time_seconds",
})  # fmt: skip


def _gauge(name: str, doc: str, value: float | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _systemd(r: SystemdReading) -> Iterator[Metric]:
    # 6 series per unit (units filtered by the collector's include/exclude)
    state = GaugeMetricFamily(
        "macha_systemd_unit_state",
        "systemd unit ActiveState, 1 for the current state",
        labels=["unit", "state"],
    )
    # 1 series per unit; sub states are systemd's fixed enumeration per unit type
    info = GaugeMetricFamily(
        "macha_systemd_unit_info",
        "systemd unit load and sub state",
        labels=["unit", "load_state", "sub_state"],
    )
    # 1 series per service unit
    restarts = CounterMetricFamily(
        "macha_systemd_unit_restarts",
        "automatic restarts of a service (NRestarts)",
        labels=["unit"],
    )
    # 1 series per unit that has changed state since boot
    changed = GaugeMetricFamily(
        "macha_systemd_unit_state_change_timestamp_seconds",
        "when the unit entered its current state",
        labels=["unit"],
    )
    for unit in r.units:
        for name in UNIT_ACTIVE_STATES:
            state.add_metric([unit.name, name], 1.0 if unit.active_state == name else 0.0)
        info.add_metric([unit.name, unit.load_state, unit.sub_state], 1.0)
        if unit.n_restarts is not None:
            restarts.add_metric([unit.name], unit.n_restarts)
        if unit.state_change_timestamp is not None:
            changed.add_metric([unit.name], unit.state_change_timestamp)
    yield from (state, info, restarts, changed)
    # 1 series
    yield _gauge("macha_systemd_units_failed", "units in the failed state", len(r.failed))


def _resources(r: ResourcesReading) -> Iterator[Metric]:
    # Raw values only, as node_exporter exports them: a busy share or a load per CPU is
    # computed by the reader (the rules divide), over the window the reader picks.
    # one series each
    yield _gauge("macha_cpus", "logical CPUs", r.cpu_count)
    # 8 series at most: one per mode of the fixed set CPU_MODES, all CPUs together
    seconds = CounterMetricFamily(
        "macha_cpu_seconds",
        "seconds the CPUs spent in each mode, all CPUs together",
        labels=["mode"],
    )
    for mode in CPU_MODES:
        if mode in r.cpu_seconds:
            seconds.add_metric([mode], r.cpu_seconds[mode])
    yield seconds
    yield _gauge("macha_memory_total_bytes", "physical memory", r.memory_total_bytes)
    yield _gauge(
        "macha_memory_available_bytes",
        "memory available without swapping",
        r.memory_available_bytes,
    )
    yield _gauge("macha_swap_total_bytes", "swap space", r.swap_total_bytes)
    yield _gauge("macha_swap_used_bytes", "swap in use", r.swap_used_bytes)
    # one series each: the kernel's load averages, not divided by the CPU count
    yield _gauge("macha_load1", "1-minute load average", r.load1)
    yield _gauge("macha_load5", "5-minute load average", r.load5)
    yield _gauge("macha_load15", "15-minute load average", r.load15)


def _disks(r: DisksReading) -> Iterator[Metric]:
    # one series per real filesystem and family
    labels = ["mountpoint", "device", "fstype"]
    families = {
        "size_bytes": GaugeMetricFamily(
            "macha_filesystem_size_bytes", "filesystem size", labels=labels
        ),
        "avail_bytes": GaugeMetricFamily(
            "macha_filesystem_avail_bytes", "space available to unprivileged users", labels=labels
        ),
        "free_bytes": GaugeMetricFamily("macha_filesystem_free_bytes", "free space", labels=labels),
        "files": GaugeMetricFamily("macha_filesystem_files", "inodes", labels=labels),
        "files_free": GaugeMetricFamily(
            "macha_filesystem_files_free", "free inodes", labels=labels
        ),
        "readonly": GaugeMetricFamily(
            "macha_filesystem_readonly", "1 when mounted read-only", labels=labels
        ),
    }
    for fs in r.filesystems:
        values = [fs.mountpoint, fs.device, fs.fstype]
        for field, family in families.items():
            family.add_metric(values, float(getattr(fs, field)))
    yield from families.values()


def _journal(r: JournalReading) -> Iterator[Metric]:
    # one series per unit that logged an error since start (bounded by the collector)
    total = CounterMetricFamily(
        "macha_journal_errors", "error entries per unit since start", labels=["unit"]
    )
    # Counters, not a count per read: a burst inside one collection cycle still shows in
    # increase() over the alert's window (a per-read gauge was back to 0 before the rule
    # evaluated it twice).
    for unit, count in sorted(r.errors_total_by_unit.items()):
        total.add_metric([unit], count)
    yield total
    # 1 series
    entries = CounterMetricFamily("macha_journal_entries_read", "journal entries read")
    entries.add_metric([], r.entries_read_total)
    yield entries


def _network(r: NetworkReading) -> Iterator[Metric]:
    yield _gauge(
        "macha_network_default_route", "1 when a default route is up", float(r.default_route)
    )
    # one series per configured name / target and family
    for kind, label, probes in (("dns", "name", r.dns), ("tcp", "target", r.tcp)):
        ok = GaugeMetricFamily(
            f"macha_{kind}_probe_success", f"1 when the {kind} probe succeeded", labels=[label]
        )
        took = GaugeMetricFamily(
            f"macha_{kind}_probe_duration_seconds",
            f"how long the {kind} probe took",
            labels=[label],
        )
        for probe in probes:
            ok.add_metric([probe.target], float(probe.ok))
            took.add_metric([probe.target], probe.duration_seconds)
        yield from (ok, took)


def _boot(r: BootReading) -> Iterator[Metric]:
    yield _gauge("macha_boot_time_seconds", "when the host booted", r.boot_time)
    yield _gauge(
        "macha_boot_unexpected_reboot",
        "1 when this boot followed an unannounced reboot",
        float(r.unexpected_reboot),
    )


def _nixos(r: NixosReading) -> Iterator[Metric]:
    yield _gauge("macha_nixos_present", "1 on NixOS", float(r.is_nixos))
    if not r.is_nixos:
        return
    yield _gauge("macha_nixos_generations", "system generations kept", r.generations)
    if r.generation is not None:
        yield _gauge("macha_nixos_generation", "current system generation", r.generation)
    if r.running_generation is not None:
        yield _gauge(
            "macha_nixos_running_generation",
            "system generation the host runs now (/run/current-system)",
            r.running_generation,
        )
    if r.generation_timestamp is not None:
        yield _gauge(
            "macha_nixos_generation_timestamp_seconds",
            "when the current generation was built",
            r.generation_timestamp,
        )
    if r.store_size_bytes is not None:
        yield _gauge(
            "macha_nix_store_size_bytes", "size of the valid Nix store paths", r.store_size_bytes
        )


def _findings(snapshot: Snapshot) -> Iterator[Metric]:
    # one series per finding kind (15), 0 included, so "no findings" is a value
    family = GaugeMetricFamily(
        "macha_findings", "findings in the latest snapshot by kind", labels=["kind"]
    )
    counts = dict.fromkeys(FindingKind, 0)
    for finding in snapshot.findings:
        counts[finding.kind] += 1
    for kind, count in counts.items():
        family.add_metric([kind.value], count)
    yield family


def _collectors(snapshot: Snapshot) -> Iterator[Metric]:
    # one series per collector (8) and family
    success = GaugeMetricFamily(
        "macha_scrape_collector_success",
        "1 when the collector succeeded in the latest cycle",
        labels=["collector"],
    )
    duration = GaugeMetricFamily(
        "macha_scrape_collector_duration_seconds",
        "how long the collector took in the latest cycle",
        labels=["collector"],
    )
    for name, run in sorted(snapshot.collectors.items()):
        success.add_metric([name], float(run.success))
        duration.add_metric([name], run.duration_seconds)
    yield from (success, duration)


class SnapshotCollector(Collector):
    """Renders whatever `source()` returns now; None (no cycle yet) yields build info only.

    With `node_exporter`, the families node_exporter exports are left out
    (NODE_EXPORTER_FAMILIES): one host, one series per fact."""

    def __init__(
        self,
        source: SnapshotSource,
        *,
        build_info: Mapping[str, str] | None = None,
        node_exporter: bool = False,
    ):
        self.source = source
        self.left_out = NODE_EXPORTER_FAMILIES if node_exporter else frozenset()
        self.build_info = dict(
            build_info
            or {
                "version": __version__,
                "python_version": platform.python_version(),
            }
        )

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "macha_build_info", "macha-obs build information", labels=sorted(self.build_info)
        )
        info.add_metric([self.build_info[k] for k in sorted(self.build_info)], 1.0)
        yield info
        snapshot = self.source()
        if snapshot is None:
            return
        yield _gauge(
            "macha_snapshot_timestamp_seconds",
            "when the latest snapshot was taken",
            snapshot.taken_at,
        )
        yield from _collectors(snapshot)
        yield from _findings(snapshot)
        # a failed collector left its reading None: its families are absent, not zero
        readings: tuple[tuple[Callable[[Any], Iterator[Metric]], BaseModel | None], ...] = (
            (_systemd, snapshot.systemd),
            (_resources, snapshot.resources),
            (_disks, snapshot.disks),
            (_journal, snapshot.journal),
            (_network, snapshot.network),
            (_boot, snapshot.boot),
            (_nixos, snapshot.nixos),
            (exposure_families, snapshot.exposure),
            (backup_families, snapshot.backups),
            (intrusion_families, snapshot.intrusion),
        )
        for families, reading in readings:
            if reading is not None:
                yield from (m for m in families(reading) if m.name not in self.left_out)
