"""The state directory as a trust boundary (issue 15).

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

Nothing here imports the rest of the package: the store, the lock, the logs and the
token file all use it.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from pathlib import Path


class StateDirError(Exception):
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


def drop_to_owner(state_dir: Path) -> str | None:
    """Run as root: become the owner of an existing state dir (uid, gid, no supplementary
    groups) before anything in it is touched; the user's name, or None when there was
    nothing to do (not root, no dir yet, or root owns it)."""
    if os.geteuid() != 0:
        return None
    try:
        info = os.lstat(state_dir)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode) or info.st_uid == 0:
        return None  # check_dir refuses the first; root's own dir needs no drop
    os.setgroups([])
    os.setgid(info.st_gid)
    os.setuid(info.st_uid)  # permanent: real, effective and saved
    try:
        return pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        return str(info.st_uid)
