"""Findings: what a collector saw that may need attention, and which collector says so."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from macha_obs.models.units import UnitName


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class FindingKind(StrEnum):
    UNIT_FAILED = "unit_failed"
    UNIT_FLAPPING = "unit_flapping"
    DISK_FILLING = "disk_filling"
    INODES_LOW = "inodes_low"
    MEMORY_PRESSURE = "memory_pressure"
    JOURNAL_ERROR_BURST = "journal_error_burst"
    DNS_FAILING = "dns_failing"
    TARGET_UNREACHABLE = "target_unreachable"
    UNEXPECTED_REBOOT = "unexpected_reboot"
    # units failed soon after the running NixOS generation changed: the switch is suspect
    UNITS_FAILED_AFTER_SWITCH = "units_failed_after_switch"
    # the host is busy: CPU time, runnable load per CPU, swap in use (resources)
    CPU_HIGH = "cpu_high"
    LOAD_HIGH = "load_high"
    SWAP_HIGH = "swap_high"
    # posture: exposure. A service listening beyond loopback scores above the threshold;
    # a service's score rose after a generation switch or a package change
    SERVICE_EXPOSED = "service_exposed"
    EXPOSURE_ROSE = "exposure_rose"
    # posture: backups (collect/backups.py): the last run failed; no success for too long
    BACKUP_FAILED = "backup_failed"
    BACKUP_STALE = "backup_stale"
    # a service killed at its own MemoryMax, again: a raise is proposed as a patch
    UNIT_OOM_AT_LIMIT = "unit_oom_at_limit"
    # posture: intrusion signs (collect/intrusion.py), each only ever investigated
    AUTH_FAILURES = "auth_failures"
    NEW_LISTENER = "new_listener"
    NEW_ENABLED_UNIT = "new_enabled_unit"
    NEW_SETID_FILE = "new_setid_file"


# The collector that reports each kind: when it fails, what it would say is unknown.
FINDING_SOURCE: dict[FindingKind, str] = {
    FindingKind.UNIT_FAILED: "systemd",
    FindingKind.UNIT_FLAPPING: "systemd",
    FindingKind.DISK_FILLING: "disks",
    FindingKind.INODES_LOW: "disks",
    FindingKind.MEMORY_PRESSURE: "resources",
    FindingKind.JOURNAL_ERROR_BURST: "journal",
    FindingKind.DNS_FAILING: "network",
    FindingKind.TARGET_UNREACHABLE: "network",
    FindingKind.UNEXPECTED_REBOOT: "boot",
    FindingKind.UNITS_FAILED_AFTER_SWITCH: "nixos",
    FindingKind.CPU_HIGH: "resources",
    FindingKind.LOAD_HIGH: "resources",
    FindingKind.SWAP_HIGH: "resources",
    FindingKind.SERVICE_EXPOSED: "exposure",
    FindingKind.EXPOSURE_ROSE: "exposure",
    FindingKind.BACKUP_FAILED: "backups",
    FindingKind.BACKUP_STALE: "backups",
    FindingKind.UNIT_OOM_AT_LIMIT: "systemd",
    FindingKind.AUTH_FAILURES: "intrusion",
    FindingKind.NEW_LISTENER: "intrusion",
    FindingKind.NEW_ENABLED_UNIT: "intrusion",
    FindingKind.NEW_SETID_FILE: "intrusion",
}


class Finding(BaseModel):
    """Something a collector saw that may need attention."""

    model_config = ConfigDict(frozen=True)

    kind: FindingKind
    severity: Severity = Severity.WARNING
    subject: str = Field(max_length=300, description="unit, mountpoint, name or target")
    summary: str = Field(max_length=500)
    unit: UnitName | None = None
    details: dict[str, str | float | int | bool] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.kind.value}:{self.subject}"
