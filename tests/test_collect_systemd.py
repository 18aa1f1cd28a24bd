"""systemd collector: parsing and findings on literals, the long-lived D-Bus child, and the
real systemd sandbox (a failed unit, a stalled bus)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from macha_obs.collect.base import CollectorError, collect_all
from macha_obs.collect.systemd import (
    SystemdCollector,
    parse_units,
    restarts_in_window,
    summarize_units,
)
from macha_obs.errors import SystemdError
from macha_obs.metrics import build_registry
from macha_obs.models import FindingKind, UnitReading
from macha_obs.systemd.bus import IsolatedBus
from tests.harness.eyes_support import fixture_text
from tests.harness.labsd import LabSystemd, wait_until
from tests.harness.systemd_fixtures import UnitFactory


def fixture_rows(name: str) -> list[Any]:
    rows: list[Any] = json.loads(fixture_text(name))["units"]
    return rows


def test_parse_units_keeps_valid_rows_only() -> None:
    units = parse_units(fixture_rows("systemd/units.json"))
    assert [u.name for u in units] == [
        "nginx.service",
        "sshd.service",
        "app.service",
        "backup.timer",
        "ghost.service",
    ]
    nginx = units[0]
    assert (nginx.load_state, nginx.active_state, nginx.sub_state) == ("loaded", "failed", "failed")
    assert nginx.state_change_timestamp == pytest.approx(1764000000.0)
    assert units[3].n_restarts is None  # a timer has no NRestarts
    assert units[4].state_change_timestamp is None  # 0 means "never changed"


def test_parse_units_of_empty_output() -> None:
    assert parse_units([]) == []


def test_restarts_in_window_counts_recent_samples_only() -> None:
    samples = [(0.0, 1), (500.0, 2), (800.0, 5), (1000.0, 6)]
    assert restarts_in_window(samples, now=1000.0, window=600.0) == 4  # 2 → 6
    assert restarts_in_window(samples, now=1000.0, window=100.0) == 0
    assert restarts_in_window([], now=0.0, window=900.0) == 0


def test_summarize_units_reports_failed_and_flapping() -> None:
    units = parse_units(fixture_rows("systemd/units.json"))
    findings = summarize_units(units, {"app.service": 3, "sshd.service": 2}, flapping_restarts=3)
    assert [(f.kind, f.unit) for f in findings] == [
        (FindingKind.UNIT_FAILED, "nginx.service"),
        (FindingKind.UNIT_FLAPPING, "app.service"),
    ]


def test_collector_flapping_from_restart_history() -> None:
    now = [0.0]
    counts = iter([0, 1, 2, 3, 0])

    class Table:
        def unit_table(self, include: str, exclude: str, timeout: float | None = None) -> Any:
            del include, exclude, timeout
            return [["app.service", "loaded", "active", "running", next(counts), 0]]

    collector = SystemdCollector(bus=Table(), clock=lambda: now[0], flapping_restarts=3)
    kinds = []
    for _ in range(5):
        _, findings = collector.collect()
        kinds.append([f.kind for f in findings])
        now[0] += 60
    # 0 → 3 restarts within the window on the 4th cycle; an explicit stop resets NRestarts
    assert kinds == [[], [], [], [FindingKind.UNIT_FLAPPING], []]


def test_collector_without_a_bus_fails_cleanly() -> None:
    collector = SystemdCollector(address="unix:path=/nonexistent/bus", timeout=30)
    try:
        with pytest.raises(CollectorError, match="Could not open a bus"):
            collector.collect()
    finally:
        collector.bus.close()  # type: ignore[attr-defined]


def test_the_dbus_child_loads_neither_pydantic_nor_lxml() -> None:
    """The child is most of the sidecar's memory beyond its own interpreter: stdlib and
    pystemd's C bus only (no pydantic from our models, no lxml from pystemd's package)."""
    bus = IsolatedBus("unix:path=/nonexistent/bus", timeout=30)
    try:
        with pytest.raises(SystemdError):
            bus.list_units()
        pid = bus.child.pid()
        assert pid is not None
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "dbuslib" in maps
        assert "pydantic" not in maps
        assert "lxml" not in maps
    finally:
        bus.close()


# ------------------------------------------------------------------ the real systemd


@pytest.mark.systemd
def test_failed_unit_shows_as_state_series_and_finding(
    systemd_container: LabSystemd, unit_factory: UnitFactory
) -> None:
    unit = unit_factory("labsd-eyes-false.service", "[Service]\nExecStart=/bin/false\n")
    systemd_container.run("systemctl", "start", unit, check=False)
    systemd_container.wait_for_state(unit, "failed")
    collector = SystemdCollector(address=systemd_container.bus_address, timeout=20)
    snapshot = collect_all([collector], hostname="lab")
    assert snapshot.collectors["systemd"].success
    assert snapshot.systemd is not None
    assert unit in snapshot.systemd.failed
    seen = {u.name: u for u in snapshot.systemd.units}
    assert seen["dbus.service"].active_state == "active"
    assert seen[unit].n_restarts == 0
    assert any(f.kind is FindingKind.UNIT_FAILED and f.unit == unit for f in snapshot.findings)
    registry = build_registry(lambda: snapshot)
    for state in ("failed", "active", "inactive"):
        expected = 1.0 if state == "failed" else 0.0
        labels = {"unit": unit, "state": state}
        assert registry.get_sample_value("macha_systemd_unit_state", labels) == expected


@pytest.mark.systemd
def test_collections_reuse_one_long_lived_child(systemd_container: LabSystemd) -> None:
    """No process is started per collection: the D-Bus child outlives every cycle."""
    bus = IsolatedBus(systemd_container.bus_address, timeout=20)
    try:
        collector = SystemdCollector(bus=bus, timeout=20)
        collector.collect()
        child = bus.child.pid()
        assert child is not None
        for _ in range(3):
            collector.collect()
        assert bus.child.pid() == child
        # the executor's calls ride on the same child
        assert bus.unit_state("dbus.service").active_state == "active"
        assert bus.child.pid() == child
    finally:
        bus.close()


@pytest.mark.systemd
def test_stalled_bus_fails_the_collector_not_the_scrape(systemd_container: LabSystemd) -> None:
    bus = IsolatedBus(systemd_container.bus_address, timeout=3)
    collector = SystemdCollector(bus=bus, timeout=3)
    good = collect_all([collector], hostname="lab")
    assert good.collectors["systemd"].success
    stalled_child = bus.child.pid()
    latest = [good]
    registry = build_registry(lambda: latest[0])
    done = threading.Event()

    def cycle() -> None:
        latest[0] = collect_all([collector], hostname="lab")
        done.set()

    with systemd_container.stalled_bus():
        worker = threading.Thread(target=cycle, daemon=True)
        worker.start()
        # While the probe waits on the stalled bus, scrapes still render (the last snapshot):
        # the GIL is not held by a D-Bus call in this process.
        assert (
            registry.get_sample_value("macha_scrape_collector_success", {"collector": "systemd"})
            == 1.0
        )
        # ...and that scrape finished while the cycle was still waiting on the bus
        assert not done.is_set()
        assert done.wait(60), "the bounded collector never returned"
    run = latest[0].collectors["systemd"]
    assert not run.success
    assert "within 3s" in run.error
    assert latest[0].systemd is None
    assert (
        registry.get_sample_value("macha_scrape_collector_success", {"collector": "systemd"}) == 0.0
    )
    # the child that waited on the stalled bus was killed, never left hanging
    assert bus.child.pid() is None
    assert stalled_child is not None
    assert wait_until(lambda: not _alive(stalled_child), 10)
    # the bus answers again once the daemon runs: the next cycle recovers on a new child
    assert collect_all([collector], hostname="lab").collectors["systemd"].success
    assert bus.child.pid() not in (None, stalled_child)
    bus.close()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_unit_reading_failed_list() -> None:
    from macha_obs.models import SystemdReading

    reading = SystemdReading(
        units=[UnitReading(name="a.service", active_state="failed"), UnitReading(name="b.service")]
    )
    assert reading.failed == ["a.service"]
