"""Snapshot: what the collectors saw in one cycle.

The exporter renders the latest Snapshot; scrapes never touch the host. A reading is None
when its collector failed or was not run; a reading that says "nothing here" (not NixOS,
no journal) is a value, not a failure.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from macha_obs.models.backups import BackupsReading
from macha_obs.models.exposure import ExposureReading
from macha_obs.models.findings import Finding
from macha_obs.models.intrusion import IntrusionReading


class CollectorRun(BaseModel):
    """How one collector fared in one cycle (node_exporter's scrape_collector_*)."""

    model_config = ConfigDict(frozen=True)

    success: bool
    duration_seconds: float = Field(ge=0.0)
    error: str = Field("", max_length=500)


class UnitReading(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str = Field(max_length=255)
    load_state: str = ""
    active_state: str = ""
    sub_state: str = ""
    n_restarts: int | None = None  # services only
    state_change_timestamp: float | None = None  # unix seconds; None when systemd has none


class SystemdReading(BaseModel):
    model_config = ConfigDict(frozen=True)

    units: list[UnitReading] = Field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [u.name for u in self.units if u.active_state == "failed"]


# node_exporter's CPU modes (guest time is already inside user and nice, so it is left
# out, as node_cpu_seconds_total leaves it out): a fixed set, one series each.
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


class ResourcesReading(BaseModel):
    """Raw values, as the kernel counts them: what share of the CPUs was busy, or what a
    load average means per CPU, is for the reader to compute over the window it wants."""

    model_config = ConfigDict(frozen=True)

    cpu_count: int = Field(ge=1)
    # seconds spent in each of CPU_MODES since boot, all CPUs together (monotonic)
    cpu_seconds: dict[str, float] = Field(default_factory=dict)
    memory_total_bytes: int = Field(ge=0)
    memory_available_bytes: int = Field(ge=0)
    swap_total_bytes: int = Field(ge=0)
    swap_used_bytes: int = Field(ge=0)
    load1: float = Field(ge=0.0)  # the kernel's load averages, not divided by the CPUs
    load5: float = Field(ge=0.0)
    load15: float = Field(ge=0.0)


class FilesystemReading(BaseModel):
    model_config = ConfigDict(frozen=True)

    mountpoint: str
    device: str
    fstype: str
    size_bytes: int = Field(ge=0)
    avail_bytes: int = Field(ge=0)  # what an unprivileged writer can still use (f_bavail)
    free_bytes: int = Field(ge=0)
    files: int = Field(ge=0)
    files_free: int = Field(ge=0)
    # mounted read-only (ST_RDONLY): it cannot fill up, and nothing on it can be cleaned
    readonly: bool = False


class DisksReading(BaseModel):
    model_config = ConfigDict(frozen=True)

    filesystems: list[FilesystemReading] = Field(default_factory=list)


class JournalReading(BaseModel):
    model_config = ConfigDict(frozen=True)

    entries_read: int = Field(0, ge=0)  # in this cycle
    entries_read_total: int = Field(0, ge=0)  # since process start (a counter)
    errors_by_unit: dict[str, int] = Field(default_factory=dict)  # in this cycle
    errors_total_by_unit: dict[str, int] = Field(default_factory=dict)  # since process start
    # Untrusted text, kept for incident context only: never a label, never an argv.
    recent_messages: dict[str, list[str]] = Field(default_factory=dict)


class ProbeResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    target: str = Field(max_length=300)
    ok: bool
    duration_seconds: float = Field(ge=0.0)
    error: str = Field("", max_length=300)


class NetworkReading(BaseModel):
    model_config = ConfigDict(frozen=True)

    default_route: bool
    dns: list[ProbeResult] = Field(default_factory=list)
    tcp: list[ProbeResult] = Field(default_factory=list)


class BootReading(BaseModel):
    model_config = ConfigDict(frozen=True)

    boot_id: str = Field(max_length=64)
    boot_time: float  # unix seconds
    uptime_seconds: float = Field(ge=0.0)
    # The boot id differs from the one recorded earlier and nobody announced the reboot.
    unexpected_reboot: bool = False


class NixosReading(BaseModel):
    model_config = ConfigDict(frozen=True)

    is_nixos: bool
    generation: int | None = None
    generation_timestamp: float | None = None  # when the current generation was created
    # when the running system last changed (activation of any generation, a rollback too)
    switched_at: float | None = None
    # the generation /run/current-system is (after `nixos-rebuild test` or a rollback it
    # differs from `generation`, the boot default); None: it matches no system-N-link
    running_generation: int | None = None
    generations: int = Field(0, ge=0)
    store_size_bytes: int | None = None  # None: not measured (no readable Nix database)


class Snapshot(BaseModel):
    """One collection cycle: per-collector outcome, readings, and findings."""

    model_config = ConfigDict(frozen=True)

    taken_at: float  # unix seconds, when the cycle started
    hostname: str = Field(max_length=253)
    collectors: dict[str, CollectorRun] = Field(default_factory=dict)
    systemd: SystemdReading | None = None
    resources: ResourcesReading | None = None
    disks: DisksReading | None = None
    journal: JournalReading | None = None
    network: NetworkReading | None = None
    boot: BootReading | None = None
    nixos: NixosReading | None = None
    exposure: ExposureReading | None = None
    backups: BackupsReading | None = None
    intrusion: IntrusionReading | None = None
    findings: list[Finding] = Field(default_factory=list)


SNAPSHOT_READINGS = (
    "systemd",
    "resources",
    "disks",
    "journal",
    "network",
    "boot",
    "nixos",
    "exposure",
    "backups",
    "intrusion",
)
