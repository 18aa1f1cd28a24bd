"""NixOS: the current system generation, its age, how many there are, the Nix store size.

The store size is the sum of `narSize` over Nix's own database of valid paths: one
indexed query instead of a `du` over the store, and still remeasured at most every
`store_size_interval` seconds. Off NixOS the reading says so (is_nixos=False): a clean
"nothing to see", not a failure.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from macha_obs.models import Finding, NixosReading

_GENERATION = re.compile(r"^system-(\d+)-link$")
PROFILES = Path("nix/var/nix/profiles")
NIX_DB = Path("nix/var/nix/db/db.sqlite")


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


class NixosCollector:
    name = "nixos"

    def __init__(
        self,
        *,
        root: Path = Path("/"),
        store_size_interval: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.store_size_interval = store_size_interval
        self.clock = clock
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
        reading = NixosReading(
            is_nixos=True,
            generation=generation,
            generation_timestamp=timestamp,
            generations=count_generations(names),
            store_size_bytes=self._measure_store(),
        )
        return reading, []
