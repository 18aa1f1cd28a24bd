"""A scripted person working through incidents on the lab systemd (issue 13): the
simulated operator of tests/test_learn_operator.py and the prompt-history test."""

from __future__ import annotations

from typing import Any

from macha_obs.cli.wiring import Parts
from macha_obs.models import AlertGroup, Approval, ApprovalStatus, describe_action
from tests.harness.labsd import LabSystemd, wait_until
from tests.harness.receiver_support import alert, payload


class Operator:
    """The lab, the sidecar, and a person working through incidents one at a time."""

    def __init__(self, lab: LabSystemd, side: Parts) -> None:
        self.lab = lab
        self.side = side
        self.round = 0

    def break_unit(self, unit: str, *, start_limit: bool = False) -> None:
        """A unit that failed its start (and starts fine when asked again); or one that
        was started once too often, so systemd gave up (start-limit-hit)."""
        name = unit.removesuffix(".service")
        self.lab.run("systemctl", "stop", unit, check=False)
        self.lab.run("systemctl", "reset-failed", unit, check=False)
        if start_limit:
            self.lab.run("systemctl", "start", unit)
            self.lab.run("systemctl", "restart", unit, check=False)
            assert wait_until(lambda: self.result(unit) == "start-limit-hit", timeout=30)
            return
        self.lab.run("rm", "-f", f"/run/{name}.ok")
        self.lab.run("systemctl", "start", unit, check=False)
        self.lab.wait_for_state(unit, "failed")

    def result(self, unit: str) -> str:
        return self.lab.run("systemctl", "show", "-p", "Result", "--value", unit).stdout.strip()

    def alert(self, unit: str, *, firing: bool = True) -> None:
        """Alertmanager's delivery about `unit`; every round's alert starts anew."""
        starts = f"2026-11-25T10:{self.round:02d}:00Z"
        body = alert("MachaUnitFailed", unit=unit, starts=starts,
                     status="firing" if firing else "resolved")  # fmt: skip
        group = AlertGroup.model_validate(payload(body, group_key=f'{{}}:{{unit="{unit}"}}'))
        self.side.incidents.ingest(group, group.model_dump_json(by_alias=True), group.alerts)

    def incident(self, unit: str, *, start_limit: bool = False) -> list[Any]:
        """A unit fails, its alert fires, the sidecar runs a cycle: what it handled."""
        self.round += 1
        self.break_unit(unit, start_limit=start_limit)
        self.alert(unit)
        return self.side.orchestrator.run_cycle("alert").handled

    def pending(self, kind: str, unit: str) -> Approval | None:
        for item in self.side.store.approvals.list_approvals({ApprovalStatus.PENDING}):
            if describe_action(item.action) == f"{kind} {unit}":
                return item
        return None

    def approve(self, kind: str, unit: str) -> None:
        item = self.pending(kind, unit)
        assert item is not None, f"{kind} {unit} was not queued"
        handled = self.side.remediator.approve(item.id, "operator")
        assert handled.result is not None, handled.summary
        assert handled.result.verified, handled.summary

    def reject(self, kind: str, unit: str, reason: str) -> None:
        item = self.pending(kind, unit)
        assert item is not None, f"{kind} {unit} was not queued"
        self.side.remediator.reject(item.id, "operator", reason)

    def fix_by_hand(self, unit: str) -> None:
        self.lab.run("systemctl", "reset-failed", unit, check=False)
        self.lab.run("systemctl", "start", unit)
        self.lab.wait_for_state(unit, "active")

    def resolve(self, unit: str) -> list[int]:
        """The unit is healthy, its alert resolves: the incident closes; what the cycle
        cancelled because the problem went away without the sidecar."""
        if self.lab.unit_state(unit)[0] != "active":
            self.fix_by_hand(unit)
        self.alert(unit, firing=False)
        cancelled = self.side.orchestrator.run_cycle("alert").cancelled
        assert self.side.incidents.open_incidents() == []
        return cancelled
