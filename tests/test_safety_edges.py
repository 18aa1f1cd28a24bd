"""Safety at the edges (issue 9), against a real systemd: the scope lock, a queue a person
can trust, failures that count, start limits, and a human who can always step in.

Each test drives the real executor over D-Bus; the daemon tests run `macha-obs serve` as
a process. Pure parts of the same rules are in tests/test_scope.py and
tests/test_protected.py.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from macha_obs import config as config_mod
from macha_obs.cli.wiring import Parts, assemble
from macha_obs.config import Config
from macha_obs.errors import RefusedError
from macha_obs.intake.incidents import IncidentStore
from macha_obs.models import (
    Action,
    ActionStatus,
    ApprovalStatus,
    CollectorRun,
    ExecutionResult,
    FindingKind,
    Outcome,
    Proposal,
    RestartUnit,
    UnitState,
)
from macha_obs.policy.scope import Scope
from macha_obs.remediate.remediator import Remediator
from macha_obs.store import Store
from macha_obs.systemd.events import UnitEvent
from tests.harness.daemon_support import MACHA_APPROVE, MACHA_CHECK, MACHA_OBS, Daemon
from tests.harness.labsd import LabSystemd
from tests.harness.receiver_support import alert, payload
from tests.harness.sidecar_support import broken, deliver, main_pid
from tests.harness.stack import poll

UnitFactory = Callable[[str, str], str]
RUNNING = "[Service]\nExecStart=/bin/sleep infinity\n"


def verdicts(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / "decisions.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [d for d in map(json.loads, lines) if d.get("event") == "verdict"]


# ---------------------------------------------------------------- the scope lock


@pytest.mark.systemd
def test_invariant_12_an_alert_about_a_unit_a_person_stopped_does_nothing(
    systemd_container: LabSystemd, unit_factory: UnitFactory, daemons: Callable[..., Daemon]
) -> None:
    lab = systemd_container
    unit = unit_factory("edge-stopped.service", RUNNING)
    lab.run("systemctl", "start", unit)
    lab.run("systemctl", "stop", unit)  # a person: inactive, result success
    daemon = daemons(autonomy_level="auto-full")
    for name in ("MachaUnitFailed", "ServiceDown"):  # our rule's alert, and an operator's
        body = payload(alert(name, unit=unit), group_key=f'{{}}:{{alertname="{name}"}}')
        assert daemon.post_alerts(body).status_code == 200

    def judged() -> list[dict[str, Any]]:
        return [v for v in verdicts(daemon.state_dir) if v["action"].get("unit") == unit]

    assert poll(lambda: len(judged()) >= 2, 30), daemon.log_tail()
    for v in judged():
        assert v["outcome"] == "refuse"
        assert "inactive" in v["reason"]
        assert "left alone whatever an alert says" in v["reason"]
    assert daemon.actions(unit) == []
    assert [a for a in daemon.approvals() if a.action.target == unit] == []
    assert lab.unit_state(unit)[0] == "inactive"


@pytest.mark.systemd
def test_invariant_12_a_running_unit_is_restarted_on_its_firing_alert_never_after_it_resolved(
    systemd_container: LabSystemd, unit_factory: UnitFactory, sidecar: Callable[..., Parts]
) -> None:
    """prometheus-am-executor's case: a running service an alert says misbehaves."""
    lab = systemd_container
    unit = unit_factory("edge-slow.service", RUNNING)
    lab.run("systemctl", "start", unit)
    # auto-safe: the firing alert confirms the problem, the restart runs
    auto = sidecar(autonomy_level="auto-safe")
    deliver(auto, unit, "SlowResponses", macha_action="restart_unit")
    before = main_pid(lab, unit)
    [(_, _, handled)] = auto.orchestrator.run_cycle("alert").handled
    assert handled.verdict.outcome is Outcome.EXECUTE
    assert handled.result is not None
    assert handled.result.verified
    assert main_pid(lab, unit) != before

    # suggest: queued while it fires; the alert resolves; the approval restarts nothing
    side = sidecar(autonomy_level="suggest", state_dir=str(auto.cfg.state_dir) + "-suggest")
    deliver(side, unit, "SlowResponses", macha_action="restart_unit")
    [(_, _, queued)] = side.orchestrator.run_cycle("alert").handled
    assert queued.approval is not None
    deliver(side, unit, "SlowResponses", firing=False, macha_action="restart_unit")
    running = main_pid(lab, unit)
    approved = side.remediator.approve(queued.approval.id, "alice")
    assert approved.verdict.outcome is Outcome.REFUSE
    assert "no alert about it is firing" in approved.verdict.reason
    assert approved.approval is not None
    assert approved.approval.status is ApprovalStatus.CANCELLED
    assert main_pid(lab, unit) == running
    assert side.store.ledger.list_actions() == []


