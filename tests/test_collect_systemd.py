"""systemd collector: parsing and findings on literals, the probe's child process, and the
real systemd sandbox (a failed unit, a stalled bus)."""

from __future__ import annotations

import threading

import pytest

from macha_obs.collect.base import CollectorError, collect_all
from macha_obs.collect.systemd import (
    SystemdCollector,
    parse_units,
    probe_argv,
    restarts_in_window,
    run_probe,
    summarize_units,
)
from macha_obs.exporter import build_registry
from macha_obs.models import FindingKind, UnitReading
from tests.eyes_support import fixture_text
from tests.labsd import LabSystemd
from tests.systemd_fixtures import UnitFactory


def test_parse_units_keeps_valid_rows_only() -> None:
    units = parse_units(fixture_text("systemd/units.json"))
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
    assert parse_units('{"units": []}') == []


def test_restarts_in_window_counts_recent_samples_only() -> None:
    samples = [(0.0, 1), (500.0, 2), (800.0, 5), (1000.0, 6)]
    assert restarts_in_window(samples, now=1000.0, window=600.0) == 4  # 2 → 6
    assert restarts_in_window(samples, now=1000.0, window=100.0) == 0
    assert restarts_in_window([], now=0.0, window=900.0) == 0


def test_summarize_units_reports_failed_and_flapping() -> None:
    units = parse_units(fixture_text("systemd/units.json"))
    findings = summarize_units(units, {"app.service": 3, "sshd.service": 2}, flapping_restarts=3)
    assert [(f.kind, f.unit) for f in findings] == [
        (FindingKind.UNIT_FAILED, "nginx.service"),
        (FindingKind.UNIT_FLAPPING, "app.service"),
    ]


def test_collector_flapping_from_restart_history() -> None:
    now = [0.0]
    counts = iter([0, 1, 2, 3, 0])

    def probe(argv: object, timeout: float) -> str:
        del argv, timeout
        n = next(counts)
        return f'{{"units": [["app.service", "loaded", "active", "running", {n}, 0]]}}'

    collector = SystemdCollector(probe=probe, clock=lambda: now[0], flapping_restarts=3)
    kinds = []
    for _ in range(5):
        _, findings = collector.collect()
        kinds.append([f.kind for f in findings])
        now[0] += 60
    # 0 → 3 restarts within the window on the 4th cycle; an explicit stop resets NRestarts
    assert kinds == [[], [], [], [FindingKind.UNIT_FLAPPING], []]


def test_probe_argv_passes_address_only_when_given() -> None:
    assert "--address" not in probe_argv(None, ".+", "")
    assert probe_argv("unix:path=/x", ".+", "")[-2:] == ["--address", "unix:path=/x"]


def test_probe_without_a_bus_fails_cleanly() -> None:
    argv = probe_argv("unix:path=/nonexistent/bus", ".+", "")
    with pytest.raises(CollectorError, match="probe failed"):
        run_probe(argv, timeout=30)


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
def test_stalled_bus_fails_the_collector_not_the_scrape(systemd_container: LabSystemd) -> None:
    collector = SystemdCollector(address=systemd_container.bus_address, timeout=3)
    good = collect_all([collector], hostname="lab")
    assert good.collectors["systemd"].success
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
    # the bus answers again once the daemon runs: the next cycle recovers
    assert collect_all([collector], hostname="lab").collectors["systemd"].success


def test_unit_reading_failed_list() -> None:
    from macha_obs.models import SystemdReading

    reading = SystemdReading(
        units=[UnitReading(name="a.service", active_state="failed"), UnitReading(name="b.service")]
    )
    assert reading.failed == ["a.service"]
