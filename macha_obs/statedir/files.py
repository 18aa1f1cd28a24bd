"""The state directory: every path in it, and the trust checks on opening them.

`StateDir` is the one place that knows the layout (the store, the daemon's lock and log,
`macha-logs`, the token file and the snapshot writer all ask it); `retention.py` keeps
each file bounded.

On NixOS the daemon's user owns the state dir, and `macha-obs`/`macha-approve` are run
as root. Whoever owns the dir can plant `daemon.lock -> /etc/shadow`; a root process
that then opens `daemon.lock` by name truncates /etc/shadow. So:

- a root CLI first becomes the state dir's owner (`drop_to_owner`), as the NixOS
  wrappers do, on every distribution: whatever is planted, it can then only touch what
  the service user could touch anyway;
- every state file is opened without following symlinks (O_NOFOLLOW) and checked after
  opening: a regular file, owned by us, not writable by anyone else;
- the directory itself must not be writable by others (a sticky /tmp-like dir would let
  any user swap files in it), and is owned by us or root.

Nothing here imports the rest of the package.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from macha_obs.errors import StateError


class StateDirError(StateError):
    """The state dir or one of its files cannot be trusted; the message says what to do."""


def check_dir(path: Path) -> None:
    """Refuse a state dir that is a symlink, not a directory, writable by others, or owned
    by a user other than us or root."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return  # created by the caller, with our mode
    if stat.S_ISLNK(info.st_mode):
        raise StateDirError(f"{path} is a symlink; the state dir must be a real directory")
    if not stat.S_ISDIR(info.st_mode):
        raise StateDirError(f"{path} is not a directory")
    if info.st_mode & 0o022:
        raise StateDirError(
            f"{path} is writable by other users (mode {stat.S_IMODE(info.st_mode):04o}): "
            f"they could swap the sidecar's files; run: chmod go-w {path}"
        )
    if info.st_uid not in (os.geteuid(), 0):
        raise StateDirError(
            f"{path} belongs to uid {info.st_uid}, not to this user ({os.geteuid()}); run "
            "the sidecar and its commands as the state dir's owner"
        )


def check_file(path: Path, info: os.stat_result) -> None:
    """An opened state file: a regular file of ours that nobody else can write."""
    if not stat.S_ISREG(info.st_mode):
        raise StateDirError(f"{path} is not a regular file; remove it")
    if info.st_uid != os.geteuid():
        raise StateDirError(
            f"{path} belongs to uid {info.st_uid}, not to this user ({os.geteuid()}); "
            f"remove it or chown it to the state dir's owner"
        )
    if info.st_mode & 0o022:
        raise StateDirError(
            f"{path} is writable by others (mode {stat.S_IMODE(info.st_mode):04o}); run: "
            f"chmod go-w {path}"
        )


def open_file(path: Path, flags: int, mode: int = 0o640) -> int:
    """os.open without following a symlink, checked after opening (see `check_file`)."""
    # O_NONBLOCK: a FIFO planted under a state file's name must not hang the opener
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the name is a symlink
            raise StateDirError(
                f"{path} is a symlink; state files are never followed: remove it"
            ) from exc
        if exc.errno == errno.ENXIO:  # a FIFO nobody reads
            raise StateDirError(f"{path} is not a regular file; remove it") from exc
        raise
    try:
        check_file(path, os.fstat(fd))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def refuse_symlink(path: Path) -> None:
    """For files a library opens by name (SQLite): refuse a planted symlink up front."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise StateDirError(f"{path} is a symlink; state files are never followed: remove it")
    check_file(path, info)


def drop_to_owner(state_dir: Path, before: Callable[[], None] | None = None) -> str | None:
    """Run as root: become the owner of an existing state dir (uid, gid, no supplementary
    groups) before anything in it is touched; the user's name, or None when there was
    nothing to do (not root, no dir yet, or root owns it). `before` runs just before the
    drop, while root can still read what the owner may not (the interpreter's files)."""
    if os.geteuid() != 0:
        return None
    try:
        info = os.lstat(state_dir)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode) or info.st_uid == 0:
        return None  # check_dir refuses the first; root's own dir needs no drop
    if before is not None:
        before()
    os.setgroups([])
    os.setgid(info.st_gid)
    os.setuid(info.st_uid)  # permanent: real, effective and saved
    try:
        return pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        return str(info.st_uid)


