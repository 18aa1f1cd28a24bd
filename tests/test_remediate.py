"""From proposal to verified fix (or queue) against a real systemd, and approvals by CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from macha_obs.cli import build_executor
from macha_obs.config import Config
from macha_obs.intake.incidents import IncidentStore
from macha_obs.models import (
    ActionStatus,
    ApprovalStatus,
    ConfigChange,
    Finding,
    FindingKind,
    Outcome,
    Proposal,
    RestartUnit,
    Risk,
    StartUnit,
    describe_action,
)
from macha_obs.policy.scope import Scope
from macha_obs.remediate.remediator import Handled, Remediator
from macha_obs.store import Store
from tests.harness.labsd import LabSystemd

pytestmark = pytest.mark.systemd

UnitFactory = Callable[[str, str], str]
CRASH_ONCE = (
    "[Service]\nExecStartPre=/bin/sh -c 'test -e /run/{name}.ok || "
    "{{ touch /run/{name}.ok; exit 3; }}'\nExecStart=/bin/sleep infinity\n"
)


@pytest.fixture
def remediator_for(lab_config: Callable[..., Config]) -> Iterator[Callable[..., Remediator]]:
    made: list[tuple[Store, Remediator]] = []

    def make(**overrides: object) -> Remediator:
        cfg = lab_config(**overrides)
        store = Store(cfg.state_dir)
        rem = Remediator(cfg, store, build_executor(cfg), scope_of=IncidentStore(store).scope_of)
        made.append((store, rem))
        return rem

    yield make
    for store, rem in made:
        rem.executor.systemd.bus.close()  # type: ignore[attr-defined]
        store.close()


def incident_naming(rem: Remediator, unit: str) -> str:
    """A finding incident whose evidence names `unit` (the scope lock needs one)."""
    failed = Finding(kind=FindingKind.UNIT_FAILED, subject=unit, unit=unit, summary="failed")
    incident_id, _ = IncidentStore(rem.store).open_for_findings(unit, [failed])
    return incident_id


def handle(rem: Remediator, action: RestartUnit | StartUnit, **proposal: object) -> Handled:
    incident_id = incident_naming(rem, action.unit)
    scope = IncidentStore(rem.store).scope_of([incident_id])
    return rem.handle(incident_id, Proposal(action=action, **proposal), scope)


def break_unit(lab: LabSystemd, unit_factory: UnitFactory, name: str) -> str:
    unit = unit_factory(f"{name}.service", CRASH_ONCE.format(name=name))
    lab.run("rm", "-f", f"/run/{name}.ok", check=False)
    with lab.dbus() as bus:
        from pystemd.systemd1 import Manager

        Manager(bus=bus, _autoload=True).Manager.StartUnit(unit.encode(), b"replace")
    lab.wait_for_state(unit, "failed")
    return unit


def test_auto_safe_restarts_and_verifies(
    systemd_container: LabSystemd, unit_factory: UnitFactory, remediator_for
) -> None:
    unit = break_unit(systemd_container, unit_factory, "t-auto")
    rem = remediator_for(autonomy_level="auto-safe")
    handled = handle(rem, RestartUnit(unit=unit), reason="failed")
    assert handled.verdict.outcome is Outcome.EXECUTE
    assert handled.result is not None
    assert handled.result.verified
    assert systemd_container.unit_state(unit) == ("active", "running")
    record = rem.store.ledger.get_action(handled.action_id)
    assert record is not None
    assert record.status is ActionStatus.SUCCEEDED
    assert record.result is not None
    assert record.result.before is not None
    assert record.result.before.active_state == "failed"


def test_invariant_10_every_verdict_and_action_is_audited_with_incident(
    systemd_container: LabSystemd, unit_factory: UnitFactory, remediator_for
) -> None:
    unit = break_unit(systemd_container, unit_factory, "t-audit")
    rem = remediator_for(autonomy_level="auto-safe")
    handle(rem, RestartUnit(unit=unit), reason="r")
    incident_id = incident_naming(rem, unit)
    decisions = [json.loads(x) for x in rem.store.audit.decisions_log.read_text().splitlines()]
    actions = [json.loads(x) for x in rem.store.audit.actions_log.read_text().splitlines()]
    assert [d["event"] for d in decisions] == ["verdict"]
    assert decisions[0]["incident_id"] == incident_id
    assert decisions[0]["outcome"] == "execute"
    assert [a["event"] for a in actions] == ["intent", "outcome"]
    assert {a["incident_id"] for a in actions} == {incident_id}
    # the verdict was on disk before the intent, the intent before the outcome
    assert decisions[0]["ts"] <= actions[0]["ts"] <= actions[1]["ts"]


def test_suggest_queues_then_cli_approval_executes_once(
    systemd_container: LabSystemd,
    unit_factory: UnitFactory,
    remediator_for,
    lab_config: Callable[..., Config],
) -> None:
    unit = break_unit(systemd_container, unit_factory, "t-approve")
    rem = remediator_for(autonomy_level="suggest")
    handled = handle(rem, RestartUnit(unit=unit), reason="failed", evidence=["exit 3"])
    assert handled.verdict.outcome is Outcome.QUEUE
    assert handled.approval is not None
    assert handled.approval.id == 0
    assert systemd_container.unit_state(unit)[0] == "failed"  # nothing ran

    cfg = lab_config(autonomy_level="suggest")
    env = {
        **os.environ,
        "MACHA_STATE_DIR": str(cfg.state_dir),
        "MACHA_SYSTEMD_BUS_ADDRESS": systemd_container.bus_address,
        "MACHA_VERIFY_SETTLE": "0.5",
    }

    def approve(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(Path(sys.executable).parent / "macha-approve"), *args]
        return subprocess.run(argv, check=False, env=env, capture_output=True, text=True)

    listed = approve("list", "--json")
    assert listed.returncode == 0, listed.stderr
    [item] = json.loads(listed.stdout)
    assert (item["id"], item["status"], item["label"]) == (0, "pending", f"restart_unit {unit}")

    shown = approve("show", "0")
    assert "exit 3" in shown.stdout
    assert "queued for approval" in shown.stdout

    first = approve("approve", "0")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "verified" in first.stdout
    assert systemd_container.unit_state(unit) == ("active", "running")

    again = approve("approve", "0")
    assert again.returncode == 1
    assert "approval 0 is executed, not pending" in again.stderr
    assert len(rem.store.ledger.list_actions()) == 1  # executed exactly once


def test_invariant_5_approval_of_a_fixed_problem_does_nothing(
    systemd_container: LabSystemd, unit_factory: UnitFactory, remediator_for
) -> None:
    unit = break_unit(systemd_container, unit_factory, "t-gone")
    rem = remediator_for(autonomy_level="suggest")
    queued = handle(rem, StartUnit(unit=unit))
    assert queued.approval is not None
    # a human (or systemd) fixed it meanwhile
    with systemd_container.dbus() as bus:
        from pystemd.systemd1 import Manager

        Manager(bus=bus, _autoload=True).Manager.StartUnit(unit.encode(), b"replace")
    systemd_container.wait_for_state(unit, "active")
    handled = rem.approve(queued.approval.id, "alice")
    assert handled.verdict.outcome is Outcome.REFUSE
    assert handled.approval is not None
    assert handled.approval.status is ApprovalStatus.CANCELLED
    assert f"{unit} is active and no alert about it is firing" in handled.approval.note
    assert rem.store.ledger.list_actions() == []


def test_invariant_5_approval_of_protected_unit_is_refused(remediator_for) -> None:
    rem = remediator_for(autonomy_level="suggest")
    # queued before the unit became protected (e.g. an older config); approval re-judges
    rem.store.approvals.enqueue(
        "inc", RestartUnit(unit="sshd.service"), risk=Risk.LOW, reason="r", ttl=60
    )
    handled = rem.approve(0, "alice")
    assert handled.verdict.outcome is Outcome.REFUSE
    assert "protected" in handled.verdict.reason
    assert handled.approval is not None
    assert handled.approval.status is ApprovalStatus.REFUSED
    assert rem.store.ledger.list_actions() == []


def test_observe_records_and_keeps_approvals_pending(remediator_for) -> None:
    rem = remediator_for(autonomy_level="observe")
    handled = handle(rem, RestartUnit(unit="x.service"))
    assert handled.verdict.outcome is Outcome.RECORD
    assert rem.store.approvals.list_approvals() == []
    incident_id = incident_naming(rem, "x.service")
    rem.store.approvals.enqueue(
        incident_id, RestartUnit(unit="x.service"), risk=Risk.LOW, reason="r", ttl=60
    )
    approved = rem.approve(0, "alice")
    assert approved.verdict.outcome is Outcome.RECORD
    assert approved.approval is not None
    assert approved.approval.status is ApprovalStatus.PENDING  # not lost
    assert rem.store.ledger.list_actions() == []


def test_config_change_is_acknowledged_never_executed(remediator_for, tmp_path: Path) -> None:
    config_dir = tmp_path / "nixos"
    config_dir.mkdir()
    (config_dir / "configuration.nix").write_text("{\n  x.enable = false;\n}\n")
    rem = remediator_for(autonomy_level="auto-full", nixos_config_dir=str(config_dir))
    diff = (
        "--- a/configuration.nix\n+++ b/configuration.nix\n"
        "@@ -2 +2 @@\n-  x.enable = false;\n+  x.enable = true;\n"
    )
    change = ConfigChange(path="configuration.nix", diff=diff, summary="enable x")
    handled = rem.handle("inc", Proposal(action=change), Scope())
    assert handled.verdict.outcome is Outcome.QUEUE, handled.verdict.reason
    done = rem.approve(handled.approval.id, "alice")
    assert done.approval is not None
    assert done.approval.status is ApprovalStatus.ACKNOWLEDGED
    assert rem.store.ledger.list_actions() == []
    assert "x.enable = false" in (config_dir / "configuration.nix").read_text()  # never applied


def test_invariant_7_failed_verifications_open_the_breaker(
    systemd_container: LabSystemd, unit_factory: UnitFactory, remediator_for
) -> None:
    unit = unit_factory("t-broken.service", "[Service]\nExecStart=/bin/false\n")
    systemd_container.run("systemctl", "start", unit, check=False)
    systemd_container.wait_for_state(unit, "failed")
    rem = remediator_for(autonomy_level="auto-safe", breaker_threshold=2)
    for _ in range(2):
        handled = handle(rem, RestartUnit(unit=unit))
        assert handled.verdict.outcome is Outcome.EXECUTE
        assert handled.result is not None
        assert not handled.result.verified
    assert rem.breaker().open
    # now the host is back to suggest: the third attempt is queued, not executed
    third = handle(rem, RestartUnit(unit=unit))
    assert third.verdict.outcome is Outcome.QUEUE
    assert "breaker open" in third.verdict.reason
    # a restart of the process (a new Remediator on the same state) keeps it open
    assert remediator_for(autonomy_level="auto-safe", breaker_threshold=2).breaker().open


def test_fleet_check_queues_an_automatic_fix_before_it_runs(
    systemd_container: LabSystemd, unit_factory: UnitFactory, remediator_for
) -> None:
    unit = break_unit(systemd_container, unit_factory, "t-fleet")
    rem = remediator_for(autonomy_level="auto-safe")
    asked: list[str] = []

    def busy_fleet(action: object) -> str | None:
        asked.append(describe_action(action))  # type: ignore[arg-type]
        return "4 hosts restarted it within the hour (fleet_max_hosts 3)"

    rem.fleet_check = busy_fleet
    incident_id = incident_naming(rem, unit)
    scope = IncidentStore(rem.store).scope_of([incident_id])
    proposal = Proposal(action=RestartUnit(unit=unit), reason="failed")
    judged = [(proposal, rem.decide(incident_id, proposal, scope))]
    assert judged[0][1].outcome is Outcome.EXECUTE  # the policy alone would run it
    # the fast path (no settle): asked right before executing, queued instead
    [(_, handled)] = rem.act(incident_id, judged, scope, alert_driven=False, settle=None)
    assert asked == [f"restart_unit {unit}"]
    assert handled.verdict.outcome is Outcome.QUEUE
    assert "4 hosts restarted it" in handled.verdict.reason
    assert handled.approval is not None
    assert handled.approval.status is ApprovalStatus.PENDING
    assert rem.store.ledger.list_actions() == []
    assert systemd_container.unit_state(unit)[0] == "failed"  # nothing ran
    audited = [json.loads(x) for x in rem.store.audit.decisions_log.read_text().splitlines()]
    assert audited[-1]["outcome"] == "queue"
    assert "4 hosts" in audited[-1]["reason"]

    # handle() (decide + carry out) is held the same way; a check that crashes fails closed
    def broken_fleet(action: object) -> str | None:
        raise ZeroDivisionError("division by zero")

    rem.fleet_check = broken_fleet
    again = handle(rem, RestartUnit(unit=unit))
    assert again.verdict.outcome is Outcome.QUEUE
    assert "the fleet check failed (ZeroDivisionError" in again.verdict.reason
    assert again.approval is not None
    assert again.approval.id == handled.approval.id
    # a human's approval is the human's call: the fleet is not asked
    asked.clear()
    rem.fleet_check = busy_fleet
    approved = rem.approve(handled.approval.id, "alice")
    assert asked == []
    assert approved.verdict.outcome is Outcome.EXECUTE
    assert systemd_container.unit_state(unit) == ("active", "running")


def test_fleet_check_saying_nothing_lets_the_fix_run(
    systemd_container: LabSystemd, unit_factory: UnitFactory, remediator_for
) -> None:
    unit = break_unit(systemd_container, unit_factory, "t-fleet-ok")
    rem = remediator_for(autonomy_level="auto-safe")
    rem.fleet_check = lambda action: None
    handled = handle(rem, RestartUnit(unit=unit))
    assert handled.verdict.outcome is Outcome.EXECUTE
    assert handled.result is not None
    assert handled.result.verified
