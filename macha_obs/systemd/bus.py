"""The systemd seam the executor and collectors use: typed calls, run in the D-Bus child.

`IsolatedBus` turns the child's replies (child.py) into our types and exceptions: a call
that misses its bound raises `DBusTimeout` (the child was killed; the next call starts a
new one), a bus failure `TransientDBusError` (retried by the executor), systemd's "no"
`SystemdError`. One `IsolatedBus` serves the executor, the systemd collector and the
event watcher, so the sidecar runs one D-Bus child, not one per user.
"""

from __future__ import annotations

from typing import Any, Protocol

from macha_obs.errors import DBusTimeout, SystemdError, TransientDBusError
from macha_obs.models import UnitState
from macha_obs.systemd.child import Child, EventSink, GoneSink, Reply

# (name, load, active, sub, NRestarts or None, StateChangeTimestamp in µs or 0)
UnitRow = list[Any]


class SystemdBus(Protocol):
    """What the executor and collectors need from systemd."""

    def unit_state(self, unit: str) -> UnitState: ...

    def submit(self, unit: str, verb: str) -> str: ...

    def job_pending(self, unit: str) -> bool: ...

    def reset_failed(self, unit: str) -> None: ...

    def list_units(self, states: tuple[str, ...] = ()) -> list[tuple[str, str, str, str]]: ...


class UnitTable(Protocol):
    """What the systemd collector needs: every unit's state in one call."""

    def unit_table(
        self, include: str, exclude: str, timeout: float | None = None
    ) -> list[UnitRow]: ...


class UnitRuns(Protocol):
    """What the backups collector needs: matching services' last runs and their timers."""

    def unit_runs(self, patterns: list[str], timeout: float | None = None) -> list[Any]: ...


class CollectorBus(UnitTable, UnitRuns, Protocol):
    """The collectors' share of the sidecar's one D-Bus child."""


def _value(reply: Reply) -> Any:
    if reply.error is None:
        return reply.value
    if reply.timed_out:
        raise DBusTimeout(reply.error)
    raise (TransientDBusError if reply.transient else SystemdError)(reply.error)


class IsolatedBus:
    """SystemdBus whose calls run in the killable D-Bus child, each bounded by `timeout`."""

    def __init__(self, address: str | None = None, *, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout
        self.child = Child(address, timeout=timeout)

    def unit_state(self, unit: str) -> UnitState:
        return UnitState.model_validate(_value(self.child.call("unit_state", unit)))

    def submit(self, unit: str, verb: str) -> str:
        return str(_value(self.child.call("submit", unit, verb)))

    def job_pending(self, unit: str) -> bool:
        return bool(_value(self.child.call("job_pending", unit)))

    def reset_failed(self, unit: str) -> None:
        _value(self.child.call("reset_failed", unit))

    def list_units(self, states: tuple[str, ...] = ()) -> list[tuple[str, str, str, str]]:
        rows = _value(self.child.call("list_units", list(states)))
        return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]

    def unit_table(self, include: str, exclude: str, timeout: float | None = None) -> list[UnitRow]:
        """Rows for the collector; `timeout` bounds this one call (a large host takes longer)."""
        return list(_value(self.child.call("unit_table", include, exclude, timeout=timeout)))

    def unit_runs(self, patterns: list[str], timeout: float | None = None) -> list[Any]:
        """Services matching `patterns` (loaded or unit files), each with its last run and
        timers, as dicts (worker.py `unit_runs`); `timeout` bounds this one call."""
        return list(_value(self.child.call("unit_runs", patterns, timeout=timeout)))

    def list_unit_files(self) -> list[tuple[str, str]]:
        """(path, unit-file state) of every unit file, one ListUnitFiles call."""
        return [(str(p), str(s)) for p, s in _value(self.child.call("list_unit_files"))]

    def subscribe(self, on_event: EventSink, on_gone: GoneSink) -> None:
        """Start unit signals (see UnitWatcher); `on_gone` when the child carrying them ends."""
        _value(self.child.subscribe(on_event, on_gone))

    def close(self) -> None:
        self.child.close()
