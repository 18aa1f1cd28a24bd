"""Exposure: each running service's `systemd-analyze security` score, at a slow interval.

One `systemd-analyze security UNIT` per running service (argv list, bounded in time,
colours off), parsed by models' `parse_security_table`: systemd 252's `--json` carries no
overall score. A run is slow (a process per service), so the reading is cached and re-run
only once `interval` seconds have passed on the injected clock; between runs every cycle
returns the cached reading and findings. A run scores at most `max_units` services and
stops starting new analyses past RUN_BUDGET seconds (below the cycle's collector timeout);
what it did not reach is named in the reading as skipped and keeps its last score, and
the next run starts with the services scored longest ago. A service whose analysis fails
is an error for that service only.

systemd-analyze talks to the system bus only where systemd is PID 1 (`sd_booted()`):
DBUS_SYSTEM_BUS_ADDRESS, set from `systemd_bus_address`, points it at another bus of a
booted systemd; a systemd in another PID namespace needs a runner that enters it.

Which services listen beyond loopback comes from /proc (exposure_listeners.py).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from macha_obs.collect.base import CollectorError
from macha_obs.collect.exposure_listeners import listening_units
from macha_obs.collect.nixos import PROFILES, parse_generation
from macha_obs.collect.systemd import fetch_units, parse_units
from macha_obs.models import (
    ExposureReading,
    Finding,
    FindingKind,
    HardeningKey,
    ScoredUnit,
    UnitExposure,
    parse_security_table,
)
from macha_obs.systemd.bus import IsolatedBus, UnitTable

# New analyses start only within this many seconds of a run's start: the cycle abandons
# a collector after 30 s (collect/base.py), and a run must never be abandoned midway.
RUN_BUDGET = 20.0
ANALYZE_TIMEOUT = 15.0
# A score that rose by more than this between two runs rose (scores move by 0.1).
ROSE_DELTA = 0.05
# Where systemd-analyze is found: NixOS's system profile first, then the usual places.
ANALYZE_PATH = "/run/current-system/sw/bin:/usr/bin:/bin:/usr/sbin:/sbin"
# The package databases whose mtime changes with an install, upgrade or removal, and the
# links a NixOS switch re-creates; relative to the host's root.
PACKAGE_MARKERS = (
    "var/lib/dpkg/status",
    "var/lib/rpm/rpmdb.sqlite",
    "var/lib/rpm/Packages",
    "var/lib/pacman/local",
    "nix/var/nix/profiles/system",
    "run/current-system",
)
_SERVICES = r".+\.service"

# (argv, env, timeout) -> the finished process; a seam, so a test can enter a namespace
Runner = Callable[[Sequence[str], Mapping[str, str], float], "subprocess.CompletedProcess[str]"]


def run_argv(
    argv: Sequence[str], env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        env=dict(env),
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def security_argv(unit: str) -> list[str]:
    return ["systemd-analyze", "security", "--no-pager", unit]


def analyze_env(bus_address: str | None) -> dict[str, str]:
    env = {"SYSTEMD_COLORS": "0", "PATH": ANALYZE_PATH, "LC_ALL": "C.UTF-8"}
    if bus_address:
        env["DBUS_SYSTEM_BUS_ADDRESS"] = bus_address
    return env


def fetch_security(unit: str, runner: Runner, env: Mapping[str, str], timeout: float) -> str:
    """systemd-analyze's table for `unit`, or CollectorError saying why not."""
    try:
        done = runner(security_argv(unit), env, timeout)
    except FileNotFoundError as exc:
        raise CollectorError("systemd-analyze is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise CollectorError(f"systemd-analyze did not finish within {timeout:g}s") from exc
    if done.returncode != 0:
        why = " ".join(done.stderr.split())[-200:] or "no message"
        raise CollectorError(f"systemd-analyze exited {done.returncode}: {why}")
    return done.stdout


def fetch_running_services(bus: UnitTable, timeout: float) -> list[str]:
    """The services systemd says are active and running now."""
    units = parse_units(fetch_units(bus, _SERVICES, r"", timeout))
    return sorted(u.name for u in units if u.active_state == "active" and u.sub_state == "running")


@dataclass(frozen=True)
class HostChanges:
    """What says the host's software changed: the system generation, the package databases."""

    generation: int | None = None
    packages_changed_at: float | None = None

    def differs(self, other: HostChanges) -> bool:
        return self != other


def read_host_changes(root: Path, markers: Iterable[str] = PACKAGE_MARKERS) -> HostChanges:
    generation = None
    system = root / PROFILES / "system"
    with contextlib.suppress(OSError):
        generation = parse_generation(str(system.readlink()))
    newest: float | None = None
    for marker in markers:
        try:
            mtime = (root / marker).lstat().st_mtime
        except OSError:
            continue
        newest = mtime if newest is None else max(newest, mtime)
    return HostChanges(generation, newest)


def order_for_run(running: Sequence[str], scored_at: Mapping[str, float]) -> list[str]:
    """Never-scored services first, then those scored longest ago; by name within."""
    return sorted(running, key=lambda u: (scored_at.get(u, float("-inf")), u))


def summarize_exposure(
    reading: ExposureReading,
    previous: ExposureReading | None,
    threshold: float,
) -> list[Finding]:
    """service_exposed for listeners above `threshold`; exposure_rose for a score that rose
    since `previous` when the generation or the package databases changed in between."""
    findings = []
    for u in reading.units:
        if u.score is not None and u.listening_non_loopback and u.score > threshold:
            findings.append(
                Finding(
                    kind=FindingKind.SERVICE_EXPOSED,
                    subject=u.unit,
                    unit=u.unit,
                    summary=(
                        f"{u.unit} listens beyond loopback and its exposure is {u.score:.1f} "
                        f"{u.level} (threshold {threshold:g}, {u.unsafe} unsafe settings)"
                    ),
                    details={
                        "score": u.score,
                        "level": u.level,
                        "unsafe": u.unsafe,
                        # what the runbook may propose to harden (catalogue rows only)
                        "hardenable": " ".join(u.hardenable),
                    },
                )
            )
    if previous is None:
        return findings
    changed = HostChanges(previous.generation, previous.packages_changed_at).differs(
        HostChanges(reading.generation, reading.packages_changed_at)
    )
    if not changed:
        return findings
    before = {u.unit: u.score for u in previous.units if u.score is not None}
    for u in reading.units:
        old = before.get(u.unit)
        if u.score is None or old is None or u.score - old <= ROSE_DELTA:
            continue
        if u.scored_at is None or u.scored_at != reading.ran_at:
            continue  # carried over from an older run: nothing new was measured
        findings.append(
            Finding(
                kind=FindingKind.EXPOSURE_ROSE,
                subject=u.unit,
                unit=u.unit,
                summary=(
                    f"{u.unit}'s exposure rose from {old:.1f} to {u.score:.1f} after the "
                    "host's software changed"
                ),
                details={
                    "score": u.score,
                    "previous": old,
                    "generation": reading.generation or 0,
                    "previous_generation": previous.generation or 0,
                },
            )
        )
    return findings


class ExposureCollector:
    name = "exposure"

    def __init__(
        self,
        *,
        bus: UnitTable | None = None,
        address: str | None = None,
        dbus_timeout: float = 10.0,
        interval: float = 3600.0,
        threshold: float = 7.0,
        max_units: int = 200,
        analyze_timeout: float = ANALYZE_TIMEOUT,
        budget: float = RUN_BUDGET,
        runner: Runner = run_argv,
        listening: Callable[[Collection[str]], set[str]] | None = None,
        changes: Callable[[], HostChanges] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """`bus`: the sidecar's D-Bus child (else one of its own on `address`, which is
        also systemd-analyze's bus); `listening(units)`: which of them listen beyond
        loopback (default: /proc); `changes`: the host's software markers (default:
        read under /)."""
        self.bus: UnitTable = IsolatedBus(address, timeout=dbus_timeout) if bus is None else bus
        self.env = analyze_env(address)
        self.dbus_timeout = dbus_timeout
        self.interval = interval
        self.threshold = threshold
        self.max_units = max_units
        self.analyze_timeout = analyze_timeout
        self.budget = budget
        self.runner = runner
        self.listening = listening or (listening_units)
        self.changes = changes or (lambda: read_host_changes(Path("/")))
        self.clock = clock
        self.wall = wall
        self._lock = threading.Lock()
        self._last_run: float | None = None
        self._cached: tuple[ExposureReading, list[Finding]] | None = None
        self._scored: dict[str, ScoredUnit] = {}

    def due(self) -> bool:
        return self._last_run is None or self.clock() - self._last_run >= self.interval

    def collect(self) -> tuple[ExposureReading, list[Finding]]:
        # a run the cycle abandoned may still hold the lock: the cached reading meanwhile
        if not self._lock.acquire(blocking=False):
            if self._cached is None:
                raise CollectorError("the first exposure run has not finished yet")
            return self._cached
        try:
            if self._cached is None or self.due():
                self._cached = self._run()
            return self._cached
        finally:
            self._lock.release()

    def _run(self) -> tuple[ExposureReading, list[Finding]]:
        started, ran_at = self.clock(), self.wall()
        running = fetch_running_services(self.bus, self.dbus_timeout)
        order = order_for_run(
            running, {u: s.scored_at or 0.0 for u, s in self._scored.items() if s.scored_at}
        )
        listening = self.listening(running)
        scored: dict[str, ScoredUnit] = {}
        skipped: list[str] = []
        for unit in order:
            over = len(scored) >= self.max_units or self.clock() - started > self.budget
            if over:
                skipped.append(unit)
                last = self._scored.get(unit)
                if last is not None:  # keeps its last score, and when that was
                    scored[unit] = last.model_copy(
                        update={"listening_non_loopback": unit in listening}
                    )
                continue
            scored[unit] = self._score(unit, unit in listening, ran_at)
        self._scored = {u: s for u, s in scored.items() if s.score is not None}
        self._last_run = started
        changes = self.changes()
        previous = self._cached[0] if self._cached is not None else None
        reading = ExposureReading(
            ran_at=ran_at,
            duration_seconds=max(0.0, self.clock() - started),
            units=[scored[u] for u in sorted(scored)],
            skipped=sorted(skipped),
            generation=changes.generation,
            packages_changed_at=changes.packages_changed_at,
        )
        return reading, summarize_exposure(reading, previous, self.threshold)

    def _score(self, unit: str, listening: bool, ran_at: float) -> ScoredUnit:
        try:
            text = fetch_security(unit, self.runner, self.env, self.analyze_timeout)
            exposure: UnitExposure = parse_security_table(text)
        except (CollectorError, ValueError) as exc:
            return ScoredUnit(
                unit=unit, listening_non_loopback=listening, error=_one_line(str(exc))
            )
        return ScoredUnit(
            unit=unit,
            score=exposure.score,
            level=exposure.level,
            unsafe=exposure.unsafe,
            hardenable=hardenable(exposure),
            listening_non_loopback=listening,
            scored_at=ran_at,
        )


def hardenable(exposure: UnitExposure) -> tuple[str, ...]:
    """The unsafe rows of `exposure` whose setting the hardening catalogue holds."""
    keys = {key.value for key in HardeningKey}
    return tuple(
        s.name for s in exposure.settings if s.safe is False and s.name.split("=", 1)[0] in keys
    )[:32]


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()[:300]
