"""systemd: every unit's load/active/sub state, NRestarts and last state change.

The D-Bus I/O runs in a child process (systemd_probe.py) killed at `timeout`: pystemd
keeps the GIL while it waits on the bus, so an in-process bound cannot work (see the
probe's docstring). A stalled bus therefore fails this collector, and nothing else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from macha_obs.collect.base import CollectorError
from macha_obs.models import (
    Finding,
    FindingKind,
    InvalidUnitName,
    Severity,
    SystemdReading,
    UnitReading,
    validate_unit_name,
)

PROBE = Path(__file__).with_name("systemd_probe.py")
# node_exporter's default: these types are numerous, rarely actionable, and would
# multiply the unit-state series (6 per unit) for no alert we write.
DEFAULT_INCLUDE = r".+"
DEFAULT_EXCLUDE = r".+\.(?:automount|device|mount|scope|slice)"

Probe = Callable[[Sequence[str], float], str]


def run_probe(argv: Sequence[str], timeout: float) -> str:
    """Run the probe as a child process; its stdout, or CollectorError."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:  # run() has killed the child already
        raise CollectorError(f"systemd did not answer on D-Bus within {timeout:g}s") from exc
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip()[-300:]
        raise CollectorError(f"systemd probe failed ({done.returncode}): {detail}")
    return done.stdout.decode()


def probe_argv(address: str | None, include: str, exclude: str) -> list[str]:
    # -I: the child ignores PYTHON* variables and the user's site; it gets our sys.path
    # explicitly instead, which is what finds pystemd (in a venv or a Nix wrapper alike).
    search = os.pathsep.join(p for p in sys.path if p)
    argv = [sys.executable, "-I", str(PROBE), "--include", include, "--exclude", exclude]
    argv += ["--sys-path", search]
    return [*argv, "--address", address] if address else argv


def parse_units(text: str) -> list[UnitReading]:
    """The probe's JSON → readings; a malformed row is skipped, never fatal."""
    data: Any = json.loads(text)
    readings = []
    for row in data.get("units", []):
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


class SystemdCollector:
    name = "systemd"

    def __init__(
        self,
        *,
        address: str | None = None,
        timeout: float = 10.0,
        include: str = DEFAULT_INCLUDE,
        exclude: str = DEFAULT_EXCLUDE,
        flapping_restarts: int = 3,
        flapping_window: float = 900.0,
        probe: Probe = run_probe,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.argv = probe_argv(address, include, exclude)
        self.timeout = timeout
        self.flapping_restarts = flapping_restarts
        self.flapping_window = flapping_window
        self.probe = probe
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

    def collect(self) -> tuple[SystemdReading, list[Finding]]:
        units = parse_units(self.probe(self.argv, self.timeout))
        recent = self._recent_restarts(units, self.clock())
        return SystemdReading(units=units), summarize_units(units, recent, self.flapping_restarts)
