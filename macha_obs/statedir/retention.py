"""Retention: every file in the state directory stays bounded.

The logs are rotated by size, by rename only (`log` → `log.1` → … → `log.<keep>`, the
oldest deleted): a rename is atomic, so a crash mid-rotation leaves at worst a gap in the
numbering, never a lost, copied or half-truncated record. Audit appenders hold an flock
on the file while they write and check after locking that the name still points at
their file (`audit.py`); rotation takes the same lock, so a record lands whole in the
file that was current when it was written, and a torn last line from a crash stays at
the end of the rotated file, where the reader already expects it. The daemon's log
handler reopens `orchestrator.log` when its name moves (`daemon.py`).

The database tables (inbox, seen alerts, incidents and their alerts) are pruned and
capped by `store/intake_bounds.py` (the caps also at every delivery); `Store.retain` runs
both, and the daemon's timer cycle calls it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from macha_obs.statedir import StateDir, fsync_dir, open_file


class RetentionSettings(Protocol):
    """What retention is told; `Config` has these fields (see config.py for bounds)."""

    @property
    def inbox_retention(self) -> float: ...
    @property
    def inbox_max_rows(self) -> int: ...
    @property
    def incident_retention(self) -> float: ...
    @property
    def incident_max_resolved(self) -> int: ...
    @property
    def inbox_max_bytes(self) -> int: ...
    @property
    def incident_max_open(self) -> int: ...
    @property
    def incident_max_alerts(self) -> int: ...
    @property
    def incident_alerts_max_bytes(self) -> int: ...
    @property
    def log_max_bytes(self) -> int: ...
    @property
    def log_keep(self) -> int: ...
    @property
    def snapshot_retention(self) -> int: ...


@dataclass(frozen=True)
class Retention:
    """Retention settings on their own (tests, benchmarks); the defaults are Config's."""

    inbox_retention: float = 7 * 86400.0
    inbox_max_rows: int = 10_000
    incident_retention: float = 30 * 86400.0
    incident_max_resolved: int = 10_000
    inbox_max_bytes: int = 32 * 1024 * 1024
    incident_max_open: int = 500
    incident_max_alerts: int = 1000
    incident_alerts_max_bytes: int = 32 * 1024 * 1024
    log_max_bytes: int = 16 * 1024 * 1024
    log_keep: int = 5
    snapshot_retention: int = 20


@dataclass
class RetentionReport:
    """What one retention pass removed."""

    inbox: int = 0
    alerts_seen: int = 0
    incidents: int = 0
    learned: int = 0  # learning records (outcomes.py) pruned
    rotated: list[str] = field(default_factory=list)
    snapshots: int = 0
    vacuumed: bool = False


def rotate_if_big(state: StateDir, log: Path, max_bytes: int, keep: int) -> bool:
    """Rotate `log` when it is `max_bytes` or more; True if it was rotated."""
    try:
        fd = open_file(log, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        # the audit writers' lock: no record is half in one file and half in the next
        fcntl.flock(fd, fcntl.LOCK_EX)
        same = os.fstat(fd)
        try:
            now = os.lstat(log)
        except FileNotFoundError:
            return False
        if (now.st_dev, now.st_ino) != (same.st_dev, same.st_ino) or same.st_size < max_bytes:
            return False  # rotated meanwhile by another process, or small enough
        names = state.rotated(log, keep)
        with contextlib.suppress(FileNotFoundError):
            names[-1].unlink()
        for older, newer in zip(reversed(names[1:]), reversed(names[:-1]), strict=True):
            with contextlib.suppress(FileNotFoundError):
                os.replace(newer, older)
        os.replace(log, names[0])
        # beyond `keep` (the setting was lowered): gone too
        n = keep + 1
        while (extra := log.with_name(f"{log.name}.{n}")).exists():
            extra.unlink()
            n += 1
    finally:
        os.close(fd)
    fsync_dir(log.parent)
    return True


def keep_snapshots(state: StateDir, keep: int) -> int:
    """Delete all but the newest `keep` snapshots; how many went."""
    if keep < 1:
        raise ValueError("retention must be at least 1")
    gone = 0
    for old in state.snapshots()[:-keep]:
        with contextlib.suppress(FileNotFoundError):  # another process pruned it first
            old.unlink()
            gone += 1
    return gone


def retain_files(state: StateDir, settings: RetentionSettings) -> RetentionReport:
    """Rotate the logs that outgrew `log_max_bytes` and keep the newest snapshots."""
    report = RetentionReport()
    for log in state.logs:
        if rotate_if_big(state, log, settings.log_max_bytes, settings.log_keep):
            report.rotated.append(log.name)
    report.snapshots = keep_snapshots(state, settings.snapshot_retention)
    return report
