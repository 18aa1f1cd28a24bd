"""The systemd D-Bus seam: a few Manager/Unit calls over pystemd, nothing else.

Raw `call_method` avoids pystemd's per-object introspection (one round trip instead of
several per property).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from macha_obs.execute.errors import SystemdError, TransientDBusError
from macha_obs.models import UnitState

_DEST = b"org.freedesktop.systemd1"
_MANAGER_PATH = b"/org/freedesktop/systemd1"
_MANAGER = b"org.freedesktop.systemd1.Manager"
_UNIT = b"org.freedesktop.systemd1.Unit"
_SERVICE = b"org.freedesktop.systemd1.Service"
_PROPS = b"org.freedesktop.DBus.Properties"
_S = ord("s")

# pystemd error classes that say "the bus or systemd is not answering right now";
# everything else (NoSuchUnit, AccessDenied, InvalidArgs, ...) is final.
_TRANSIENT_NAMES = {
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
_TRANSIENT_ERRNOS = {
    errno.ETIMEDOUT,
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ENOTCONN,
    errno.EPIPE,
    errno.EAGAIN,
}

T = TypeVar("T")


class SystemdBus(Protocol):
    """What the executor and collectors need from systemd."""

    def unit_state(self, unit: str) -> UnitState: ...

    def submit(self, unit: str, verb: str) -> str: ...

    def job_pending(self, unit: str) -> bool: ...

    def reset_failed(self, unit: str) -> None: ...

    def list_units(self, states: tuple[str, ...] = ()) -> list[tuple[str, str, str, str]]: ...


def classify(exc: BaseException) -> SystemdError:
    """Turn a pystemd exception into ours: transient (retried) or final."""
    name = type(exc).__name__
    err = abs(int(getattr(exc, "errno", 0) or 0))
    message = f"{name}: {exc}".strip()
    if name in _TRANSIENT_NAMES or err in _TRANSIENT_ERRNOS:
        return TransientDBusError(message)
    return SystemdError(message)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _job_id(job: Any) -> int:
    """The Job property is (id, path); id 0 means no job."""
    try:
        return int(job[0]) if job else 0
    except (TypeError, ValueError, IndexError):
        return 0


def _body(reply: Any) -> Any:
    body = reply.body
    return body[0] if isinstance(body, tuple) and len(body) == 1 else body


class PystemdBus:
    """SystemdBus over pystemd, in this process, on one persistent connection.

    pystemd holds the GIL inside a D-Bus call and libsystemd waits up to 90 s for a
    stalled bus, so this class can freeze its whole process: the daemon never uses it
    directly but through `IsolatedBus` (execute/dbus_worker.py), which runs it in a
    child process it can kill.
    """

    def __init__(self, address: str | None = None) -> None:
        self.address = address
        self._bus: Any = None

    def _connection(self) -> Any:
        if self._bus is None:
            from pystemd.dbuslib import DBus, DBusAddress

            bus = DBusAddress(self.address.encode()) if self.address else DBus()
            try:
                bus.open()
            except Exception as exc:
                raise TransientDBusError(f"cannot connect to D-Bus: {exc}") from exc
            self._bus = bus
        return self._bus

    def close(self) -> None:
        if self._bus is not None:
            self._bus.close()
            self._bus = None

    def _on_bus(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(bus)`; a failed call drops the connection so the next one starts clean."""
        try:
            return fn(self._connection())
        except SystemdError:
            raise
        except Exception as exc:
            error = classify(exc)
            if isinstance(error, TransientDBusError):
                self.close()
            raise error from exc

    @staticmethod
    def _unit_path(bus: Any, unit: str) -> bytes:
        reply = bus.call_method(_DEST, _MANAGER_PATH, _MANAGER, b"LoadUnit", [(_S, unit.encode())])
        path = _body(reply)
        if not isinstance(path, bytes):
            raise SystemdError(f"unexpected LoadUnit reply for {unit}: {path!r}")
        return path

    @staticmethod
    def _get_all(bus: Any, path: bytes, interface: bytes) -> dict[bytes, Any]:
        reply = bus.call_method(_DEST, path, _PROPS, b"GetAll", [(_S, interface)])
        props = _body(reply)
        return props if isinstance(props, dict) else {}

    def unit_state(self, unit: str) -> UnitState:
        def call(bus: Any) -> UnitState:
            path = self._unit_path(bus, unit)
            props = self._get_all(bus, path, _UNIT)
            service = self._get_all(bus, path, _SERVICE) if unit.endswith(".service") else {}
            return UnitState(
                name=unit,
                load_state=_text(props.get(b"LoadState", b"")),
                active_state=_text(props.get(b"ActiveState", b"")),
                sub_state=_text(props.get(b"SubState", b"")),
                result=_text(service.get(b"Result", b"")),
                n_restarts=int(service.get(b"NRestarts", 0) or 0),
                main_pid=int(service.get(b"MainPID", 0) or 0),
                state_change_usec=int(props.get(b"StateChangeTimestamp", 0) or 0),
                job_id=_job_id(props.get(b"Job")),
                names=tuple(_text(n) for n in props.get(b"Names", []) or []),
            )

        return self._on_bus(call)

    def submit(self, unit: str, verb: str) -> str:
        """Queue a job ('start', 'restart', 'stop') in 'replace' mode; returns the job path."""
        method = {"start": b"StartUnit", "restart": b"RestartUnit", "stop": b"StopUnit"}[verb]

        def call(bus: Any) -> str:
            reply = bus.call_method(
                _DEST, _MANAGER_PATH, _MANAGER, method, [(_S, unit.encode()), (_S, b"replace")]
            )
            return _text(_body(reply))

        return self._on_bus(call)

    def job_pending(self, unit: str) -> bool:
        def call(bus: Any) -> bool:
            path = self._unit_path(bus, unit)
            reply = bus.call_method(_DEST, path, _PROPS, b"Get", [(_S, _UNIT), (_S, b"Job")])
            return _job_id(_body(reply)) != 0

        return self._on_bus(call)

    def reset_failed(self, unit: str) -> None:
        def call(bus: Any) -> None:
            bus.call_method(
                _DEST, _MANAGER_PATH, _MANAGER, b"ResetFailedUnit", [(_S, unit.encode())]
            )

        self._on_bus(call)

    def list_units(self, states: tuple[str, ...] = ()) -> list[tuple[str, str, str, str]]:
        """(name, load, active, sub) of loaded units, optionally filtered by state."""

        def call(bus: Any) -> list[tuple[str, str, str, str]]:
            if states:
                args = [(ord("a"), b"s"), *((_S, s.encode()) for s in states), (-1, b"")]
                reply = bus.call_method(_DEST, _MANAGER_PATH, _MANAGER, b"ListUnitsFiltered", args)
            else:
                reply = bus.call_method(_DEST, _MANAGER_PATH, _MANAGER, b"ListUnits", [])
            return [
                (_text(u[0]), _text(u[2]), _text(u[3]), _text(u[4])) for u in _body(reply) or []
            ]

        return self._on_bus(call)
