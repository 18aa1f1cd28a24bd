"""The host's collectors, built from the config: the one place that knows all of them."""

from __future__ import annotations

from pathlib import Path

from macha_obs.collect.backups import BackupsCollector
from macha_obs.collect.base import Collector
from macha_obs.collect.boot import BootCollector, read_previous_boot
from macha_obs.collect.disks import DisksCollector
from macha_obs.collect.exposure import ExposureCollector, read_host_changes
from macha_obs.collect.intrusion import AuthFailureTap, IntrusionCollector
from macha_obs.collect.journal import JournalCollector
from macha_obs.collect.meta import MetaStore
from macha_obs.collect.network import NetworkCollector
from macha_obs.collect.nixos import NixosCollector
from macha_obs.collect.resources import ResourcesCollector, Thresholds
from macha_obs.collect.systemd import SystemdCollector, probe_failed_units
from macha_obs.config import Config
from macha_obs.systemd.bus import CollectorBus, IsolatedBus


def build_collectors(
    cfg: Config, meta: MetaStore, bus: CollectorBus | None = None
) -> list[Collector]:
    """Every collector, configured from `cfg`; `meta` keeps the journal cursor and boot id;
    `bus`, the sidecar's one D-Bus child (without it, the systemd collectors start their own)."""
    # the intrusion collector counts auth failures in the journal collector's own read
    tap = AuthFailureTap()
    unit_files = bus if isinstance(bus, IsolatedBus) else None
    return [
        SystemdCollector(
            bus=bus,
            address=cfg.systemd_bus_address,
            timeout=cfg.dbus_timeout,
            flapping_restarts=cfg.flapping_restarts,
        ),
        ResourcesCollector(
            limits=Thresholds(
                memory=cfg.memory_pressure_threshold,
                cpu_busy=cfg.cpu_busy_threshold,
                load_per_cpu=cfg.load_per_cpu_threshold,
                swap=cfg.swap_used_threshold,
            )
        ),
        DisksCollector(
            fill_threshold=cfg.disk_fill_threshold,
            inode_threshold=cfg.inode_threshold,
            nix_store=cfg.nix_root / "nix/store",
            journal_dirs=(cfg.journal_dir,)
            if cfg.journal_dir is not None
            else (Path("/var/log/journal"), Path("/run/log/journal")),
        ),
        JournalCollector(
            meta,
            journal_dir=cfg.journal_dir,
            error_burst=cfg.journal_error_burst,
            sinks=(tap,),
        ),
        NetworkCollector(
            dns_names=cfg.dns_names, tcp_targets=cfg.tcp_targets, timeout=cfg.network_timeout
        ),
        BootCollector(meta, previous_boot=read_previous_boot(cfg.journal_dir)),
        NixosCollector(
            root=cfg.nix_root,
            rollback_window=cfg.nix_rollback_window,
            failed_units=probe_failed_units(cfg.systemd_bus_address, cfg.dbus_timeout, bus=bus),
        ),
        ExposureCollector(
            bus=bus,
            address=cfg.systemd_bus_address,
            dbus_timeout=cfg.dbus_timeout,
            interval=cfg.exposure_interval,
            threshold=cfg.exposure_threshold,
            max_units=cfg.exposure_max_units,
            changes=lambda: read_host_changes(cfg.nix_root),
        ),
        BackupsCollector(
            meta,
            patterns=cfg.backup_units,
            grace=cfg.backup_grace,
            intervals=cfg.backup_intervals,
            bus=bus,
            address=cfg.systemd_bus_address,
            timeout=cfg.dbus_timeout,
        ),
        IntrusionCollector(  # after the journal: this cycle's failures are counted already
            tap,
            state_dir=cfg.state_dir,
            unit_files=unit_files or IsolatedBus(cfg.systemd_bus_address, timeout=cfg.dbus_timeout),
            setid_dirs=cfg.posture_setid_dirs,
            auth_burst=cfg.auth_failure_burst,
            auth_window=cfg.auth_failure_window,
            interval=cfg.posture_interval,
        ),
    ]
