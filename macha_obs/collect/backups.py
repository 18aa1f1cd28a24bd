"""Backups that ran: each backup service's last run and result, its last success, and
whether it is older than its expected interval plus a grace period.

Backup units are named by glob (`backup_units`, matched over the canonical unit name as
protected.py matches), found among the loaded units and the unit files through the
sidecar's D-Bus child. The expected interval is the operator's (`backup_intervals`),
else the timer's that triggers the unit, else a day. systemd forgets a unit's last run
at a reboot, so the last run and the last success are kept in the store (MetaStore);
a unit that never succeeded is as old as the first time the sidecar saw it.
"""

from __future__ import annotations

import fnmatch
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from macha_obs.collect.base import CollectorError
from macha_obs.collect.meta import MetaStore
from macha_obs.errors import SystemdError
from macha_obs.models import (
    BackupReading,
    BackupsReading,
    Finding,
    FindingKind,
    IntervalSource,
    InvalidUnitName,
    validate_unit_name,
)
from macha_obs.systemd.bus import IsolatedBus, UnitRuns

DAY = 86400.0
DEFAULT_INTERVAL = DAY
META_PREFIX = "backups."
# systemd's normalized OnCalendar= forms (`systemd-analyze calendar`) whose period is plain:
# "*-*-* 02:30:00" is daily, "*-*-* *:15:00" hourly, "Mon *-*-* 00:00:00" weekly...
_T = r"\d{2}:\d{2}:\d{2}"
_CALENDAR_PERIODS: tuple[tuple[re.Pattern[str], float], ...] = tuple(
    (re.compile(pattern), seconds)
    for pattern, seconds in (
        (r"\*-\*-\* \*:\d{2}:\d{2}", 3600.0),
        (rf"\*-\*-\* {_T}", DAY),
        (rf"[A-Z][a-z]{{2}} \*-\*-\* {_T}", 7 * DAY),
        (rf"\*-\*-\d{{2}} {_T}", 31 * DAY),
        (rf"\*-\d{{2}}-\d{{2}} {_T}", 366 * DAY),
    )
)
_MONOTONIC_PERIODS = ("OnUnitActiveUSec", "OnUnitInactiveUSec")
_BUSY = frozenset({"activating", "deactivating", "reloading"})


def matches(unit: str, patterns: Iterable[str]) -> bool:
    """Glob over the canonical unit name (fnmatchcase), never a substring."""
    return any(fnmatch.fnmatchcase(unit, pattern) for pattern in patterns)


def fetch_runs(bus: UnitRuns, patterns: Sequence[str], timeout: float) -> list[Any]:
    """The matching services from the D-Bus child, or CollectorError."""
    try:
        return bus.unit_runs(list(patterns), timeout)
    except SystemdError as exc:
        raise CollectorError(f"systemd over D-Bus: {exc}") from exc


@dataclass(frozen=True)
class SystemdRun:
    """What systemd says of one backup unit now (it forgets at a reboot)."""

    unit: str
    load_state: str
    active_state: str
    result: str
    exit_status: int | None
    last_run: float | None
    success: bool | None
    running: bool
    timer: str | None
    timer_interval: float | None


def _usec(value: Any) -> float | None:
    seconds = int(value or 0) / 1e6
    return seconds if seconds > 0 else None


def timer_interval(timer: Mapping[str, Any]) -> float | None:
    """A timer's period in seconds: OnUnitActiveSec=/OnUnitInactiveSec=, a plain
    OnCalendar= form, else the span from its last trigger to its next; with its
    RandomizedDelaySec= on top (a run may come that much later). None: it says nothing."""
    delay = _usec(timer.get("RandomizedDelayUSec")) or 0.0
    for base, value in timer.get("TimersMonotonic") or []:
        if base in _MONOTONIC_PERIODS and _usec(value):
            return float(_usec(value) or 0) + delay
    for _base, spec in timer.get("TimersCalendar") or []:
        for pattern, seconds in _CALENDAR_PERIODS:
            if pattern.fullmatch(str(spec)):
                return seconds + delay
    last, following = (
        _usec(timer.get("LastTriggerUSec")),
        _usec(timer.get("NextElapseUSecRealtime")),
    )
    if last is not None and following is not None and following > last:
        return following - last + delay
    return None


def parse_run(row: Mapping[str, Any]) -> SystemdRun:
    """One row of the D-Bus child's `unit_runs` → what systemd says; ValueError if bad."""
    unit = validate_unit_name(str(row["name"]))
    active = str(row.get("ActiveState", ""))
    result = str(row.get("Result", ""))
    status = int(row.get("ExecMainStatus", 0) or 0)
    last = _usec(row.get("ExecMainExitTimestamp"))
    if last is None and _usec(row.get("InactiveExitTimestamp")) is not None:
        last = _usec(row.get("InactiveEnterTimestamp"))  # ended before its main process ran
    if active == "failed":
        success: bool | None = False
    elif last is not None:
        success = result == "success" and status == 0
    else:
        success = None
    running = active in _BUSY or str(row.get("SubState", "")) == "running"
    timers = [t for t in row.get("timers") or [] if isinstance(t, Mapping)]
    intervals = [i for i in (timer_interval(t) for t in timers) if i is not None]
    return SystemdRun(
        unit=unit,
        load_state=str(row.get("LoadState", "")),
        active_state=active,
        result=result,
        exit_status=status if last is not None else None,
        last_run=last,
        success=success,
        running=running,
        timer=validate_unit_name(str(timers[0]["name"])) if timers else None,
        # several timers: the unit runs at least as often as the most frequent one
        timer_interval=min(intervals) if intervals else None,
    )


