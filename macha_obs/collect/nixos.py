"""NixOS: the current system generation, its age, how many there are, the Nix store size.

When the running system is not the booted one, a switch happened at the mtime of
/run/current-system (activation re-creates the link); units that failed within
`rollback_window` seconds after it are reported as UNITS_FAILED_AFTER_SWITCH, for which a
runbook proposes nix_rollback (always queued for a human).

The store size is the sum of `narSize` over Nix's own database of valid paths: one
indexed query instead of a `du` over the store, and still remeasured at most every
`store_size_interval` seconds. Off NixOS the reading says so (is_nixos=False): a clean
"nothing to see", not a failure.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from macha_obs.models import Finding, FindingKind, NixosReading, Severity

_GENERATION = re.compile(r"^system-(\d+)-link$")
PROFILES = Path("nix/var/nix/profiles")
NIX_DB = Path("nix/var/nix/db/db.sqlite")
CURRENT = Path("run/current-system")
BOOTED = Path("run/booted-system")
# After a switch, failed units are looked up for this long (one probe per cycle); a
# failure that qualified keeps its finding, and so its queued rollback, that long.
SWITCH_WATCH = 86400.0
# (unit, unix seconds it entered its state or None), for the units that are failed now
FailedUnits = Callable[[], Sequence[tuple[str, float | None]]]


def parse_generation(link_target: str) -> int | None:
    """'system-42-link' (or a path ending in it) → 42."""
    match = _GENERATION.match(Path(link_target).name)
    return int(match.group(1)) if match else None


def count_generations(names: Iterable[str]) -> int:
    return sum(1 for name in names if _GENERATION.match(name))


def store_size(db: Path) -> int | None:
    """Bytes of all valid store paths per Nix's database; None when it cannot be read."""
    if not db.exists():
        return None
    try:
        # read-only: Nix owns this database and may be writing to it right now
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)
        try:
            row = conn.execute("SELECT COALESCE(SUM(narSize), 0) FROM ValidPaths").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return int(row[0])


def running_generation(root: Path, names: Iterable[str]) -> int | None:
    """N of the system-N-link that points where /run/current-system points; None when
    the link is missing or the running system is no generation in the profile."""
    try:
        running = (root / CURRENT).readlink()
    except OSError:
        return None
    profiles = root / PROFILES
    for name in names:
        generation = parse_generation(name)
        if generation is None:
            continue
        try:
            if (profiles / name).readlink() == running:
                return generation
        except OSError:
            continue
    return None


def switch_time(root: Path) -> float | None:
    """When the running system became one other than the booted one; None if it is the
    booted one (a boot is no switch) or either link is missing."""
    current, booted = root / CURRENT, root / BOOTED
    try:
        if current.readlink() == booted.readlink():
            return None
        return current.lstat().st_mtime
    except OSError:
        return None


def summarize_switch(
    switched_at: float | None,
    generation: int | None,
    failed: Sequence[tuple[str, float | None]],
    window: float,
) -> list[Finding]:
    """A finding when units failed within `window` seconds after the switch."""
    if switched_at is None:
        return []
    broke = sorted(u for u, t in failed if t is not None and 0 <= t - switched_at <= window)
    if not broke:
        return []
    gen = f"generation {generation}" if generation is not None else "a new generation"
    shown = ", ".join(broke[:10]) + (f" and {len(broke) - 10} more" if len(broke) > 10 else "")
    return [
        Finding(
            kind=FindingKind.UNITS_FAILED_AFTER_SWITCH,
            severity=Severity.CRITICAL,
            subject="host",
            summary=f"{shown} failed within {window:.0f}s after the switch to {gen}"[:500],
            details={
                "generation": generation or 0,
                "switched_at": switched_at,
                "units": ",".join(broke[:20]),
            },
        )
    ]


class NixosCollector:
    name = "nixos"

    def __init__(
        self,
        *,
        root: Path = Path("/"),
        store_size_interval: float = 3600.0,
        rollback_window: float = 900.0,
        failed_units: FailedUnits | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """`failed_units` (e.g. `probe_failed_units`): without it no switch is judged."""
        self.root = root
        self.store_size_interval = store_size_interval
        self.rollback_window = rollback_window
        self.failed_units = failed_units
        self.clock = clock
        self.wall = wall
        self._size: int | None = None
        self._measured_at: float | None = None

    def is_nixos(self) -> bool:
        return (self.root / "etc/NIXOS").exists() or (self.root / "run/current-system").exists()

    def _measure_store(self) -> int | None:
        now = self.clock()
        if self._measured_at is None or now - self._measured_at >= self.store_size_interval:
            self._size = store_size(self.root / NIX_DB)
            self._measured_at = now
        return self._size

    def collect(self) -> tuple[NixosReading, list[Finding]]:
        if not self.is_nixos():
            return NixosReading(is_nixos=False), []
        profiles = self.root / PROFILES
        generation = timestamp = None
        system = profiles / "system"
        if system.is_symlink():
            generation = parse_generation(str(system.readlink()))
            if generation is not None:
                link = profiles / f"system-{generation}-link"
                # the link's own mtime is when nix-env created this generation
                timestamp = link.lstat().st_mtime if link.is_symlink() else None
        names = [p.name for p in profiles.iterdir()] if profiles.is_dir() else []
        switched = switch_time(self.root)
        reading = NixosReading(
            is_nixos=True,
            generation=generation,
            generation_timestamp=timestamp,
            switched_at=switched,
            running_generation=running_generation(self.root, names),
            generations=count_generations(names),
            store_size_bytes=self._measure_store(),
        )
        return reading, self._after_switch(switched, generation)

    def _after_switch(self, switched: float | None, generation: int | None) -> list[Finding]:
        if switched is None or self.failed_units is None:
            return []
        if self.wall() - switched > SWITCH_WATCH:
            return []
        return summarize_switch(switched, generation, self.failed_units(), self.rollback_window)
