"""The exposure collector against the real lab systemd: a deliberately unhardened service
listening on every address is reported, with systemd-analyze's own score and a
service_exposed finding; the hardened one and the loopback one are not; a service whose
analysis fails is an error for it alone; a score that rose after a package change is
exposure_rose."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from macha_obs.agent.patch_runbooks import hardening_from_rows
from macha_obs.agent.runbooks import runbook_proposals
from macha_obs.collect.base import collect_all
from macha_obs.collect.exposure import ExposureCollector, read_host_changes
from macha_obs.metrics import build_registry
from macha_obs.models import FindingKind, HardeningKey, HardenUnit, Incident
from macha_obs.systemd.bus import IsolatedBus
from tests.harness.exposure_support import (
    HARDENED,
    LOOPBACK,
    OPEN,
    PORT_HARD,
    UNHARDENED_TEXT,
    analyze_overall,
    lab_runner,
    start_services,
)
from tests.harness.labsd import LabSystemd
from tests.harness.systemd_fixtures import UnitFactory

pytestmark = pytest.mark.systemd
VANISHED = "labsd-expo-vanished.service"


class WithVanished:
    """The real unit table, plus a service that stopped between the listing and its
    analysis (a real race, made certain at the bus boundary)."""

    def __init__(self, bus: IsolatedBus) -> None:
        self.bus = bus

    def unit_table(self, include: str, exclude: str, timeout: float | None = None) -> list[Any]:
        rows = self.bus.unit_table(include, exclude, timeout)
        return [*rows, (VANISHED, "loaded", "active", "running", 0, 1)]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_unhardened_listener_is_reported_and_nothing_else(
    systemd_container: LabSystemd, unit_factory: UnitFactory, tmp_path: Path
) -> None:
    lab = systemd_container
    start_services(lab, unit_factory)
    bus = IsolatedBus(lab.bus_address, timeout=20)
    try:
        c = ExposureCollector(
            bus=WithVanished(bus),
            address=lab.bus_address,
            runner=lab_runner(lab),
            changes=lambda: read_host_changes(tmp_path),
            threshold=7.0,
        )
        snapshot = collect_all([c], hostname="lab", timeout=60)
    finally:
        bus.close()
    assert snapshot.collectors["exposure"].success
    reading = snapshot.exposure
    assert reading is not None
    units = {u.unit: u for u in reading.units}
    for name in (OPEN, HARDENED, LOOPBACK, "dbus.service"):
        assert units[name].score == analyze_overall(lab, name), name
        assert units[name].error == ""
    assert (units[OPEN].score or 0) > 9
    assert (units[HARDENED].score or 10) < 7.0  # 3.0 OK
    assert units[OPEN].unsafe > units[HARDENED].unsafe
    assert (units[OPEN].listening_non_loopback, units[HARDENED].listening_non_loopback) == (
        True,
        True,
    )
    assert units[LOOPBACK].listening_non_loopback is False
    # the vanished service is an error for itself only, in systemd-analyze's own words
    assert units[VANISHED].score is None
    assert "not found" in units[VANISHED].error
    exposed = [f.unit for f in snapshot.findings if f.kind is FindingKind.SERVICE_EXPOSED]
    assert exposed == [OPEN]
    # the runbooks turn the finding into a hardening patch of exactly the catalogue's
    # settings the real analysis marked unsafe (the policy queues it; it is never run)
    assert "NoNewPrivileges=" in units[OPEN].hardenable
    # what the hardened one still shows (a listener needs AF_INET) proposes nothing
    assert hardening_from_rows(HARDENED, units[HARDENED].hardenable) is None
    proposals, _ = runbook_proposals(
        Incident(id="i", source="finding", findings=list(snapshot.findings))
    )
    patches = [p.action for p in proposals if isinstance(p.action, HardenUnit)]
    assert [h.unit for h in patches] == [OPEN]
    rows = units[OPEN].hardenable
    for setting in patches[0].settings:  # each one the real analysis marked unsafe
        assert any(row.startswith(f"{setting.key.value}=") for row in rows), setting
    assert HardeningKey.NO_NEW_PRIVILEGES in {s.key for s in patches[0].settings}

    registry = build_registry(lambda: snapshot)

    def value(name: str, unit: str) -> float | None:
        return registry.get_sample_value(name, {"unit": unit})

    assert value("macha_unit_security_exposure", OPEN) == analyze_overall(lab, OPEN)
    assert value("macha_unit_security_unsafe_settings", OPEN) == units[OPEN].unsafe
    assert value("macha_unit_listening_non_loopback", OPEN) == 1.0
    assert value("macha_unit_listening_non_loopback", HARDENED) == 1.0
    assert value("macha_unit_listening_non_loopback", LOOPBACK) == 0.0
    assert value("macha_unit_security_exposure", VANISHED) is None
    assert registry.get_sample_value("macha_findings", {"kind": "service_exposed"}) == 1.0
    assert registry.get_sample_value("macha_security_exposure_run_timestamp_seconds") == (
        reading.ran_at
    )


def test_a_score_that_rose_after_a_package_change_is_exposure_rose(
    systemd_container: LabSystemd, unit_factory: UnitFactory, tmp_path: Path
) -> None:
    lab = systemd_container
    start_services(lab, unit_factory)
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text("Package: x\n")
    os.utime(status, (1e9, 1e9))
    clock = Clock()
    runs: list[str] = []
    runner = lab_runner(lab)

    def counting(argv: Any, env: Any, timeout: float) -> Any:
        runs.append(argv[-1])
        return runner(argv, env, timeout)

    c = ExposureCollector(
        address=lab.bus_address,
        runner=counting,
        changes=lambda: read_host_changes(tmp_path),
        interval=3600,
        clock=clock,
    )
    try:
        first, _ = c.collect()
        hardened_before = next(u.score for u in first.units if u.unit == HARDENED)
        # the package upgrade drops the hardening of the service (its unit file changes)
        lab.write_unit(HARDENED, UNHARDENED_TEXT.format(address="0.0.0.0", port=PORT_HARD))
        lab.run("systemctl", "restart", HARDENED)
        lab.wait_for_state(HARDENED, "active")
        os.utime(status, (2e9, 2e9))
        clock.now += 3599
        assert c.collect()[0] is first  # not yet: the cached run, no process started
        assert len(runs) == len(first.units)
        clock.now += 1
        second, findings = c.collect()
    finally:
        c.bus.close()  # type: ignore[attr-defined]
    assert len(runs) > len(first.units)
    after = next(u.score for u in second.units if u.unit == HARDENED)
    assert (after or 0) > (hardened_before or 10)
    rose = [f for f in findings if f.kind is FindingKind.EXPOSURE_ROSE]
    assert [f.unit for f in rose] == [HARDENED]
    assert second.packages_changed_at == 2e9
