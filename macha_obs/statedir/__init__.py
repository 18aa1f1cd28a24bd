"""The state directory: every path in it, its trust checks (owner, modes, O_NOFOLLOW),
atomic writes. It imports nothing of ours but the error tree and the config."""

from macha_obs.statedir.files import (
    BASELINE_MAX_BYTES,
    SNAPSHOT_PREFIX,
    SNAPSHOT_SUFFIX,
    StateDir,
    StateDirError,
    check_dir,
    check_file,
    drop_to_owner,
    fsync_dir,
    open_file,
    read_bounded,
    refuse_symlink,
    write_atomic,
)

__all__ = [
    "BASELINE_MAX_BYTES",
    "SNAPSHOT_PREFIX",
    "SNAPSHOT_SUFFIX",
    "StateDir",
    "StateDirError",
    "check_dir",
    "check_file",
    "drop_to_owner",
    "fsync_dir",
    "open_file",
    "read_bounded",
    "refuse_symlink",
    "write_atomic",
]
