"""Unit state changes arrive as debounced events from a real systemd's D-Bus signals."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator

import pytest

from macha_obs.execute.dbus_events import UnitEvent, UnitWatcher
from macha_obs.execute.dbus_worker import IsolatedBus
from tests.labsd import LabSystemd

pytestmark = pytest.mark.systemd


@pytest.fixture
def events(systemd_container: LabSystemd) -> Iterator[queue.Queue[UnitEvent]]:
    seen: queue.Queue[UnitEvent] = queue.Queue()
    watcher = UnitWatcher(systemd_container.bus_address, seen.put, debounce=0.05)
    watcher.start()
    assert watcher.ready.wait(20)
    yield seen
    watcher.stop()


def next_for(seen: queue.Queue[UnitEvent], unit: str, state: str) -> UnitEvent:
    while True:
        event = seen.get(timeout=20)
        if event.unit == unit and event.active_state == state:
            return event


def test_failed_unit_becomes_an_event(
    systemd_container: LabSystemd,
    unit_factory: Callable[[str, str], str],
    events: queue.Queue[UnitEvent],
) -> None:
    unit = unit_factory("t-evt.service", "[Service]\nExecStart=/bin/false\n")
    bus = IsolatedBus(systemd_container.bus_address)
    try:
        bus.submit(unit, "start")
    finally:
        bus.close()
    event = next_for(events, unit, "failed")
    assert event.sub_state == "failed"


def test_flapping_is_debounced_to_the_last_state(
    systemd_container: LabSystemd, unit_factory: Callable[[str, str], str]
) -> None:
    seen: queue.Queue[UnitEvent] = queue.Queue()
    watcher = UnitWatcher(systemd_container.bus_address, seen.put, debounce=1.0)
    watcher.start()
    try:
        assert watcher.ready.wait(20)
        unit = unit_factory("t-deb.service", "[Service]\nType=oneshot\nExecStart=/bin/true\n")
        bus = IsolatedBus(systemd_container.bus_address)
        try:
            bus.submit(unit, "start")  # inactive -> activating -> inactive within the window
        finally:
            bus.close()
        event = seen.get(timeout=20)
        while event.unit != unit:  # other units (the reload) change too
            event = seen.get(timeout=20)
        # "activating" came and went within the window: only the last state is delivered
        assert event.active_state == "inactive"
    finally:
        watcher.stop()


def test_watcher_survives_the_bus_stalling(
    systemd_container: LabSystemd,
    unit_factory: Callable[[str, str], str],
    events: queue.Queue[UnitEvent],
) -> None:
    unit = unit_factory("t-stall.service", "[Service]\nExecStart=/bin/false\n")
    with systemd_container.stalled_bus():
        pass
    bus = IsolatedBus(systemd_container.bus_address)
    try:
        bus.submit(unit, "start")
    finally:
        bus.close()
    assert next_for(events, unit, "failed").unit == unit
