"""The sidecar dashboard and the alerts for humans, on the real daemon in a real stack.

`macha-obs serve` (auto-safe, breaker at the first failed fix, its LLM on a port where
nothing listens) watches the real systemd sandbox; Debian's Prometheus scrapes it with
the shipped rules (`for:` at 0s) and sends to a real Alertmanager that delivers to the
daemon's webhook. A unit whose fix cannot hold makes the self-metrics move: an LLM
request fails, the runbook's restart fails verification, is escalated to a human and
opens the breaker. Then every panel of macha-sidecar.json returns data, the four alerts
fire in Prometheus and reach Alertmanager, and a human's way out (fix the unit, reject
what is queued, `macha-obs autonomy reset`) resolves the approvals and breaker alerts.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests

from macha_obs.models import ApprovalStatus
from tests.harness.daemon_support import HOST, MACHA_OBS, Daemon
from tests.harness.labsd import LabSystemd
from tests.harness.stack import Alertmanager, Prometheus, poll
from tests.harness.systemd_fixtures import UnitFactory
from tests.test_dashboards import (
    SIDECAR_DASHBOARD,
    assert_every_query_returns_data,
    load,
)
from tests.test_stack_eyes import alertmanager_config, fast_rules, prometheus_config

pytestmark = [pytest.mark.stack, pytest.mark.systemd]

HUMAN_ALERTS = (
    "MachaApprovalsPending",
    "MachaRemediationFailed",
    "MachaCircuitOpen",
    "MachaLLMUnavailable",
)


@pytest.fixture
def dead_llm_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening, for the test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture
def daemon(systemd_container: LabSystemd, tmp_path: Path, dead_llm_port: int) -> Iterator[Daemon]:
    daemon = Daemon(
        systemd_container,
        tmp_path / "state",
        autonomy_level="auto-safe",
        analysis="llm-first",
        llm_enabled="true",
        ollama_url=f"http://127.0.0.1:{dead_llm_port}",
        breaker_threshold=1,
    ).start()
    yield daemon
    daemon.stop()


def firing(prometheus: Prometheus, name: str) -> list[dict[str, Any]]:
    return [
        a
        for a in prometheus.alerts()
        if a["labels"]["alertname"] == name and a["state"] == "firing"
    ]


def fires(prometheus: Prometheus, name: str) -> bool:
    return bool(firing(prometheus, name))


def resolved(prometheus: Prometheus, name: str) -> bool:
    return not firing(prometheus, name)


def escalated(daemon: Daemon) -> bool:
    """A restart failed verification, waits for a human, and opened the breaker."""
    failed = daemon.metric("macha_actions_total", kind="restart_unit", result="failed")
    pending = daemon.metric("macha_approvals_pending")
    return bool(failed and pending and daemon.metric("macha_circuit_breaker_open"))


def in_alertmanager(alertmanager: Alertmanager, name: str) -> list[dict[str, Any]]:
    reply = requests.get(
        f"{alertmanager.url}/api/v2/alerts", params={"filter": f'alertname="{name}"'}, timeout=5
    )
    reply.raise_for_status()
    alerts: list[dict[str, Any]] = reply.json()
    return alerts


def routed(alertmanager: Alertmanager, name: str) -> bool:
    return bool(in_alertmanager(alertmanager, name))


def test_sidecar_dashboard_and_alerts_on_the_real_daemon(
    systemd_container: LabSystemd,
    unit_factory: UnitFactory,
    daemon: Daemon,
    prometheus_factory: Callable[[str, list[Path]], Prometheus],
    alertmanager_factory: Callable[[str], Alertmanager],
) -> None:
    lab = systemd_container
    alertmanager = alertmanager_factory(alertmanager_config(daemon.port, daemon.token_file))
    rules = daemon.state_dir.parent / "rules"
    rules.mkdir()
    prometheus = prometheus_factory(
        prometheus_config(daemon.port, alertmanager.port), fast_rules(rules)
    )
    prometheus.wait_targets_up(1)
    prometheus.wait_alertmanagers()

    # Only now, with every counter already scraped at its start value, does anything
    # happen: increase() sees the events. Restarting /bin/false cannot hold.
    broken = unit_factory("sidecar-broken.service", "[Service]\nExecStart=/bin/false\n")
    lab.run("systemctl", "start", broken, check=False)
    assert poll(partial(escalated, daemon), timeout=60), daemon.log_tail()
    # the model is asked on the analysis lane, after the runbooks' restart: wait for it
    unavailable = partial(daemon.metric, "macha_llm_requests_total", outcome="unavailable")
    assert poll(lambda: bool(unavailable()), timeout=30), daemon.log_tail()
    assert daemon.metric("macha_autonomy_level", level="suggest") == 1  # capped by the breaker

    # every panel's query, and the host variable, return data for this host
    assert_every_query_returns_data(prometheus, load(SIDECAR_DASHBOARD), HOST)

    # the alerts for humans fire, name the host, and reach Alertmanager's routes
    for name in HUMAN_ALERTS:
        assert poll(partial(fires, prometheus, name), timeout=60), prometheus.alerts()
        [alert] = firing(prometheus, name)
        assert alert["labels"]["instance"] == HOST
        assert alert["labels"]["severity"] == "warning"
        assert HOST in alert["annotations"]["summary"]
        assert poll(partial(routed, alertmanager, name), timeout=60), name
        [received] = in_alertmanager(alertmanager, name)
        assert [r["name"] for r in received["receivers"]] == ["macha"]
    pending = firing(prometheus, "MachaApprovalsPending")[0]
    assert "macha-approve list" in pending["annotations"]["description"]

    # a human's way out clears them: fix the cause (which also cancels the approvals of
    # the incidents it resolves), reject what is still queued, close the breaker (which
    # nothing but `autonomy reset` does)
    # the human fixes the unit itself, so a retry the loop may still have in hand succeeds
    # (a failed one would reopen this breaker, whose threshold here is one failure)
    lab.write_unit(
        f"{broken}.d/fixed.conf", "[Service]\nExecStart=\nExecStart=/bin/sleep infinity\n"
    )
    lab.run("systemctl", "restart", broken)

    def queue_drained() -> bool:
        # as a human would: reject what waits, until the loop has nothing more to queue
        # (an incident analysed just before the fix may still queue one)
        pending = [a for a in daemon.approvals() if a.status is ApprovalStatus.PENDING]
        for approval in pending:
            daemon.approve("reject", str(approval.id))  # may have been cancelled meanwhile
        return not pending

    assert poll(queue_drained, timeout=60, interval=1.0), daemon.approvals()
    reset = subprocess.run(
        [MACHA_OBS, "autonomy", "reset"],
        env=daemon.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert reset.returncode == 0, reset.stdout + reset.stderr
    for name in ("MachaApprovalsPending", "MachaCircuitOpen"):
        assert poll(partial(resolved, prometheus, name), timeout=60), daemon.log_tail()
    assert daemon.metric("macha_autonomy_level", level="auto-safe") == 1
