"""systemd: every unit's load/active/sub state, NRestarts and last state change.

The D-Bus I/O runs in the sidecar's long-lived D-Bus child (systemd/child.py), bounded by
`timeout`: pystemd keeps the GIL while it waits on the bus, so an in-process bound cannot
work. A stalled bus therefore fails this collector (the child is killed and the next call
starts a new one), and nothing else.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from macha_obs.collect.base import CollectorError
from macha_obs.errors import SystemdError
from macha_obs.models import (
    Finding,
    FindingKind,
    InvalidUnitName,
    Severity,
    SystemdReading,
    UnitReading,
    UnitState,
    size_text,
    validate_unit_name,
)
from macha_obs.systemd.bus import IsolatedBus, UnitTable
from macha_obs.systemd.events import UnitEvent

# node_exporter's default: these types are numerous, rarely actionable, and would
# multiply the unit-state series (6 per unit) for no alert we write.
DEFAULT_INCLUDE = r".+"
DEFAULT_EXCLUDE = r".+\.(?:automount|device|mount|scope|slice)"
NO_LIMIT = 2**64 - 1  # MemoryMax=infinity
OOM_KILLS = 2  # killed at its limit this often (by systemd's restarts or our own sight)


def fetch_units(bus: UnitTable, include: str, exclude: str, timeout: float) -> list[Any]:
    """The unit table from the D-Bus child, or CollectorError (a stalled bus, no bus)."""
    try:
        return bus.unit_table(include, exclude, timeout)
    except SystemdError as exc:
        raise CollectorError(f"systemd over D-Bus: {exc}") from exc


def parse_units(rows: Sequence[Any]) -> list[UnitReading]:
    """The child's rows → readings; a malformed row is skipped, never fatal."""
    readings = []
    for row in rows:
        try:
            name, load, active, sub, restarts, changed_usec = row
            readings.append(
                UnitReading(
                    name=validate_unit_name(str(name)),
                    load_state=str(load),
                    active_state=str(active),
                    sub_state=str(sub),
                    n_restarts=None if restarts is None else int(restarts),
                    state_change_timestamp=int(changed_usec) / 1e6 if changed_usec else None,
                )
            )
        except (ValueError, TypeError, InvalidUnitName):
            continue
    return readings


def restarts_in_window(samples: Iterable[tuple[float, int]], now: float, window: float) -> int:
    """Restarts counted within `window` seconds from (time, NRestarts) samples, oldest first."""
    recent = [n for t, n in samples if now - t <= window]
    return recent[-1] - recent[0] if recent else 0


def summarize_units(
    units: Iterable[UnitReading], restarts_recent: dict[str, int], flapping_restarts: int
) -> list[Finding]:
    findings = []
    for unit in units:
        if unit.active_state == "failed":
            findings.append(
                Finding(
                    kind=FindingKind.UNIT_FAILED,
                    severity=Severity.CRITICAL,
                    subject=unit.name,
                    unit=unit.name,
                    summary=f"{unit.name} has failed ({unit.sub_state})",
                    details={"load_state": unit.load_state, "sub_state": unit.sub_state},
                )
            )
        recent = restarts_recent.get(unit.name, 0)
        if recent >= flapping_restarts:
            findings.append(
                Finding(
                    kind=FindingKind.UNIT_FLAPPING,
                    subject=unit.name,
                    unit=unit.name,
                    summary=f"{unit.name} restarted {recent} times recently",
                    details={"restarts": recent, "n_restarts": unit.n_restarts or 0},
                )
            )
    return findings


def oom_at_limit(state: UnitState, seen_kills: int) -> Finding | None:
    """A service killed by the OOM killer at its own MemoryMax, repeatedly: systemd
    restarted it at least once before this kill, or the collector saw `seen_kills`
    distinct kills. A unit without a limit, or killed once, is not this finding."""
    limited = 0 < state.memory_max < NO_LIMIT
    if state.result != "oom-kill" or not limited:
        return None
    kills = max(seen_kills, state.n_restarts + 1)
    if kills < OOM_KILLS:
        return None
    return Finding(
        kind=FindingKind.UNIT_OOM_AT_LIMIT,
        subject=state.name,
        unit=state.name,
        summary=(
            f"{state.name} was killed at its MemoryMax ({size_text(state.memory_max)}) "
            f"{kills} times"
        ),
        details={"memory_max": state.memory_max, "kills": kills, "result": state.result},
    )


