"""Unit state changes arrive as debounced events from a real systemd's D-Bus signals."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator

import pytest

from macha_obs.errors import DBusTimeout
from macha_obs.systemd.bus import IsolatedBus
from macha_obs.systemd.events import UnitEvent, UnitWatcher
from tests.harness.labsd import LabSystemd, wait_until

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


def test_stalled_call_on_the_shared_child_fails_alone_and_events_resume(
    systemd_container: LabSystemd, unit_factory: Callable[[str, str], str]
) -> None:
    """One child carries events and calls: a call that the stalled bus cannot answer fails
    alone (DBusTimeout), the child is killed, and the watcher subscribes on the next one."""
    bus = IsolatedBus(systemd_container.bus_address, timeout=2)
    seen: queue.Queue[UnitEvent] = queue.Queue()
    watcher = UnitWatcher(None, seen.put, bus=bus, debounce=0.05, restart_delay=0.1)
    watcher.start()
    try:
        assert watcher.ready.wait(20)
        first = bus.child.pid()
        with systemd_container.stalled_bus(), pytest.raises(DBusTimeout, match="within 2s"):
            bus.unit_state("dbus.service")
        # the failed call has returned: the watcher already knows its child is gone
        assert not watcher.ready.is_set()
        assert wait_until(watcher.ready.is_set, 20)
        assert bus.child.pid() not in (None, first)
        unit = unit_factory("t-shared.service", "[Service]\nExecStart=/bin/false\n")
        bus.submit(unit, "start")
        assert next_for(seen, unit, "failed").sub_state == "failed"
    finally:
        watcher.stop()
        bus.close()


def test_subscribed_child_rereads_a_unit_only_after_it_changes(
    systemd_container: LabSystemd, unit_factory: Callable[[str, str], str]
) -> None:
    """While subscribed, the child keeps each unit's NRestarts and state-change time until
    a signal says the unit changed: a restart loop still shows in the next collection."""
    bus = IsolatedBus(systemd_container.bus_address, timeout=20)
    seen: queue.Queue[UnitEvent] = queue.Queue()
    watcher = UnitWatcher(None, seen.put, bus=bus, debounce=0.05)
    watcher.start()
    try:
        assert watcher.ready.wait(20)
        unit = unit_factory(
            "t-cache.service",
            "[Unit]\nStartLimitIntervalSec=0\n"
            "[Service]\nExecStart=/bin/sleep 0.2\nRestart=always\nRestartSec=0.3\n",
        )

        def row() -> list[object]:
            rows = bus.unit_table(".+", "")
            return next(r for r in rows if r[0] == unit) if any(r[0] == unit for r in rows) else []

        bus.submit(unit, "start")
        first = row()
        assert wait_until(lambda: int(str(row()[4] or 0)) >= 2, 20)
        later = row()
        assert later[5] != first[5]  # the state-change time was read again
        bus.submit(unit, "stop")
    finally:
        watcher.stop()
        bus.close()
