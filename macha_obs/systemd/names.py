"""systemd's D-Bus names, the child's operations and the transient-error rule: one copy.

Imported by the child (worker.py) and the parent (child.py) alike, so standard library
only, and cheap: every module the child loads is memory the sidecar pays for.
"""

from __future__ import annotations

import errno

DEST = b"org.freedesktop.systemd1"
MANAGER_PATH = b"/org/freedesktop/systemd1"
MANAGER = b"org.freedesktop.systemd1.Manager"
UNIT = b"org.freedesktop.systemd1.Unit"
SERVICE = b"org.freedesktop.systemd1.Service"
TIMER = b"org.freedesktop.systemd1.Timer"
PROPERTIES = b"org.freedesktop.DBus.Properties"
UNIT_PATH_PREFIX = b"/org/freedesktop/systemd1/unit"

OPS = (
    "unit_state",
    "submit",
    "job_pending",
    "reset_failed",
    "list_units",
    "unit_table",
    "unit_runs",
    "list_unit_files",
    "subscribe",
)

# pystemd error classes that say "the bus or systemd is not answering right now";
# everything else (NoSuchUnit, AccessDenied, InvalidArgs, ...) is final.
TRANSIENT_NAMES = frozenset(
    {
        "DBusNoReplyError",
        "DBusTimeoutError",
        "DBusTimedOutError",
        "DBusIOErrorError",
        "DBusServiceUnknownError",
        "DBusNameHasNoOwnerError",
        "DBusDisconnectedError",
        "DBusConnectionRefusedError",
        "DBusNoServerError",
        "DBusInterruptedError",
        "DBusLimitsExceededError",
    }
)
TRANSIENT_ERRNOS = frozenset(
    {
        errno.ETIMEDOUT,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ENOTCONN,
        errno.EPIPE,
        errno.EAGAIN,
    }
)


def is_transient(exc: BaseException) -> bool:
    """A bus failure worth retrying (no reply, disconnected...) rather than systemd's "no"."""
    err = abs(int(getattr(exc, "errno", 0) or 0))
    return type(exc).__name__ in TRANSIENT_NAMES or err in TRANSIENT_ERRNOS