def _troubled(unit: UnitReading) -> bool:
    """A service systemd has just stopped: failed, or waiting to restart it."""
    stopped = unit.active_state == "failed" or unit.sub_state == "auto-restart"
    return stopped and unit.name.endswith(".service")


class SystemdCollector:
    name = "systemd"

    def __init__(
        self,
        *,
        bus: UnitTable | None = None,
        address: str | None = None,
        timeout: float = 10.0,
        include: str = DEFAULT_INCLUDE,
        exclude: str = DEFAULT_EXCLUDE,
        flapping_restarts: int = 3,
        flapping_window: float = 900.0,
        clock: Callable[[], float] = time.time,
        unit_state: Callable[[str], UnitState] | None = None,
    ) -> None:
        """`bus`: the sidecar's shared D-Bus child; without it, one of its own on `address`.
        `unit_state` reads a stopped service's result and MemoryMax (by default the bus's)."""
        self.bus: UnitTable = IsolatedBus(address, timeout=timeout) if bus is None else bus
        self.unit_state = unit_state or getattr(self.bus, "unit_state", None)
        self._kills: dict[str, set[int]] = {}  # state-change times of OOM kills seen
        self.include = include
        self.exclude = exclude
        self.timeout = timeout
        self.flapping_restarts = flapping_restarts
        self.flapping_window = flapping_window
        self.clock = clock
        self._history: dict[str, deque[tuple[float, int]]] = {}

    def _recent_restarts(self, units: list[UnitReading], now: float) -> dict[str, int]:
        seen = {u.name for u in units}
        for gone in self._history.keys() - seen:  # bounded by the units that exist now
            del self._history[gone]
        recent = {}
        for unit in units:
            if unit.n_restarts is None:
                continue
            history = self._history.setdefault(unit.name, deque(maxlen=256))
            if history and unit.n_restarts < history[-1][1]:
                history.clear()  # NRestarts resets on an explicit stop
            history.append((now, unit.n_restarts))
            while history and now - history[0][0] > self.flapping_window:
                history.popleft()
            recent[unit.name] = restarts_in_window(history, now, self.flapping_window)
        return recent

    def _oom_findings(self, units: list[UnitReading]) -> list[Finding]:
        """One more call per stopped service (rare): was it killed at its limit?"""
        for gone in self._kills.keys() - {u.name for u in units}:
            del self._kills[gone]
        found = []
        for unit in units:
            if self.unit_state is None or not _troubled(unit):
                continue
            try:
                state = self.unit_state(unit.name)
            except SystemdError:
                continue  # this one is unknown now; the rest still counts
            if state.result == "oom-kill":
                kills = self._kills.setdefault(unit.name, set())
                if len(kills) < 64:
                    kills.add(state.state_change_usec)
            finding = oom_at_limit(state, len(self._kills.get(unit.name, ())))
            if finding is not None:
                found.append(finding)
        return found

    def collect(self) -> tuple[SystemdReading, list[Finding]]:
        units = parse_units(fetch_units(self.bus, self.include, self.exclude, self.timeout))
        recent = self._recent_restarts(units, self.clock())
        findings = summarize_units(units, recent, self.flapping_restarts)
        return SystemdReading(units=units), findings + self._oom_findings(units)


def probe_failed_units(
    address: str | None, timeout: float, *, bus: UnitTable | None = None
) -> Callable[[], list[tuple[str, float | None]]]:
    """The failed units and when they failed (for the NixOS collector's switch check),
    through `bus` (the shared D-Bus child) or, without it, a child of its own."""
    source: UnitTable = IsolatedBus(address, timeout=timeout) if bus is None else bus

    def fetch() -> list[tuple[str, float | None]]:
        units = parse_units(fetch_units(source, DEFAULT_INCLUDE, DEFAULT_EXCLUDE, timeout))
        return [(u.name, u.state_change_timestamp) for u in units if u.active_state == "failed"]

    return fetch


def unit_failed_finding(event: UnitEvent) -> Finding:
    """A unit seen entering `failed` on D-Bus, as the finding the collector would make."""
    return Finding(
        kind=FindingKind.UNIT_FAILED,
        severity=Severity.CRITICAL,
        subject=event.unit,
        unit=event.unit,
        summary=f"{event.unit} entered failed ({event.sub_state})",
        details={"source": "dbus", "sub_state": event.sub_state},
    )
