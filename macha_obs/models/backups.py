"""Backups that ran: each backup unit's last run, its result, its last success, and how
often it is expected to run.

systemd forgets a unit's last run at a reboot; the backups collector remembers the last
run and the last success in the state directory, so a reading says what the host did,
not only what it did since it booted.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from macha_obs.models.units import UnitName


class IntervalSource(StrEnum):
    """Where a backup's expected interval came from."""

    CONFIG = "config"  # backup_intervals names the unit
    TIMER = "timer"  # the timer that triggers it (OnCalendar=, OnUnitActiveSec=...)
    DEFAULT = "default"  # no timer that says: one day


class BackupReading(BaseModel):
    """One backup unit: what systemd says now, and what the sidecar remembers."""

    model_config = ConfigDict(frozen=True)

    unit: UnitName
    load_state: str = ""
    active_state: str = ""
    result: str = ""  # systemd's Result of the last run ("success", "exit-code"...)
    exit_status: int | None = None  # ExecMainStatus of the last run
    timer: UnitName | None = None  # the timer that triggers it, if any
    last_run: float | None = None  # unix seconds the last run ended; None: never seen
    last_run_success: bool | None = None  # None: never seen run
    last_success: float | None = None  # unix seconds; None: never seen succeed
    first_seen: float  # when the sidecar first saw the unit (the age of "never")
    expected_interval_seconds: float = Field(gt=0)
    interval_source: IntervalSource = IntervalSource.DEFAULT
    running: bool = False  # a run is under way now

    def age(self, now: float) -> float:
        """Seconds since the last success, or since first seen when it never succeeded."""
        return max(0.0, now - (self.last_success or self.first_seen))

    def stale(self, now: float, grace: float) -> bool:
        return self.age(now) > self.expected_interval_seconds + grace


class BackupsReading(BaseModel):
    model_config = ConfigDict(frozen=True)

    units: list[BackupReading] = Field(default_factory=list)
    grace_seconds: float = Field(0.0, ge=0)
