"""The approvals page's HMAC key: `<state_dir>/approvals.key`, 32 random bytes, 0600.

Made once, atomically (written under a temporary name, fsynced, then hard-linked into
place, so nobody ever reads half a key), never through a symlink, and trusted afterwards
only while it is a regular file of ours that neither group nor others can read: it signs
the pages' forms (CSRF). Deleting it (and restarting) voids every form handed out.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from macha_obs.errors import MachaError
from macha_obs.statedir import StateDir, fsync_dir, open_file

KEY_BYTES = 32


class SigningKeyError(MachaError, ValueError):
    """The key file cannot be trusted or read; the message says what to do."""


def load_key(path: Path) -> bytes:
    fd = open_file(path, os.O_RDONLY)  # no symlink, a regular file of ours, not writable
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            raise SigningKeyError(
                f"{path} is readable by others (mode {mode:04o}): anyone who read it can "
                f"forge the approvals page's forms. Remove it (rm {path}) and restart for a new one"
            )
        data = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != KEY_BYTES:
        raise SigningKeyError(f"{path} does not hold a key; remove it and restart for a new one")
    return data


def _create(path: Path) -> None:
    """A new key under a temporary name, linked into place; another process's key wins."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):  # EEXIST, even for a dangling symlink
            os.link(temp, path, follow_symlinks=False)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def ensure_key(state_dir: Path) -> bytes:
    """The state dir's approvals key, made on first use."""
    path = StateDir(state_dir).approvals_key
    try:
        return load_key(path)
    except FileNotFoundError:
        _create(path)
    return load_key(path)
