"""The alert path end to end: real Prometheus → real Alertmanager → the daemon's webhook.

(b) auto-safe: a running unit an operator's rule says is wedged (prometheus-am-executor's
case: the rule asks for a restart with `macha_action: restart_unit`) → the alert fires →
the webhook opens an incident → the firing alert confirms the problem → restarted →
verified → the alert resolves.
(c) suggest: the same incident is queued → `macha-approve approve ID` → executed →
verified → the alert resolves and the incident closes.

The unit keeps running: the daemon's own findings (failed units) do not cover it, so
only the alert path can act. "Wedged" is a flag unit the test starts and the backend's
ExecStartPre clears, so a restart is what makes the alert resolve.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from macha_obs.models import ActionStatus, ApprovalStatus
from tests.harness.daemon_support import HOST, Daemon
from tests.harness.labsd import LabSystemd
from tests.harness.stack import Alertmanager, Prometheus, poll
from tests.test_stack_eyes import alertmanager_config, prometheus_config

pytestmark = [pytest.mark.stack, pytest.mark.systemd]

UnitFactory = Callable[[str, str], str]

RULE = """\
groups:
  - name: operator
    rules:
      - alert: BackendWedged
        # the backend runs but does not serve; here: while its wedge flag unit is active
        expr: macha_systemd_unit_state{{unit="{flag}", state="active"}} == 1
        for: 0s
        labels:
          severity: critical
          macha_action: restart_unit
          instance: {host}
          unit: {unit}
        annotations:
          summary: "{{{{ $labels.unit }}}} is wedged on {{{{ $labels.instance }}}}"
"""
FLAG = "e2e-wedged.service"
BACKEND = (
    "[Service]\nExecStartPre=/bin/systemctl stop --no-block " + FLAG + "\n"
    "ExecStart=/bin/sleep infinity\n"
)


@pytest.fixture
def alert_stack(
    systemd_container: LabSystemd,
    unit_factory: UnitFactory,
    tmp_path: Path,
    prometheus_factory: Callable[[str, list[Path]], Prometheus],
    alertmanager_factory: Callable[[str], Alertmanager],
) -> Iterator[Callable[[str], tuple[Daemon, Prometheus, str]]]:
    started: list[Daemon] = []

    def start(autonomy: str) -> tuple[Daemon, Prometheus, str]:
        unit = unit_factory("e2e-backend.service", BACKEND)
        unit_factory(FLAG, "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n")
        systemd_container.run("systemctl", "start", unit)
        daemon = Daemon(
            systemd_container, tmp_path / "state", autonomy_level=autonomy, dbus_events="false"
        ).start()
        started.append(daemon)
        rule = tmp_path / "operator.yml"
        rule.write_text(RULE.format(unit=unit, flag=FLAG, host=HOST))
        alertmanager = alertmanager_factory(alertmanager_config(daemon.port, daemon.token_file))
        prometheus = prometheus_factory(prometheus_config(daemon.port, alertmanager.port), [rule])
        prometheus.wait_targets_up(1)
        prometheus.wait_alertmanagers()
        return daemon, prometheus, unit

    yield start
    for daemon in started:
        daemon.stop()


def alert_state(prometheus: Prometheus, unit: str) -> list[str]:
    return [a["state"] for a in prometheus.alerts() if a["labels"].get("unit") == unit]


def incident_alerts(daemon: Daemon) -> list[dict[str, object]]:
    with daemon.store() as store:
        rows = store.query("SELECT incident_id, status, alert FROM incident_alerts")
    return [
        {"incident": r["incident_id"], "status": r["status"], **json.loads(r["alert"])}
        for r in rows
    ]


def test_alert_path_restarts_verifies_and_the_alert_resolves(
    systemd_container: LabSystemd, alert_stack: Callable[[str], tuple[Daemon, Prometheus, str]]
) -> None:
    daemon, prometheus, unit = alert_stack("auto-safe")
    before = systemd_container.run("systemctl", "show", "-p", "MainPID", "--value", unit).stdout
    systemd_container.run("systemctl", "start", FLAG)  # the backend wedges

    assert poll(
        lambda: any(a.status is ActionStatus.SUCCEEDED for a in daemon.actions(unit)), 60
    ), daemon.log_tail()
    [action] = daemon.actions(unit)
    assert action.action.kind == "restart_unit"
    assert systemd_container.unit_state(unit) == ("active", "running")
    after = systemd_container.run("systemctl", "show", "-p", "MainPID", "--value", unit).stdout
    assert after != before  # restarted, not merely found running
    # the incident came from the webhook: Prometheus fired it, Alertmanager delivered it
    alerts = [a for a in incident_alerts(daemon) if a["incident"] == action.incident_id]
    assert alerts
    assert alerts[0]["labels"]["alertname"] == "BackendWedged"  # type: ignore[index]
    assert alerts[0]["labels"]["instance"] == HOST  # type: ignore[index]
    # ... and the alert resolves, which the daemon records as the fix's second check
    assert poll(lambda: not alert_state(prometheus, unit), 60)
    assert poll(
        lambda: any(
            e["event"] == "alert_resolved" and e["action_id"] == action.id
            for e in daemon.audit("actions.jsonl")
        ),
        60,
    ), daemon.log_tail()


def test_in_suggest_mode_an_approved_fix_executes_and_the_alert_resolves(
    systemd_container: LabSystemd, alert_stack: Callable[[str], tuple[Daemon, Prometheus, str]]
) -> None:
    daemon, prometheus, unit = alert_stack("suggest")
    systemd_container.run("systemctl", "start", FLAG)  # the backend wedges

    def queued() -> list[int]:
        return [
            a.id
            for a in daemon.approvals()
            if a.status is ApprovalStatus.PENDING and a.action.target == unit
        ]

    assert poll(lambda: bool(queued()), 60), daemon.log_tail()
    assert daemon.actions(unit) == []  # suggest executes nothing by itself
    assert alert_state(prometheus, unit) == ["firing"]
    [approval_id] = queued()

    listed = daemon.approve("list")
    assert f"restart_unit {unit}" in listed.stdout
    approved = daemon.approve("approve", str(approval_id))
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert "verified" in approved.stdout
    assert systemd_container.unit_state(unit) == ("active", "running")

    assert poll(lambda: not alert_state(prometheus, unit), 60)
    [action] = daemon.actions(unit)
    assert action.approval_id == approval_id
    assert action.status is ActionStatus.SUCCEEDED

    def incident_closed() -> bool:
        with daemon.store() as store:
            rows = store.query("SELECT status FROM incidents WHERE id = ?", (action.incident_id,))
        return bool(rows) and rows[0]["status"] == "resolved"

    assert poll(incident_closed, 60), daemon.log_tail()
