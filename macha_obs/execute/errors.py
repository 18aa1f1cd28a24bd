"""The executor's exceptions.

ExecutorError
├── RefusedError          refused before any side effect (protected, not executable)
├── RunnerError           a command could not be run (missing binary, timeout)
└── SystemdError          systemd said no, or the bus failed
    └── TransientDBusError    worth retrying (no reply, disconnected, ...)
        └── DBusTimeout       our own bound on a call ran out
"""


class ExecutorError(Exception):
    """An action could not be carried out."""


class RefusedError(ExecutorError):
    """Refused before any side effect."""


class RunnerError(ExecutorError):
    """A command could not be run to completion."""


class SystemdError(ExecutorError):
    """systemd refused or failed a request."""


class TransientDBusError(SystemdError):
    """A D-Bus failure that may pass: retried with backoff."""


class DBusTimeout(TransientDBusError):
    """A D-Bus call did not answer within its bound."""
