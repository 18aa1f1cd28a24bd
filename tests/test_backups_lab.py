"""Backups in the lab systemd: a failing backup oneshot and a stale one raise their
findings and metrics, a successful one raises nothing, the last success outlives systemd
forgetting it, and through the real remediate path the failed one's journal is read and
its re-run queued - never executed, even at auto-full - unless a person trusted that unit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from macha_obs.cli.wiring import Parts
from macha_obs.collect.backups import DAY, BackupsCollector
from macha_obs.collect.base import Collector, collect_all
from macha_obs.collect.systemd import SystemdCollector
from macha_obs.metrics import build_registry
from macha_obs.models import (
    FindingKind,
    IntervalSource,
    Investigate,
    JournalTail,
    Outcome,
    Snapshot,
    StartUnit,
)
from macha_obs.store import Store
from macha_obs.systemd.bus import IsolatedBus
from tests.harness.labsd import LabSystemd, wait_until

pytestmark = pytest.mark.systemd

UnitFactory = Callable[[str, str], str]
PATTERNS = ("restic-backups-*.service", "borgbackup-job-*.service", "borgmatic.service")
GRACE = 6 * 3600.0
FAILING = "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo repository locked >&2; exit 1'\n"
SUCCEEDS = "[Service]\nType=oneshot\nExecStart=/bin/true\n"
DAILY = "[Timer]\nOnCalendar=daily\n"
# fails its first run, succeeds after; stays active once it did (RemainAfterExit)
FAILS_ONCE = (
    "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
    "ExecStart=/bin/sh -c 'test -e /run/{name}.ok || {{ touch /run/{name}.ok; exit 3; }}'\n"
)


def start(lab: LabSystemd, unit: str, state: str) -> None:
    lab.run("systemctl", "start", unit, check=False)
    lab.wait_for_state(unit, state)


def last_exit(lab: LabSystemd, unit: str) -> str:
    return lab.run(
        "systemctl", "show", "-p", "ExecMainExitTimestampMonotonic", "--value", unit
    ).stdout


def lab_backups(lab: LabSystemd, unit_factory: UnitFactory) -> dict[str, str]:
    """A failing backup, a successful one (with its daily timer), one that never ran."""
    units = {
        "failed": unit_factory("restic-backups-demo.service", FAILING),
        "ok": unit_factory("borgbackup-job-ok.service", SUCCEEDS),
        "never": unit_factory("restic-backups-never.service", SUCCEEDS),
    }
    unit_factory("borgbackup-job-ok.timer", DAILY)
    lab.run("systemctl", "start", "borgbackup-job-ok.timer")
    start(lab, units["failed"], "failed")
    start(lab, units["ok"], "inactive")
    # the timer keeps the service loaded, so systemd still knows its run
    assert wait_until(lambda: last_exit(lab, units["ok"]).strip() not in ("", "0"))
    return units


def test_failing_stale_and_successful_backups_in_the_lab(
    systemd_container: LabSystemd, unit_factory: UnitFactory, tmp_path: Path
) -> None:
    lab = systemd_container
    units = lab_backups(lab, unit_factory)
    # the sidecar first saw them three days ago (an injected clock); now is now
    now = [time.time() - 3 * DAY]
    bus = IsolatedBus(lab.bus_address, timeout=20)
    try:
        with Store(tmp_path / "state") as store:
            collector = BackupsCollector(
                store.meta,
                patterns=PATTERNS,
                grace=GRACE,
                bus=bus,
                timeout=20,
                clock=lambda: now[0],
            )
            first = collect_all([collector], hostname="lab")
            assert first.collectors["backups"].success, first.collectors["backups"].error
            assert [(f.kind, f.unit) for f in first.findings] == [
                (FindingKind.BACKUP_FAILED, units["failed"])
            ]
            now[0] = time.time()
            snapshot = collect_all([collector], hostname="lab")
    finally:
        bus.close()
    found = {(f.kind, f.unit) for f in snapshot.findings}
    assert found == {
        (FindingKind.BACKUP_FAILED, units["failed"]),
        # never succeeded, first seen three days ago: past a day and the grace
        (FindingKind.BACKUP_STALE, units["failed"]),
        (FindingKind.BACKUP_STALE, units["never"]),
    }
    assert snapshot.backups is not None
    seen = {u.unit: u for u in snapshot.backups.units}
    assert set(seen) == set(units.values())
    ok = seen[units["ok"]]
    assert (ok.last_run_success, ok.timer) == (True, "borgbackup-job-ok.timer")
    assert (ok.expected_interval_seconds, ok.interval_source) == (DAY, IntervalSource.TIMER)
    assert ok.last_success is not None
    assert abs(ok.last_success - time.time()) < 600
    failed = seen[units["failed"]]
    assert (failed.result, failed.exit_status, failed.last_success) == ("exit-code", 1, None)
    assert seen[units["never"]].last_run is None

    get = build_registry(lambda: snapshot, process=False).get_sample_value
    assert get("macha_backup_last_run_success", {"unit": units["failed"]}) == 0.0
    assert get("macha_backup_last_run_success", {"unit": units["ok"]}) == 1.0
    assert get("macha_backup_last_success_timestamp_seconds", {"unit": units["ok"]}) == (
        ok.last_success
    )
    assert get("macha_backup_last_success_timestamp_seconds", {"unit": units["never"]}) is None
    assert get("macha_backup_expected_interval_seconds", {"unit": units["ok"]}) == DAY
    assert get("macha_findings", {"kind": "backup_failed"}) == 1.0
    assert get("macha_findings", {"kind": "backup_stale"}) == 2.0


def test_the_last_success_outlives_systemd_forgetting_it(
    systemd_container: LabSystemd, unit_factory: UnitFactory, tmp_path: Path
) -> None:
    lab = systemd_container
    unit = unit_factory("borgbackup-job-kept.service", SUCCEEDS)
    unit_factory("borgbackup-job-kept.timer", DAILY)
    lab.run("systemctl", "start", "borgbackup-job-kept.timer")
    start(lab, unit, "inactive")
    assert wait_until(lambda: last_exit(lab, unit).strip() not in ("", "0"))
    bus = IsolatedBus(lab.bus_address, timeout=20)
    try:
        with Store(tmp_path / "state") as store:
            reading = BackupsCollector(
                store.meta, patterns=PATTERNS, grace=GRACE, bus=bus
            ).collect()[0]
        (before,) = reading.units
        assert before.last_run_success is True
        assert before.last_success is not None
        # what a reboot does: systemd no longer knows the run (its timer gone, the unit
        # unreferenced, garbage-collected, loaded afresh)
        lab.run("systemctl", "stop", "borgbackup-job-kept.timer")
        lab.remove_unit("borgbackup-job-kept.timer")
        assert wait_until(lambda: last_exit(lab, unit).strip() == "0")
        # a restarted sidecar on the same state directory
        with Store(tmp_path / "state") as store:
            after_reading, findings = BackupsCollector(
                store.meta, patterns=PATTERNS, grace=GRACE, bus=bus
            ).collect()
    finally:
        bus.close()
    (after,) = after_reading.units
    assert (after.last_success, after.last_run, after.last_run_success) == (
        before.last_success, before.last_run, True,
    )  # fmt: skip
    assert after.interval_source is IntervalSource.DEFAULT  # its timer is gone
    assert findings == []


# ------------------------------------------------------------------ the remediate path


def cycle(side: Parts, lab: LabSystemd) -> list[tuple[Any, Any]]:
    """The real collectors' snapshot of the lab's units into the real orchestrator: what
    it proposed and how each proposal was handled."""
    collectors: list[Collector] = [
        SystemdCollector(bus=side.bus, timeout=20),
        BackupsCollector(side.store.meta, patterns=side.cfg.backup_units, grace=60, bus=side.bus),
    ]
    snapshot: Snapshot = collect_all(collectors, hostname="testhost")
    side.orchestrator.note_snapshot(snapshot)
    del lab
    return [(p, h) for _, p, h in side.orchestrator.run_cycle("timer").handled]


def test_invariant_4_a_failed_backup_is_investigated_and_its_rerun_queued_at_auto_full(
    systemd_container: LabSystemd,
    unit_factory: UnitFactory,
    sidecar: Callable[..., Parts],
) -> None:
    lab = systemd_container
    unit = unit_factory("restic-backups-demo.service", FAILING)
    start(lab, unit, "failed")
    ran = last_exit(lab, unit)
    side = sidecar(autonomy_level="auto-full")
    handled = [(p, h) for p, h in cycle(side, lab) if getattr(p.action, "target", "") == unit]
    by_kind = {p.action.kind: h for p, h in handled}
    # the journal is read (read-only, low risk: auto-full runs it), and says why
    look = by_kind["investigate"]
    assert [p.action for p, _ in handled if p.action.kind == "investigate"] == [
        Investigate(diagnostic=JournalTail(unit=unit))
    ]
    assert look.verdict.outcome is Outcome.EXECUTE
    assert look.result is not None
    assert "repository locked" in look.result.output
    # the re-run is queued for a person, with why; nothing restarts it either
    rerun = by_kind["start_unit"]
    assert rerun.verdict.outcome is Outcome.QUEUE
    assert f"trusted_actions names 'start_unit:{unit}' exactly" in rerun.verdict.reason
    assert rerun.approval is not None
    assert "restart_unit" not in by_kind
    # ... and never executed: systemd's last run is still the failed one
    assert lab.unit_state(unit)[0] == "failed"
    assert last_exit(lab, unit) == ran
    assert [i.action for i in side.store.approvals.list_approvals()] == [StartUnit(unit=unit)]


def test_invariant_14_a_backup_trusted_by_its_exact_name_is_rerun_by_itself(
    systemd_container: LabSystemd,
    unit_factory: UnitFactory,
    sidecar: Callable[..., Parts],
) -> None:
    lab = systemd_container
    name = "restic-backups-trusted"
    unit = unit_factory(f"{name}.service", FAILS_ONCE.format(name=name))
    lab.run("rm", "-f", f"/run/{name}.ok")
    start(lab, unit, "failed")
    side = sidecar(autonomy_level="suggest", trusted_actions=[f"start_unit:{unit}"])
    handled = {p.action.kind: h for p, h in cycle(side, lab) if p.action.target == unit}
    rerun = handled["start_unit"]
    assert rerun.verdict.outcome is Outcome.EXECUTE, rerun.verdict.reason
    assert f"trusted_actions 'start_unit:{unit}'" in rerun.verdict.reason
    assert rerun.result is not None
    assert rerun.result.verified, rerun.summary
    assert lab.unit_state(unit)[0] == "active"
    # suggest: the journal look is queued for a person, like every other action
    assert handled["investigate"].verdict.outcome is Outcome.QUEUE
