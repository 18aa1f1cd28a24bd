"""Snapshot files in the state directory: written atomically, kept to a bounded number."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from macha_obs.models import Snapshot

log = logging.getLogger(__name__)

PREFIX = "snapshot_"
SUFFIX = ".json"


def snapshot_name(taken_at: float) -> str:
    # Fixed-width UTC with microseconds: names sort in time order as plain strings.
    stamp = datetime.fromtimestamp(taken_at, UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{PREFIX}{stamp}{SUFFIX}"


def snapshot_files(state_dir: Path) -> list[Path]:
    """Snapshot files, oldest first."""
    return sorted(p for p in state_dir.glob(f"{PREFIX}*{SUFFIX}") if p.is_file())


def write_snapshot(state_dir: Path, snapshot: Snapshot, retention: int) -> Path:
    """Write `snapshot` (temp file, fsync, rename, fsync dir), then keep the newest `retention`."""
    if retention < 1:
        raise ValueError("retention must be at least 1")
    state_dir.mkdir(parents=True, exist_ok=True)
    target = state_dir / snapshot_name(snapshot.taken_at)
    fd, tmp_name = tempfile.mkstemp(prefix=".snapshot-", suffix=".tmp", dir=state_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(snapshot.model_dump_json().encode())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    # The rename is durable only once the directory entry is on disk.
    dir_fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    for old in snapshot_files(state_dir)[:-retention]:
        with contextlib.suppress(FileNotFoundError):  # another process pruned it first
            old.unlink()
    return target


def latest_snapshot(state_dir: Path) -> Snapshot | None:
    """The newest readable snapshot; unreadable or invalid files are skipped, not fatal."""
    for path in reversed(snapshot_files(state_dir)):
        try:
            return Snapshot.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            log.warning("skipping unreadable snapshot %s: %s", path, exc)
    return None