def parse_runs(rows: Sequence[Any], patterns: Sequence[str]) -> list[SystemdRun]:
    """The rows of units that match `patterns`, once each; a malformed row is skipped."""
    runs: dict[str, SystemdRun] = {}
    for row in rows:
        try:
            run = parse_run(row)
        except (KeyError, TypeError, ValueError, InvalidUnitName):
            continue
        if run.load_state != "not-found" and matches(run.unit, patterns):
            runs.setdefault(run.unit, run)
    return list(runs.values())


def expected_interval(
    run: SystemdRun, intervals: Mapping[str, float]
) -> tuple[float, IntervalSource]:
    """The operator's interval for the unit (first glob that matches), else its timer's,
    else a day."""
    for pattern, seconds in intervals.items():
        if fnmatch.fnmatchcase(run.unit, pattern):
            return seconds, IntervalSource.CONFIG
    if run.timer_interval is not None:
        return run.timer_interval, IntervalSource.TIMER
    return DEFAULT_INTERVAL, IntervalSource.DEFAULT


@dataclass(frozen=True)
class Remembered:
    """What the store keeps of one backup unit across restarts and reboots."""

    first_seen: float
    last_run: float | None = None
    last_run_success: bool | None = None
    last_success: float | None = None

    def encode(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def decode(cls, text: str | None, now: float) -> Remembered:
        try:
            data = json.loads(text or "")
            return cls(
                first_seen=float(data["first_seen"]),
                last_run=None if data.get("last_run") is None else float(data["last_run"]),
                last_run_success=None
                if data.get("last_run_success") is None
                else bool(data["last_run_success"]),
                last_success=None
                if data.get("last_success") is None
                else float(data["last_success"]),
            )
        except (ValueError, TypeError, KeyError):
            return cls(first_seen=now)  # never seen, or unreadable: from now on


def remember(known: Remembered, run: SystemdRun) -> Remembered:
    """`known` brought up to what systemd says now: a newer run replaces the last run; a
    success moves the last success forward, never back."""
    last_run, ok = known.last_run, known.last_run_success
    if run.last_run is not None and (last_run is None or run.last_run >= last_run):
        last_run, ok = run.last_run, run.success
    elif run.success is False and run.last_run is None:
        ok = False  # failed before its main process ever ran
    last_success = known.last_success
    if ok and last_run is not None and (last_success is None or last_run > last_success):
        last_success = last_run
    return Remembered(known.first_seen, last_run, ok, last_success)


def summarize_backups(reading: BackupsReading, now: float) -> list[Finding]:
    findings = []
    for unit in reading.units:
        if unit.last_run_success is False and not unit.running:
            findings.append(
                Finding(
                    kind=FindingKind.BACKUP_FAILED,
                    subject=unit.unit,
                    unit=unit.unit,
                    summary=f"backup {unit.unit} failed (result {unit.result or '-'}, "
                    f"status {unit.exit_status if unit.exit_status is not None else '-'})",
                    details={"result": unit.result, "active_state": unit.active_state},
                )
            )
        if unit.stale(now, reading.grace_seconds) and not unit.running:
            since = "last succeeded" if unit.last_success is not None else "first seen"
            findings.append(
                Finding(
                    kind=FindingKind.BACKUP_STALE,
                    subject=unit.unit,
                    unit=unit.unit,
                    summary=f"backup {unit.unit} {since} {unit.age(now) / 3600:.1f} h ago "
                    f"(expected every {unit.expected_interval_seconds / 3600:.1f} h "
                    f"+ {reading.grace_seconds / 3600:.1f} h grace)",
                    details={
                        "age_seconds": round(unit.age(now)),
                        "expected_interval_seconds": unit.expected_interval_seconds,
                        "never_succeeded": unit.last_success is None,
                    },
                )
            )
    return findings


class BackupsCollector:
    name = "backups"

    def __init__(
        self,
        meta: MetaStore,
        *,
        patterns: Sequence[str],
        grace: float,
        intervals: Mapping[str, float] | None = None,
        bus: UnitRuns | None = None,
        address: str | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`bus`: the sidecar's shared D-Bus child; without it, one of its own on `address`."""
        self.meta = meta
        self.patterns = tuple(patterns)
        self.grace = grace
        self.intervals = dict(intervals or {})
        self.bus: UnitRuns = IsolatedBus(address, timeout=timeout) if bus is None else bus
        self.timeout = timeout
        self.clock = clock

    def _reading(self, run: SystemdRun, now: float) -> BackupReading:
        key = f"{META_PREFIX}{run.unit}"
        stored = self.meta.get_meta(key)
        known = remember(Remembered.decode(stored, now), run)
        if known.encode() != stored:  # written only when something changed
            self.meta.set_meta(key, known.encode())
        interval, source = expected_interval(run, self.intervals)
        # systemd's result and status describe the remembered run only if it still knows it
        current = run.last_run is not None and run.last_run == known.last_run
        return BackupReading(
            unit=run.unit,
            load_state=run.load_state,
            active_state=run.active_state,
            result=run.result if current else "",
            exit_status=run.exit_status if current else None,
            timer=run.timer,
            last_run=known.last_run,
            last_run_success=known.last_run_success,
            last_success=known.last_success,
            first_seen=known.first_seen,
            expected_interval_seconds=interval,
            interval_source=source,
            running=run.running,
        )

    def collect(self) -> tuple[BackupsReading, list[Finding]]:
        now = self.clock()
        if not self.patterns:
            return BackupsReading(grace_seconds=self.grace), []
        runs = parse_runs(fetch_runs(self.bus, self.patterns, self.timeout), self.patterns)
        reading = BackupsReading(
            units=[self._reading(run, now) for run in runs], grace_seconds=self.grace
        )
        return reading, summarize_backups(reading, now)
