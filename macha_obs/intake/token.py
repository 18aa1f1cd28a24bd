"""The webhook's bearer token (DESIGN.md invariant 13: intake is authenticated by default).

Without `webhook_token_file`, the daemon keeps a generated token in
`<state_dir>/webhook.token`: created once, 0600, atomically (written under a temporary
name, then hard-linked into place, so nobody reads a half-written token), and never
through a symlink. An existing file is reused only while it is a regular file that
neither its group nor others can read or write; otherwise the daemon refuses to start
and says how to fix it. `webhook_auth = false` turns authentication off, and only on a
loopback listener.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import secrets
import stat
from pathlib import Path

from macha_obs.config import Config
from macha_obs.errors import MachaError
from macha_obs.statedir import StateDir

log = logging.getLogger(__name__)

_LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


class WebhookTokenError(MachaError, ValueError):
    """The token cannot be used as it is; the message says what to do."""


def read_token(path: Path) -> str:
    """The bearer token Alertmanager sends (`http_config.authorization.credentials_file`)."""
    return _parse(path, path.read_text())


def _parse(path: Path, text: str) -> str:
    token = text.strip()
    if not token or any(c.isspace() for c in token):
        raise WebhookTokenError(f"{path}: the webhook token must be one non-empty word")
    return token


def token_path(state_dir: Path) -> Path:
    return StateDir(state_dir).webhook_token


def load_token(path: Path) -> str:
    """The generated token, after checking the file is still safe to trust."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except PermissionError as exc:
        raise WebhookTokenError(
            f"{path}: uid {os.geteuid()} cannot read it ({exc.strerror}); it must belong to "
            "the daemon's user (chown), or remove it and restart the daemon for a new one"
        ) from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise WebhookTokenError(
                f"{path} is a symlink; the webhook token must be a regular file. "
                f"Remove it (rm {path}) and restart: a new token is generated"
            ) from exc
        raise
    try:
        _check(path, os.fstat(fd))  # the file we opened, not what the name says now
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        return _parse(path, data.decode("ascii"))
    except (UnicodeDecodeError, WebhookTokenError) as exc:
        raise WebhookTokenError(
            f"{path} does not hold a token; remove it (rm {path}) and restart: "
            "a new token is generated"
        ) from exc


def _check(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise WebhookTokenError(f"{path} is not a regular file; remove it and restart")
    if info.st_mode & 0o077:
        raise WebhookTokenError(
            f"{path} is readable or writable by others (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path} (and consider "
            "it leaked: remove it and restart to generate a new one)"
        )


def ensure_token(state_dir: Path) -> Path:
    """`<state_dir>/webhook.token`: checked and reused, or generated (0600) if missing."""
    path = token_path(state_dir)
    for _ in range(3):
        try:
            load_token(path)
        except FileNotFoundError:
            if _create(path):
                log.info("generated a webhook token in %s", path)
        else:
            return path
    raise WebhookTokenError(f"{path} keeps changing while it is being created")


def _create(path: Path) -> bool:
    """Write a new token under a temporary name and link it into place; False when another
    process got there first (its token wins)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)  # whatever the umask
            fh.write(secrets.token_urlsafe(32).encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(temp, path, follow_symlinks=False)  # EEXIST, even for a dangling symlink
        except FileExistsError:
            return False
        _sync_dir(path.parent)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def intake_token(config: Config) -> str | None:
    """The token POST /alerts requires: the configured file, else the generated one. None
    only when the config opts out (`webhook_auth = false`) on a loopback listener."""
    if config.webhook_token_file is not None:
        log.info("webhook token: %s (webhook_token_file)", config.webhook_token_file)
        return read_token(config.webhook_token_file)
    if config.webhook_auth:
        path = ensure_token(config.state_dir)
        log.info("webhook token: %s (macha-obs webhook-token prints this path)", path)
        return load_token(path)
    if not is_loopback(config.listen_host):
        # anyone who can reach the port could feed us alerts: refuse to run that way
        raise WebhookTokenError(
            f"webhook_auth = false, and the webhook listens on {config.listen_address}, "
            "beyond loopback: anyone who reaches it could post alerts naming units to "
            "restart. Remove webhook_auth = false (a token is generated in the state "
            "directory) or set webhook_token_file"
        )
    log.warning(
        "webhook_auth = false: POST /alerts on %s takes alerts from any local user",
        config.listen_address,
    )
    return None
