"""The whole daemon (`macha-obs serve`) against a real systemd: the loop issue's cases.

A D-Bus event → restarted and verified; a unit that keeps failing → bounded attempts →
breaker → escalated; LLM down → runbooks act and say so; SIGKILL mid-action →
`interrupted`, not repeated; a unit systemd is restarting is left alone; and daemon
hygiene (lock, SIGTERM, sd_notify under a real systemd). The alert path, through
Prometheus and Alertmanager, is in test_e2e_stack.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from macha_obs.models import ActionStatus, ApprovalStatus
from tests.harness.daemon_support import HOST, MACHA_OBS, Daemon
from tests.harness.labsd import LabSystemd
from tests.harness.receiver_support import alert, payload
from tests.harness.stack import free_port, poll

pytestmark = pytest.mark.systemd

UnitFactory = Callable[[str, str], str]

CRASH_ONCE = (
    "[Service]\nExecStartPre=/bin/sh -c 'test -e /run/{name}.ok || "
    "{{ touch /run/{name}.ok; exit 3; }}'\nExecStart=/bin/sleep infinity\n"
)


def linger(seconds: float) -> None:
    """Give the daemon time to misbehave (a storm, a repeat): what must NOT happen."""
    time.sleep(seconds)


def crash_once(lab: LabSystemd, unit_factory: UnitFactory, name: str, extra: str = "") -> str:
    unit = unit_factory(f"{name}.service", CRASH_ONCE.format(name=name) + extra)
    lab.run("rm", "-f", f"/run/{name}.ok", check=False)
    return unit


def test_failed_unit_seen_on_dbus_is_restarted_verified_and_counted(
    systemd_container: LabSystemd, unit_factory: UnitFactory, daemons: Callable[..., Daemon]
) -> None:
    lab = systemd_container
    daemon = daemons(autonomy_level="auto-safe")
    unit = crash_once(lab, unit_factory, "e2e-a")
    lab.run("systemctl", "start", unit, check=False)

    assert poll(lambda: lab.unit_state(unit) == ("active", "running"), 30), daemon.log_tail()
    # The metric is counted after the ledger's outcome is written, in the same step of
    # the cycle: wait for the count itself, the last of what this test reads.
    restarts = {"kind": "restart_unit", "result": "verified"}
    assert poll(lambda: daemon.metric("macha_actions_total", **restarts) == 1.0, 30)
    [action] = daemon.actions(unit)
    assert action.status is ActionStatus.SUCCEEDED
    assert action.action.kind == "restart_unit"
    assert action.result is not None
    assert action.result.verified
    # the audit trail names the incident at every step
    decisions = [
        d for d in daemon.audit("decisions.jsonl") if d["incident_id"] == action.incident_id
    ]
    assert {d["event"] for d in decisions} >= {"decision", "verdict"}


def test_unit_that_keeps_failing_is_bounded_escalated_and_opens_the_breaker(
    systemd_container: LabSystemd, unit_factory: UnitFactory, daemons: Callable[..., Daemon]
) -> None:
    lab = systemd_container
    daemon = daemons(autonomy_level="auto-safe", breaker_threshold=2)
    unit = unit_factory("e2e-d.service", "[Service]\nExecStart=/bin/false\n")
    lab.run("systemctl", "start", unit, check=False)

    def breaker_open() -> bool:
        with daemon.store() as store:
            return store.verifications.breaker_opened()[0] is not None

    assert poll(breaker_open, 60), daemon.log_tail()
    # give it every chance to storm: a few more cycles and failure events
    for _ in range(3):
        lab.run("systemctl", "start", unit, check=False)
        lab.wait_for_state(unit, "failed")
    linger(3)
    attempts = [a for a in daemon.actions(unit) if a.action.kind != "investigate"]
    assert 2 <= len(attempts) <= 3  # the breaker (2 failures) or the rate limit (3/h) held
    assert all(a.status is ActionStatus.FAILED for a in attempts)
    escalated = [
        a
        for a in daemon.approvals()
        if a.status is ApprovalStatus.PENDING and a.action.target == unit
    ]
    assert escalated, "a fix that failed verification goes to a human"
    assert "escalated" in escalated[0].reason or "breaker" in escalated[0].reason
    assert daemon.metric("macha_circuit_breaker_open") == 1.0
    assert daemon.metric("macha_autonomy_level", level="suggest") == 1.0


def test_with_the_model_down_the_runbooks_act_and_the_decision_says_so(
    systemd_container: LabSystemd, unit_factory: UnitFactory, daemons: Callable[..., Daemon]
) -> None:
    lab = systemd_container
    closed = free_port()  # nothing listens there: the model server is down
    daemon = daemons(
        autonomy_level="auto-safe",
        analysis="llm-first",
        llm_enabled="true",
        ollama_url=f"http://127.0.0.1:{closed}",
        llm_timeout=2,
    )
    unit = crash_once(lab, unit_factory, "e2e-e")
    lab.run("systemctl", "start", unit, check=False)
    assert poll(lambda: lab.unit_state(unit) == ("active", "running"), 60), daemon.log_tail()

    def decisions(lane: str | None) -> list[dict[str, Any]]:
        return [
            d
            for d in daemon.audit("decisions.jsonl")
            if d["event"] == "decision"
            and d.get("lane") == lane
            and any(p["action"].get("unit") == unit for p in d["proposals"])
        ]

    # the fast lane restarted it at once; the analysis that asked the model comes after
    assert len(decisions("fast")) == 1
    assert poll(lambda: len(decisions(None)) == 1, 30), daemon.log_tail()
    [decision] = decisions(None)
    assert decision["source"] == "runbooks"
    assert decision["assessment"] == "unknown"  # never "healthy" when analysis failed
    assert decision["error"]
    assert "runbooks (after ollama)" in decision["backend"]
    assert poll(lambda: [a.status for a in daemon.actions(unit)] == [ActionStatus.SUCCEEDED], 30)


def test_sigkill_mid_action_is_recorded_interrupted_and_not_repeated(
    systemd_container: LabSystemd, unit_factory: UnitFactory, daemons: Callable[..., Daemon]
) -> None:
    lab = systemd_container
    # the restart's start job sits in a 20 s ExecStartPre: the daemon dies inside it
    unit = crash_once(lab, unit_factory, "e2e-f", extra="")
    lab.write_unit(
        "e2e-f.service.d/slow.conf", "[Service]\nExecStartPre=/bin/sleep 20\nTimeoutStartSec=60\n"
    )
    daemon = daemons(autonomy_level="auto-safe", verify_timeout=60)
    lab.run("systemctl", "start", "--no-block", unit, check=False)
    assert poll(lambda: lab.unit_state(unit)[0] == "failed", 40)
    assert poll(lambda: any(a.status is ActionStatus.INTENT for a in daemon.actions(unit)), 30)
    daemon.kill()

    again = daemons(autonomy_level="auto-safe", verify_timeout=60)  # same state dir
    assert poll(
        lambda: [a.status for a in again.actions(unit)] == [ActionStatus.INTERRUPTED], 10
    ), again.log_tail()
    assert "interrupted by a crash" in again.log_tail()
    # a few cycles later there is still exactly one action: nothing was re-run
    linger(4)
    [only] = again.actions(unit)
    events = [e["event"] for e in again.audit("actions.jsonl") if e.get("action_id") == only.id]
    assert events == ["intent", "interrupted"]


def test_unit_systemd_is_restarting_is_left_to_systemd(
    systemd_container: LabSystemd, unit_factory: UnitFactory, daemons: Callable[..., Daemon]
) -> None:
    lab = systemd_container
    daemon = daemons(autonomy_level="auto-full", flapping_restarts=2)
    unit = unit_factory(
        "e2e-g.service",
        "[Unit]\nStartLimitIntervalSec=0\n"
        "[Service]\nExecStart=/bin/sh -c 'sleep 0.5; exit 1'\nRestart=always\nRestartSec=300ms\n",
    )
    lab.run("systemctl", "start", unit, check=False)
    # several restart rounds by systemd, and several of the sidecar's cycles
    assert poll(lambda: (daemon.metric("macha_cycles_total") or 0) >= 4, 30)
    linger(4)
    unit_actions = [a for a in daemon.actions(unit) if a.action.kind != "investigate"]
    assert unit_actions == [], "systemd's own Restart= was fought"


def test_one_daemon_per_state_dir(
    systemd_container: LabSystemd, daemons: Callable[..., Daemon], tmp_path: Path
) -> None:
    first = daemons()
    second = subprocess.run(
        [MACHA_OBS, "serve"],
        env={**first.env, "MACHA_LISTEN_ADDRESS": f"127.0.0.1:{free_port()}"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert second.returncode == 2  # a startup refusal: usage
    assert "another macha-obs" in second.stderr
    assert "is running on" in second.stderr


def test_invariant_13_daemon_webhook_is_authenticated_by_default(
    daemons: Callable[..., Daemon],
) -> None:
    """DESIGN.md invariant 13: with no token configured, the daemon generates one (0600)
    before it is ready, refuses alerts without it, and logs where it is, never what."""
    daemon = daemons()
    path = daemon.token_file
    assert path == daemon.state_dir / "webhook.token"
    assert stat.S_IMODE(path.lstat().st_mode) == 0o600
    assert stat.S_ISREG(path.lstat().st_mode)
    body = payload(alert(unit="e2e-auth.service", instance=HOST))
    refused = daemon.post_alerts(body, auth=False)
    assert refused.status_code == 401
    accepted = daemon.post_alerts(body)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["status"] == "accepted"
    assert daemon.metric("macha_webhook_deliveries_total", result="unauthorized") == 1.0
    log = (daemon.state_dir / "orchestrator.log").read_text() + daemon.log_tail(100_000)
    assert str(path) in log
    assert path.read_text().strip() not in log
    # a restart reuses the token: an Alertmanager wired to the file keeps working
    token = path.read_text()
    daemon.stop()
    daemon.start()
    assert path.read_text() == token
    assert daemon.post_alerts(body).status_code == 200


def test_invariant_13_opting_out_beyond_loopback_refuses_to_start(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "MACHA_CONFIG": "",
        "MACHA_STATE_DIR": str(tmp_path / "state"),
        "MACHA_LISTEN_ADDRESS": f"0.0.0.0:{free_port()}",
        "MACHA_WEBHOOK_AUTH": "false",
        "MACHA_LLM_ENABLED": "false",
        "MACHA_DBUS_EVENTS": "false",
    }
    done = subprocess.run(
        [MACHA_OBS, "serve"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr  # a startup refusal
    assert "webhook_auth = false" in done.stderr
    assert "beyond loopback" in done.stderr
    assert not (tmp_path / "state" / "webhook.token").exists()


def test_sigterm_exits_cleanly_and_in_time(daemons: Callable[..., Daemon]) -> None:
    daemon = daemons()
    assert daemon.stop(timeout=10) == 0  # the unit's TimeoutStopSec budget
    assert '"message": "stopping"' in (daemon.state_dir / "orchestrator.log").read_text()


def test_under_systemd_notify_and_watchdog(
    systemd_container: LabSystemd, unit_factory: UnitFactory
) -> None:
    """Type=notify only becomes active on READY=1; WatchdogSec kills it without pings."""
    lab = systemd_container
    unit = unit_factory(
        "e2e-notify.service",
        "[Service]\nType=notify\nNotifyAccess=main\nWatchdogSec=2s\nTimeoutStartSec=60\n"
        f"ExecStart={MACHA_OBS} serve\n"
        "Environment=MACHA_STATE_DIR=/tmp/e2e-notify MACHA_LISTEN_ADDRESS=127.0.0.1:0\n"
        "Environment=MACHA_AUTONOMY_LEVEL=observe MACHA_LLM_ENABLED=false\n"
        f"Environment=PYTHONPATH={':'.join(p for p in sys.path if p)}\n",
    )
    lab.run("systemctl", "start", unit)  # returns once READY=1 arrived (or fails)
    assert lab.unit_state(unit) == ("active", "running")
    # three watchdog periods later it is still the same process: the pings arrive
    pid = lab.run("systemctl", "show", "-p", "MainPID", "--value", unit).stdout.strip()
    linger(6)
    assert lab.unit_state(unit) == ("active", "running")
    assert lab.run("systemctl", "show", "-p", "MainPID", "--value", unit).stdout.strip() == pid
    # its log went to journald as structured records (priority, logger, code location)
    records = [json.loads(line) for line in lab.journal(unit, output="json").splitlines()]
    serving = [r for r in records if "serving on" in str(r.get("MESSAGE", ""))]
    assert serving, lab.journal(unit)
    assert serving[0]["LOGGER"] == "macha_obs"
    assert serving[0]["PRIORITY"] == "6"
    # libsystemd adds its own CODE_* of the C call site beside ours: a field may repeat
    func = serving[0]["CODE_FUNC"]
    assert "run" in (func if isinstance(func, list) else [func])  # daemon.Sidecar.run
    assert "Logging error" not in lab.journal(unit)
    lab.run("systemctl", "stop", unit)
    assert lab.unit_state(unit)[0] in ("inactive", "failed")
    result = lab.run("systemctl", "show", "-p", "Result", "--value", unit).stdout.strip()
    assert result == "success"