def write_atomic(path: Path, data: bytes, mode: int = 0o640) -> None:
    """Replace `path` with `data` whole: a temporary file beside it, fsynced, renamed over
    it, the directory fsynced. A crash at any instant leaves the old file or the new one,
    never a torn one. A name that is not a regular file of ours (a planted symlink) is
    refused and left for a person to look at; the rename would only replace the link,
    but nothing here writes where it was not asked to."""
    with contextlib.suppress(FileNotFoundError):
        check_file(path, os.lstat(path))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """A rename is durable only once the directory entry is on disk."""
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_bounded(path: Path, limit: int) -> bytes | None:
    """A state file's bytes, opened as `open_file` does (no symlink, ours, not writable by
    others); None when it does not exist; StateDirError when it is larger than `limit`."""
    try:
        fd = open_file(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise StateDirError(f"{path} is larger than {limit} bytes; remove it or accept again")
    return data


BASELINE_MAX_BYTES = 4 * 1_048_576
SNAPSHOT_PREFIX = "snapshot_"
SNAPSHOT_SUFFIX = ".json"


@dataclass(frozen=True)
class StateDir:
    """Every path in the state directory; the seed's file names. What each file holds
    and how long it is kept is in the README's "State directory" table."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def db(self) -> Path:
        """SQLite (WAL): the queue, the ledger, incidents, the breaker; the truth."""
        return self.root / "state.db"

    @property
    def decisions_log(self) -> Path:
        return self.root / "decisions.jsonl"

    @property
    def actions_log(self) -> Path:
        return self.root / "actions.jsonl"

    @property
    def orchestrator_log(self) -> Path:
        return self.root / "orchestrator.log"

    @property
    def lock(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def webhook_token(self) -> Path:
        return self.root / "webhook.token"

    @property
    def approvals_key(self) -> Path:
        """The approvals page's HMAC key (its forms' CSRF tokens), 0600: deleting it
        voids every form handed out (web/keys.py makes it)."""
        return self.root / "approvals.key"

    @property
    def approval_queue(self) -> Path:
        """A read-only view of the pending items, rewritten from state.db on every change."""
        return self.root / "approval_queue.json"

    @property
    def posture_baseline(self) -> Path:
        """What a person accepted with `macha-obs posture accept` (0600, bounded by
        BASELINE_MAX_BYTES): the listeners, enabled units and setuid/setgid files then."""
        return self.root / "posture_baseline.json"

    @property
    def audit_logs(self) -> tuple[Path, Path]:
        return self.decisions_log, self.actions_log

    @property
    def logs(self) -> tuple[Path, Path, Path]:
        """The files rotated by size."""
        return self.decisions_log, self.actions_log, self.orchestrator_log

    def rotated(self, log: Path, keep: int) -> list[Path]:
        """`log.1` (newest) … `log.<keep>` (oldest): the names its rotated files take."""
        return [log.with_name(f"{log.name}.{n}") for n in range(1, keep + 1)]

    def history(self, log: Path) -> list[Path]:
        """The log's rotated files that exist, oldest first, then the log itself."""
        older: list[Path] = []
        n = 1
        while (candidate := log.with_name(f"{log.name}.{n}")).exists():
            older.append(candidate)
            n += 1
        return [*reversed(older), log]

    def snapshot(self, taken_at: float) -> Path:
        # Fixed-width UTC with microseconds: names sort in time order as plain strings.
        stamp = datetime.fromtimestamp(taken_at, UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return self.root / f"{SNAPSHOT_PREFIX}{stamp}{SNAPSHOT_SUFFIX}"

    def snapshots(self) -> list[Path]:
        """Snapshot files, oldest first."""
        found = self.root.glob(f"{SNAPSHOT_PREFIX}*{SNAPSHOT_SUFFIX}")
        return sorted(p for p in found if p.is_file())

    def check(self) -> None:
        """Refuse a state dir others could tamper with (see `check_dir`)."""
        check_dir(self.root)
