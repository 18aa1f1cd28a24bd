"""The D-Bus child (see child.py): systemd calls and unit signals over one pystemd connection.

Run as a script, `python -I -S worker.py --sys-path PATH ADDRESS`, never imported by the
sidecar. It loads only the standard library, `names.py`, and pystemd's C bus
module without pystemd's package (whose `__init__` pulls in lxml and the object layer):
the child's memory is most of what the sidecar costs beyond its own interpreter.

Idle, it sleeps in select() on stdin and the bus, without a timeout.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import select
import sys
import types
from collections.abc import Callable
from typing import Any

S = ord("s")


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _body(reply: Any) -> Any:
    body = reply.body
    return body[0] if isinstance(body, tuple) and len(body) == 1 else body


def _job_id(job: Any) -> int:
    """The Job property is (id, path); id 0 means no job."""
    try:
        return int(job[0]) if job else 0
    except (TypeError, ValueError, IndexError):
        return 0


def load_dbuslib() -> Any:
    """pystemd.dbuslib without running pystemd/__init__.py (lxml, systemd1, machine1)."""
    if "pystemd" not in sys.modules:
        spec = importlib.util.find_spec("pystemd")
        if spec is not None and spec.submodule_search_locations is not None:
            package = types.ModuleType("pystemd")
            package.__path__ = list(spec.submodule_search_locations)
            sys.modules["pystemd"] = package
    from pystemd import dbuslib

    return dbuslib


class Worker:
    """The operations (child.OPS) over one connection, reopened after a transient failure."""

    def __init__(self, address: str | None, write: Callable[[dict[str, Any]], None]) -> None:
        from macha_obs.systemd import names

        self.c = names
        self.dbuslib = load_dbuslib()
        self.address = address
        self.write = write
        self.bus: Any = None
        self.subscribed = False
        self.signal_callback: Callable[..., None] | None = None
        self.dispatched = 0
        # While subscribed, every change of a unit arrives as a signal on its path, so the
        # per-unit properties the collector reads are kept until one does: an idle host's
        # collection is one ListUnits call instead of one call per unit.
        self.details: dict[bytes, tuple[int, int | None]] = {}

    def connection(self) -> Any:
        if self.bus is None:
            lib = self.dbuslib
            bus = lib.DBusAddress(self.address.encode()) if self.address else lib.DBus()
            bus.open()
            self.bus = bus
        return self.bus

    def method(self, name: bytes, *args: tuple[int, bytes]) -> Any:
        c = self.c
        return _body(self.connection().call_method(c.DEST, c.MANAGER_PATH, c.MANAGER, name, args))

    def get(self, path: bytes, interface: bytes, name: bytes) -> Any:
        c = self.c
        reply = self.connection().call_method(
            c.DEST, path, c.PROPERTIES, b"Get", [(S, interface), (S, name)]
        )
        return _body(reply)

    def get_all(self, path: bytes, interface: bytes) -> dict[bytes, Any]:
        c = self.c
        reply = self.connection().call_method(
            c.DEST, path, c.PROPERTIES, b"GetAll", [(S, interface)]
        )
        props = _body(reply)
        return props if isinstance(props, dict) else {}

    def unit_path(self, unit: str) -> bytes:
        path = self.method(b"LoadUnit", (S, unit.encode()))
        if not isinstance(path, bytes):
            raise TypeError(f"unexpected LoadUnit reply for {unit}: {path!r}")
        return path

    # ---------------------------------------------------------------- operations

    def unit_state(self, unit: str) -> dict[str, Any]:
        path = self.unit_path(unit)
        props = self.get_all(path, self.c.UNIT)
        service = self.get_all(path, self.c.SERVICE) if unit.endswith(".service") else {}
        return {
            "name": unit,
            "load_state": _text(props.get(b"LoadState", b"")),
            "active_state": _text(props.get(b"ActiveState", b"")),
            "sub_state": _text(props.get(b"SubState", b"")),
            "result": _text(service.get(b"Result", b"")),
            "n_restarts": int(service.get(b"NRestarts", 0) or 0),
            "main_pid": int(service.get(b"MainPID", 0) or 0),
            "state_change_usec": int(props.get(b"StateChangeTimestamp", 0) or 0),
            "job_id": _job_id(props.get(b"Job")),
            "start_limit_burst": int(props.get(b"StartLimitBurst", 0) or 0),
            "names": [_text(n) for n in props.get(b"Names", []) or []],
            "memory_max": int(service.get(b"MemoryMax", 0) or 0),
        }

    def submit(self, unit: str, verb: str) -> str:
        """Queue a job ('start', 'restart', 'stop') in 'replace' mode; returns the job path."""
        name = {"start": b"StartUnit", "restart": b"RestartUnit", "stop": b"StopUnit"}[verb]
        return _text(self.method(name, (S, unit.encode()), (S, b"replace")))

    def job_pending(self, unit: str) -> bool:
        return _job_id(self.get(self.unit_path(unit), self.c.UNIT, b"Job")) != 0

    def reset_failed(self, unit: str) -> None:
        self.method(b"ResetFailedUnit", (S, unit.encode()))

    def list_units(self, states: list[str]) -> list[list[str]]:
        """(name, load, active, sub) of loaded units, optionally filtered by state."""
        if states:
            args = [(ord("a"), b"s"), *((S, s.encode()) for s in states), (-1, b"")]
            rows = self.method(b"ListUnitsFiltered", *args)
        else:
            rows = self.method(b"ListUnits")
        return [[_text(u[0]), _text(u[2]), _text(u[3]), _text(u[4])] for u in rows or []]

    def list_unit_files(self) -> list[list[str]]:
        """(path, state) of every unit file systemd knows: the posture's enabled units."""
        return [[_text(row[0]), _text(row[1])] for row in self.method(b"ListUnitFiles") or []]

    def unit_table(self, include: str, exclude: str) -> list[list[Any]]:
        """The collector's view: [name, load, active, sub, NRestarts|None, state change µs].

        One ListUnits, then one Get per unit (two for a service): linear in the units kept;
        while subscribed, only for the units that changed since the last call.
        """
        keep, drop = re.compile(include), re.compile(exclude)
        rows: list[list[Any]] = []
        seen: dict[bytes, tuple[int, int | None]] = {}
        for unit in self.method(b"ListUnits") or []:
            name = _text(unit[0])
            if not keep.fullmatch(name) or drop.fullmatch(name):
                continue
            path = unit[6]
            known = self.details.get(path) if self.subscribed else None
            if known is None:
                changed = int(self.get(path, self.c.UNIT, b"StateChangeTimestamp") or 0)
                restarts = None
                if name.endswith(".service"):
                    restarts = int(self.get(path, self.c.SERVICE, b"NRestarts") or 0)
                known = (changed, restarts)
                if self.subscribed:
                    self.details[path] = known
            rows.append([name, _text(unit[2]), _text(unit[3]), _text(unit[4]), known[1], known[0]])
            seen[path] = known
        if self.subscribed:
            self.details = seen  # bounded by the units that exist now
        return rows

    def unit_runs(self, patterns: list[str]) -> list[dict[str, Any]]:
        """Services whose names match `patterns` (systemd's globs), loaded or only unit
        files, with their last run and the timers that trigger them (collect/backups.py)."""
        globs = [(S, p.encode()) for p in patterns]
        if not globs:
            return []
        none = [(ord("a"), b"s"), (-1, b"")]  # no state filter: every state
        pats = [(ord("a"), b"s"), *globs, (-1, b"")]
        names = {_text(u[0]) for u in self.method(b"ListUnitsByPatterns", *none, *pats) or []}
        files = self.method(b"ListUnitFilesByPatterns", *none, *pats)
        names.update(_text(f[0]).rsplit("/", 1)[-1] for f in files or [])
        return [self._run(name) for name in sorted(names) if "@." not in name]

    def _run(self, unit: str) -> dict[str, Any]:
        c = self.c
        path = self.unit_path(unit)
        props = self.get_all(path, c.UNIT)
        service = self.get_all(path, c.SERVICE) if unit.endswith(".service") else {}
        timers = [_text(t) for t in props.get(b"TriggeredBy", []) or []]
        # an alias's file names the unit it aliases: the row carries the canonical name
        row: dict[str, Any] = {"name": _text(props.get(b"Id", b"")) or unit, "timers": []}
        for key in ("LoadState", "ActiveState", "SubState"):
            row[key] = _text(props.get(key.encode(), b""))
        for key in ("InactiveEnterTimestamp", "InactiveExitTimestamp", "ActiveEnterTimestamp"):
            row[key] = int(props.get(key.encode(), 0) or 0)
        row["Result"] = _text(service.get(b"Result", b""))
        for key in ("ExecMainStatus", "ExecMainExitTimestamp", "ExecMainStartTimestamp"):
            row[key] = int(service.get(key.encode(), 0) or 0)
        for timer in (t for t in timers if t.endswith(".timer")):
            tprops = self.get_all(self.unit_path(timer), c.TIMER)
            row["timers"].append(
                {
                    "name": timer,
                    "LastTriggerUSec": int(tprops.get(b"LastTriggerUSec", 0) or 0),
                    "NextElapseUSecRealtime": int(tprops.get(b"NextElapseUSecRealtime", 0) or 0),
                    "RandomizedDelayUSec": int(tprops.get(b"RandomizedDelayUSec", 0) or 0),
                    "TimersCalendar": [
                        [_text(t[0]), _text(t[1])] for t in tprops.get(b"TimersCalendar", []) or []
                    ],
                    "TimersMonotonic": [
                        [_text(t[0]), int(t[1])] for t in tprops.get(b"TimersMonotonic", []) or []
                    ],
                }
            )
        return row

    def subscribe(self) -> bool:
        """Unit ActiveState changes become events; systemd only signals Subscribe()d clients."""
        if self.subscribed:
            return True
        c, bus = self.c, self.connection()

        def on_signal(msg: Any, error: Any = None, userdata: Any = None) -> None:
            self.dispatched += 1
            self.on_signal(msg)

        # pystemd sets attributes on the callback (so a plain function, not a method) and
        # hands sd-bus a borrowed pointer to it: we must hold the reference ourselves.
        self.signal_callback = on_signal
        bus.match_signal(c.DEST, None, c.PROPERTIES, b"PropertiesChanged", on_signal)
        self.method(b"Subscribe")
        self.subscribed = True
        return True

    def on_signal(self, msg: Any) -> None:
        msg.process_reply(True)
        self.details.pop(msg.headers.get("Path", b""), None)
        interface, changed = msg.body[0], msg.body[1]
        if interface != self.c.UNIT or b"ActiveState" not in changed:
            return
        path = msg.headers.get("Path", b"")
        unit = self.dbuslib.path_decode(path, self.c.UNIT_PATH_PREFIX)
        self.write(
            {
                "event": {
                    "unit": _text(unit),
                    "active_state": _text(changed[b"ActiveState"]),
                    "sub_state": _text(changed.get(b"SubState", b"")),
                }
            }
        )

    def drain(self) -> None:
        """Dispatch every signal sd-bus holds, including those it read during a method call
        (the socket will not wake select() for those again).

        sd_bus_process handles one message per call, and pystemd returns an empty message
        both when there was nothing to do and when our callback took the message: count the
        callback's calls to tell the two apart.
        """
        while self.subscribed and self.bus is not None:
            before = self.dispatched
            if self.bus.process().is_empty() and self.dispatched == before:
                return

    # ---------------------------------------------------------------- requests

    def handle(self, line: bytes) -> bool:
        """Answer one request; False when the child should end (its subscription broke)."""
        op, *args = json.loads(line)
        if op not in self.c.OPS:
            self.write({"error": f"unknown operation {op!r}", "transient": False})
            return True
        try:
            value = getattr(self, op)(*args)
        except Exception as exc:
            transient = self.c.is_transient(exc) or self.bus is None
            self.write({"error": f"{type(exc).__name__}: {exc}".strip(), "transient": transient})
            if transient and self.bus is not None:
                self.bus.close()
                self.bus = None
                # a new connection would carry no subscription: let the parent start over
                return not self.subscribed
            return True
        self.write({"ok": value})
        return True


def serve(address: str | None) -> None:
    out = os.fdopen(sys.stdout.fileno(), "wb", buffering=0)

    def write(record: dict[str, Any]) -> None:
        out.write(json.dumps(record).encode() + b"\n")

    worker = Worker(address, write)
    pending = b""
    while True:
        fds = [0]
        if worker.subscribed and worker.bus is not None:
            fds.append(worker.bus.get_fd())
        ready, _, _ = select.select(fds, [], [])
        if 0 in ready:
            chunk = os.read(0, 65536)
            if not chunk:  # the parent closed our stdin or died
                return
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.strip() and not worker.handle(line):
                    return
        worker.drain()


def main(argv: list[str]) -> int:
    """argv as child.worker_argv builds it: --sys-path PATH ADDRESS (empty: the system bus)."""
    if len(argv) != 3 or argv[0] != "--sys-path":
        print("usage: worker.py --sys-path PATH ADDRESS", file=sys.stderr)
        return 2
    # The parent's import path replaces ours; the script's own directory (sys.path[0])
    # must not shadow anything.
    sys.path[:] = [p for p in argv[1].split(os.pathsep) if p] + sys.path[1:]
    serve(argv[2] or None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
