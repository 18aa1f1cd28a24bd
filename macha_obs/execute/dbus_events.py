"""systemd unit state changes as events, from a D-Bus signal subscription in a child process.

The child (`python -m macha_obs.execute.dbus_events ADDRESS`) subscribes to systemd's
PropertiesChanged signals and prints one JSON line per ActiveState change. It runs in
its own process for the same reason as the call worker: pystemd holds the GIL inside
libsystemd, and a stalled bus must not freeze the daemon. The parent's `UnitWatcher`
reads those lines in a thread, debounces them per unit, and hands them on.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from macha_obs.execute.runner import python_child

log = logging.getLogger(__name__)

_DEST = b"org.freedesktop.systemd1"
_MANAGER_PATH = b"/org/freedesktop/systemd1"
_UNIT_PREFIX = b"/org/freedesktop/systemd1/unit"
_UNIT_IFACE = b"org.freedesktop.systemd1.Unit"


@dataclass(frozen=True)
class UnitEvent:
    unit: str
    active_state: str
    sub_state: str
    at: float  # time.monotonic() when the parent read it


EventHandler = Callable[[UnitEvent], None]


class UnitWatcher:
    """Runs the signal child and delivers debounced events: the last state per unit wins."""

    def __init__(
        self,
        address: str | None,
        on_event: EventHandler,
        *,
        debounce: float = 0.1,
        restart_delay: float = 1.0,
    ) -> None:
        self.address = address
        self.on_event = on_event
        self.debounce = debounce
        self.restart_delay = restart_delay
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._pending: dict[str, UnitEvent] = {}
        self._lock = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, name in ((self._read_loop, "macha-events"), (self._deliver_loop, "debounce")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        self._kill()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def _read_loop(self) -> None:
        delay = self.restart_delay
        while not self._stop.is_set():
            argv, env = python_child("macha_obs.execute.dbus_events", self.address or "")
            proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
            )
            self._proc = proc
            assert proc.stdout is not None  # noqa: S101 - stdout=PIPE above
            with proc.stdout:
                for line in proc.stdout:
                    self._accept(line)
            proc.wait()
            was_ready = self.ready.is_set()
            self.ready.clear()
            if self._stop.is_set():
                return
            # back off while the bus is away; say so once, not every second
            delay = self.restart_delay if was_ready else min(delay * 2, 60.0)
            level = (
                logging.WARNING if was_ready or delay <= 2 * self.restart_delay else logging.DEBUG
            )
            log.log(
                level, "D-Bus event watcher exited (%s); retrying in %gs", proc.returncode, delay
            )
            self._stop.wait(delay)

    def _accept(self, line: bytes) -> None:
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            return
        if data.get("ready"):
            self.ready.set()
            return
        event = UnitEvent(
            str(data["unit"]), str(data["active_state"]), str(data["sub_state"]), time.monotonic()
        )
        with self._lock:
            self._pending[event.unit] = event
            self._lock.notify_all()

    def _deliver_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                now = time.monotonic()
                due = [e for e in self._pending.values() if now - e.at >= self.debounce]
                for event in due:
                    del self._pending[event.unit]
                if not due:
                    waits = [self.debounce - (now - e.at) for e in self._pending.values()]
                    self._lock.wait(min(waits, default=1.0))
                    continue
            for event in due:
                try:
                    self.on_event(event)
                except Exception:
                    log.exception("unit event handler failed for %s", event.unit)


# ---------------------------------------------------------------- the child


def _emit(out: Any, record: dict[str, Any]) -> None:
    out.write(json.dumps(record).encode() + b"\n")


def serve(address: str | None) -> None:
    from pystemd.dbuslib import DBus, DBusAddress, path_decode

    out = os.fdopen(sys.stdout.fileno(), "wb", buffering=0)
    bus = DBusAddress(address.encode()) if address else DBus()
    bus.open()

    def on_signal(msg: Any, error: Any = None, userdata: Any = None) -> None:
        msg.process_reply(True)
        interface, changed = msg.body[0], msg.body[1]
        if interface != _UNIT_IFACE or b"ActiveState" not in changed:
            return
        path = msg.headers.get("Path", b"")
        unit = path_decode(path, _UNIT_PREFIX).decode(errors="replace")
        _emit(
            out,
            {
                "unit": unit,
                "active_state": changed[b"ActiveState"].decode(),
                "sub_state": changed.get(b"SubState", b"").decode(),
            },
        )

    bus.match_signal(
        _DEST, None, b"org.freedesktop.DBus.Properties", b"PropertiesChanged", on_signal
    )
    # systemd sends unit signals only to clients that called Subscribe()
    bus.call_method(_DEST, _MANAGER_PATH, _DEST + b".Manager", b"Subscribe", [])
    _emit(out, {"ready": True})
    fd = bus.get_fd()
    while True:
        select.select([fd], [], [], 5.0)
        while not bus.process().is_empty():  # pystemd handles one message per call
            pass


if __name__ == "__main__":
    serve(sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else None)