@pytest.mark.systemd
def test_invariant_12_the_executor_refuses_a_protected_alias(
    systemd_container: LabSystemd, unit_factory: UnitFactory, lab_config: Callable[..., Config]
) -> None:
    """A unit file linked under a protected name is that unit: every name counts."""
    lab = systemd_container
    unit = unit_factory("edge-alias.service", RUNNING + "\n[Install]\nAlias=tailscaled.service\n")
    lab.run("ln", "-sf", "/etc/systemd/system/edge-alias.service",
            "/etc/systemd/system/tailscaled.service")  # fmt: skip
    try:
        lab.daemon_reload()
        lab.run("systemctl", "start", unit)
        lab.run("systemctl", "kill", "--signal=KILL", unit)
        lab.wait_for_state(unit, "failed")
        side = assemble(lab_config(autonomy_level="auto-full"), Store(lab_config().state_dir))
        try:
            with pytest.raises(RefusedError, match=r"also tailscaled\.service, which is protected"):
                side.executor.run(RestartUnit(unit=unit))
        finally:
            side.close()
            side.store.close()
        assert lab.unit_state(unit)[0] == "failed"
    finally:
        lab.run("rm", "-f", "/etc/systemd/system/tailscaled.service")
        lab.daemon_reload()


# ---------------------------------------------------------------- a queue a person can trust


