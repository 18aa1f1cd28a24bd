"""Snapshot files in the state directory: written atomically, kept to a bounded number.

Their names and their retention are the state directory's (`store.StateDir`,
`store.retention.keep_snapshots`); this module writes and reads the Snapshot in them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import ValidationError

from macha_obs.models import Snapshot
from macha_obs.statedir import StateDir, StateDirError, write_atomic
from macha_obs.statedir.retention import keep_snapshots

log = logging.getLogger(__name__)


def snapshot_name(taken_at: float) -> str:
    return StateDir(Path()).snapshot(taken_at).name


def snapshot_files(state_dir: Path) -> list[Path]:
    """Snapshot files, oldest first."""
    return StateDir(state_dir).snapshots()


def write_snapshot(state_dir: Path, snapshot: Snapshot, retention: int) -> Path:
    """Write `snapshot` (temp file, fsync, rename, fsync dir), then keep the newest `retention`."""
    if retention < 1:
        raise ValueError("retention must be at least 1")
    state = StateDir(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    target = state.snapshot(snapshot.taken_at)
    try:
        write_atomic(target, snapshot.model_dump_json().encode())
    except StateDirError as exc:  # a planted file: refused like a full disk, never fatal
        raise OSError(str(exc)) from exc
    keep_snapshots(state, retention)
    return target


def latest_snapshot(state_dir: Path) -> Snapshot | None:
    """The newest readable snapshot; unreadable or invalid files are skipped, not fatal."""
    for path in reversed(StateDir(state_dir).snapshots()):
        try:
            return Snapshot.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            log.warning("skipping unreadable snapshot %s: %s", path, exc)
    return None
