"""systemd unit state changes as events, from the D-Bus child's signal subscription.

The child (worker.py) subscribes to systemd's PropertiesChanged signals and sends one
line per ActiveState change; `UnitWatcher` debounces them per unit (the last state wins)
and hands them on. It rides on the same child as every other D-Bus call: when a stalled
bus gets that child killed, the watcher subscribes again on the next one, backing off
while the bus stays away.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from macha_obs.errors import SystemdError
from macha_obs.systemd.bus import IsolatedBus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnitEvent:
    unit: str
    active_state: str
    sub_state: str
    at: float  # time.monotonic() when the parent read it


EventHandler = Callable[[UnitEvent], None]


class UnitWatcher:
    """Subscribes through `bus` (its own child if none is given) and delivers debounced
    events. Idle it sleeps on events, with no timer."""

    def __init__(
        self,
        address: str | None,
        on_event: EventHandler,
        *,
        bus: IsolatedBus | None = None,
        debounce: float = 0.1,
        restart_delay: float = 1.0,
    ) -> None:
        self.own_bus = bus is None
        self.bus = IsolatedBus(address) if bus is None else bus
        self.on_event = on_event
        self.debounce = debounce
        self.restart_delay = restart_delay
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._gone = threading.Event()
        self._pending: dict[str, UnitEvent] = {}
        self._lock = threading.Condition()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, name in (
            (self._subscribe_loop, "macha-events"),
            (self._deliver_loop, "debounce"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._gone.set()
        with self._lock:
            self._lock.notify_all()
        if self.own_bus:
            self.bus.close()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def _on_gone(self) -> None:
        self.ready.clear()  # at once: not when the subscribing thread next runs
        self._gone.set()

    def _subscribe_loop(self) -> None:
        delay = self.restart_delay
        while not self._stop.is_set():
            self._gone.clear()
            try:
                self.bus.subscribe(self._accept, self._on_gone)
            except SystemdError as exc:
                error: Exception | None = exc
            else:
                error = None
                self.ready.set()
                self._gone.wait()  # until the child carrying the subscription ends
            was_ready = self.ready.is_set()
            self.ready.clear()
            if self._stop.is_set():
                return
            # back off while the bus is away; say so once, not every second
            delay = self.restart_delay if was_ready else min(delay * 2, 60.0)
            level = (
                logging.WARNING if was_ready or delay <= 2 * self.restart_delay else logging.DEBUG
            )
            why = error or "the D-Bus child ended"
            log.log(level, "D-Bus event watcher stopped (%s); retrying in %gs", why, delay)
            self._stop.wait(delay)

    def _accept(self, data: dict[str, Any]) -> None:
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
                    # nothing pending: sleep until an event or stop() notifies, not on a timer
                    self._lock.wait(min(waits) if waits else None)
                    continue
            for event in due:
                try:
                    self.on_event(event)
                except Exception:
                    log.exception("unit event handler failed for %s", event.unit)