@pytest.mark.systemd
def test_queue_stability_event_alert_cycles_and_a_failed_collector_keep_one_item(
    systemd_container: LabSystemd, unit_factory: UnitFactory, sidecar: Callable[..., Parts]
) -> None:
    lab = systemd_container
    unit = broken(lab, unit_factory, "edge-queue")
    side = sidecar(autonomy_level="suggest")
    orch = side.orchestrator

    def pending() -> list[tuple[int, str]]:
        items = side.store.approvals.list_approvals({ApprovalStatus.PENDING})
        return [(a.id, a.action.target) for a in items if a.action.target == unit]

    # 1. the D-Bus event
    orch.note_unit_event(UnitEvent(unit=unit, active_state="failed", sub_state="failed", at=0.0))
    orch.run_cycle("event")
    assert pending() == [(0, unit)]
    # 2. the alert about the same unit, later
    deliver(side, unit)
    orch.run_cycle("alert")
    assert pending() == [(0, unit)]
    # 3. three timer cycles with real collections
    for _ in range(3):
        orch.note_snapshot(side.loop.run_once())
        orch.run_cycle("timer")
        assert pending() == [(0, unit)]
    # 4. one collection whose systemd collector failed: unknown, never "resolved"
    snap = side.loop.run_once()
    stalled = CollectorRun(success=False, duration_seconds=0.1, error="bus stalled")
    failed = snap.model_copy(
        update={
            "collectors": {**snap.collectors, "systemd": stalled},
            "systemd": None,
            "findings": [f for f in snap.findings if f.kind is not FindingKind.UNIT_FAILED],
        }
    )
    orch.note_snapshot(failed)
    orch.run_cycle("timer")
    assert pending() == [(0, unit)]
    [item] = [a for a in side.store.approvals.list_approvals() if a.action.target == unit]
    assert len(item.incident_ids) == 2  # the event's incident and the alert's
    assert side.store.ledger.list_actions() == []

    # `macha-approve approve 0` carries out that very item, once
    env = {
        "PATH": "/usr/bin:/bin",
        "MACHA_CONFIG": "",
        "MACHA_STATE_DIR": str(side.cfg.state_dir),
        "MACHA_SYSTEMD_BUS_ADDRESS": lab.bus_address,
        "MACHA_VERIFY_SETTLE": "0.3",
    }
    done = subprocess.run([MACHA_APPROVE, "approve", "0"], env=env, capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verified" in done.stdout
    assert lab.unit_state(unit) == ("active", "running")
    again = subprocess.run([MACHA_APPROVE, "approve", "0"], env=env, capture_output=True,
                           text=True, check=False)  # fmt: skip
    assert again.returncode == 1
    assert len([a for a in side.store.ledger.list_actions() if a.action.target == unit]) == 1


@pytest.mark.systemd
def test_an_item_is_cancelled_only_when_systemd_confirms_the_problem_gone(
    systemd_container: LabSystemd, unit_factory: UnitFactory, sidecar: Callable[..., Parts]
) -> None:
    lab = systemd_container
    unit = broken(lab, unit_factory, "edge-cancel")
    side = sidecar(autonomy_level="suggest")
    deliver(side, unit)
    side.orchestrator.run_cycle("alert")
    [item] = side.store.approvals.list_approvals({ApprovalStatus.PENDING})
    # a resolve (forged, or early) is a hint to look: systemd still says failed
    deliver(side, unit, firing=False)
    report = side.orchestrator.run_cycle("alert")
    assert report.cancelled == []
    assert side.store.approvals.get_approval(item.id).status is ApprovalStatus.PENDING  # type: ignore[union-attr]
    # a person fixes it: now it is gone, and the reason says so
    lab.run("systemctl", "restart", unit)
    report = side.orchestrator.run_cycle("timer")
    assert report.cancelled == [item.id]
    gone = side.store.approvals.get_approval(item.id)
    assert gone is not None
    assert gone.status is ApprovalStatus.CANCELLED
    assert f"{unit} is active and no alert about it is firing" in gone.note
    listed = subprocess.run(
        [MACHA_APPROVE, "--state-dir", str(side.cfg.state_dir), "list", "--all"],
        env={"PATH": "/usr/bin:/bin", "MACHA_CONFIG": ""}, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "the problem is gone" in listed.stdout


@pytest.mark.systemd
def test_macha_check_beside_the_daemon_consumes_nothing(
    systemd_container: LabSystemd, unit_factory: UnitFactory, daemons: Callable[..., Daemon]
) -> None:
    lab = systemd_container
    daemon = daemons(autonomy_level="suggest")
    unit = broken(lab, unit_factory, "edge-check")
    assert poll(lambda: any(a.action.target == unit for a in daemon.approvals()), 30)

    def state() -> tuple[object, ...]:
        with daemon.store() as store:
            incidents = store.query(
                "SELECT id, status, revision, analyzed_revision FROM incidents ORDER BY id"
            )
            return (
                [a.model_dump() for a in store.approvals.list_approvals()],
                [tuple(r) for r in incidents],
            )

    assert poll(lambda: state() == state(), 10)  # the daemon has settled
    before = state()
    checked = subprocess.run(["/usr/bin/env", MACHA_CHECK],
                             env=daemon.env, capture_output=True, text=True, check=False,
                             timeout=120)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "the daemon is running: this check only recorded what it would do" in checked.stdout
    assert "the daemon's queue: 1 pending" in checked.stdout
    assert state() == before


# ---------------------------------------------------------------- failures count


class CrashingExecutor:
    """The executor seam with a bug in it: every run raises."""

    def run(self, action: Action) -> ExecutionResult:
        raise RuntimeError("segfault in the D-Bus child")

    def unit_state(self, unit: str) -> UnitState:
        return UnitState(name=unit, load_state="loaded", active_state="failed", sub_state="failed")


def test_invariant_7_a_crashing_executor_is_a_failed_fix_and_opens_the_breaker(
    tmp_path: Path,
) -> None:
    cfg = config_mod.validate(
        {"state_dir": str(tmp_path), "autonomy_level": "auto-safe", "breaker_threshold": 2}
    )
    scope = Scope(units=frozenset({"web.service"}))
    with Store(tmp_path) as store:
        rem = Remediator(cfg, store, CrashingExecutor(), scope_of=IncidentStore(store).scope_of)
        for _ in range(2):
            handled = rem.handle("inc", Proposal(action=RestartUnit(unit="web.service")), scope)
            assert handled.verdict.outcome is Outcome.EXECUTE
            assert handled.result is not None
            assert not handled.result.ok
            assert "segfault in the D-Bus child" in handled.result.detail
        records = store.ledger.list_actions()
        assert [r.status for r in records] == [ActionStatus.FAILED, ActionStatus.FAILED]
        assert rem.breaker().open
        third = rem.handle("inc", Proposal(action=RestartUnit(unit="web.service")), scope)
        assert third.verdict.outcome is Outcome.QUEUE
        assert "breaker open" in third.verdict.reason


@pytest.mark.systemd
def test_a_unit_at_its_start_limit_is_investigated_and_the_reset_queued(
    systemd_container: LabSystemd, unit_factory: UnitFactory, sidecar: Callable[..., Parts]
) -> None:
    lab = systemd_container
    unit = unit_factory(
        "edge-limit.service",
        "[Unit]\nStartLimitIntervalSec=300\nStartLimitBurst=1\n[Service]\n"
        "ExecStart=/bin/sleep infinity\n",
    )
    lab.run("systemctl", "start", unit)
    lab.run("systemctl", "restart", unit, check=False)  # one start too many: systemd gives up

    def result() -> str:
        return lab.run("systemctl", "show", "-p", "Result", "--value", unit).stdout.strip()

    assert poll(lambda: result() == "start-limit-hit", 30), (
        result(),
        lab.run("systemctl", "status", "-n", "30", unit, check=False).stdout,
    )
    side = sidecar(autonomy_level="auto-full")
    side.orchestrator.note_snapshot(side.loop.run_once())
    report = side.orchestrator.run_cycle("timer")
    outcomes = {p.action.kind: h.verdict for _, p, h in report.handled}
    assert outcomes["investigate"].outcome is Outcome.EXECUTE
    assert outcomes["reset_failed"].outcome is Outcome.QUEUE
    assert "start limit" in outcomes["reset_failed"].reason
    assert lab.unit_state(unit)[0] == "failed"  # the author's limit stands
    assert [a.action.kind for a in side.store.ledger.list_actions()] == ["investigate"]

    opted = sidecar(
        autonomy_level="auto-full",
        auto_reset_start_limit=True,
        state_dir=str(side.cfg.state_dir) + "-opted",
    )
    opted.orchestrator.note_snapshot(opted.loop.run_once())
    report = opted.orchestrator.run_cycle("timer")
    assert {p.action.kind: h.verdict.outcome for _, p, h in report.handled}["reset_failed"] is (
        Outcome.EXECUTE
    )


# ---------------------------------------------------------------- the human steps in


@pytest.mark.systemd
def test_while_paused_a_failed_unit_is_recorded_and_restarted_after_resume(
    systemd_container: LabSystemd, unit_factory: UnitFactory, daemons: Callable[..., Daemon]
) -> None:
    lab = systemd_container
    daemon = daemons(autonomy_level="auto-safe")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [MACHA_OBS, *args], env=daemon.env, capture_output=True, text=True, check=False
        )

    paused = cli("pause", "--reason", "maintenance window")
    assert paused.returncode == 0, paused.stderr
    assert daemon.metric("macha_paused") == 1.0
    unit = broken(lab, unit_factory, "edge-pause")

    def recorded() -> bool:
        return any(
            v["action"].get("unit") == unit and v["outcome"] == "record"
            for v in verdicts(daemon.state_dir)
        )

    assert poll(recorded, 30), daemon.log_tail()
    [v] = [x for x in verdicts(daemon.state_dir) if x["action"].get("unit") == unit]
    assert "paused by" in v["reason"]
    assert "maintenance window" in v["reason"]
    assert daemon.actions(unit) == []
    assert lab.unit_state(unit)[0] == "failed"
    status = cli("status", "--json")
    assert json.loads(status.stdout)["pause"]["reason"] == "maintenance window"

    resumed = cli("resume")
    assert resumed.returncode == 0, resumed.stderr
    assert poll(lambda: lab.unit_state(unit) == ("active", "running"), 30), daemon.log_tail()
    assert poll(lambda: [a.status for a in daemon.actions(unit)] == [ActionStatus.SUCCEEDED], 30)
    events = [
        e["event"] for e in daemon.audit("actions.jsonl") if e["event"] in ("paused", "resumed")
    ]
    assert events == ["paused", "resumed"]
    assert daemon.metric("macha_paused") == 0.0


def test_invariant_14_trust_moves_to_safety_by_itself_and_to_permission_only_by_a_human(
    tmp_path: Path,
) -> None:
    now = [1_800_000_000.0]
    cfg = config_mod.validate(
        {"state_dir": str(tmp_path), "autonomy_level": "auto-safe", "breaker_threshold": 2,
         "breaker_window": 600}
    )  # fmt: skip
    scope = Scope(units=frozenset({"web.service"}))
    proposal = Proposal(action=RestartUnit(unit="web.service"))
    with Store(tmp_path, clock=lambda: now[0]) as store:
        rem = Remediator(cfg, store, CrashingExecutor(), clock=lambda: now[0])
        for _ in range(2):
            rem.handle("inc", proposal, scope)
        # toward safety, by itself: the breaker opened and the level dropped to suggest
        assert rem.breaker().open
        assert rem.handle("inc", proposal, scope).verdict.autonomy.value == "suggest"
        # nothing but a human moves it back: not time, not the failures ageing out
        now[0] += 10 * 600
        assert rem.breaker().open
        assert rem.handle("inc", proposal, scope).verdict.outcome is Outcome.QUEUE
        store.verifications.reset_breaker("alice")
        assert not rem.breaker().open
        assert rem.handle("inc", proposal, scope).verdict.outcome is Outcome.EXECUTE
    resets = [json.loads(x) for x in (tmp_path / "actions.jsonl").read_text().splitlines()]
    assert [(e["event"], e.get("by")) for e in resets if e["event"].startswith("breaker")] == [
        ("breaker_open", None),
        ("breaker_reset", "alice"),
    ]
