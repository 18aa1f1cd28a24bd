"""The loop's own judgement, with real components: the store, incidents, runbook analysis,
the policy and the executor against a real systemd."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from macha_obs.agent.analyze import Analyzer
from macha_obs.cli import build_executor
from macha_obs.config import AnalysisMode, Config
from macha_obs.intake.incidents import IncidentStore
from macha_obs.models import (
    Alert,
    AlertGroup,
    Outcome,
)
from macha_obs.orchestrator import Orchestrator
from macha_obs.remediate.remediator import Remediator
from macha_obs.store import Store
from tests.harness.labsd import LabSystemd

UnitFactory = Callable[[str, str], str]


def alert(unit: str, name: str = "MachaUnitFailed") -> Alert:
    return Alert.model_validate(
        {
            "status": "firing",
            "labels": {"alertname": name, "unit": unit, "instance": "testhost"},
            "startsAt": "2026-11-25T10:00:00Z",
            "fingerprint": f"fp-{unit}-{name}",
        }
    )


@pytest.fixture
def loop(
    systemd_container: LabSystemd, make_config: Callable[..., Config]
) -> Iterator[Orchestrator]:
    cfg = make_config(
        autonomy_level="auto-safe",
        systemd_bus_address=systemd_container.bus_address,
        verify_settle=0.3,
    )
    store = Store(cfg.state_dir)
    executor = build_executor(cfg)
    analyzer = Analyzer(mode=AnalysisMode.RUNBOOKS_ONLY, client=None, hostname="testhost")
    yield Orchestrator(
        cfg,
        store,
        IncidentStore(store),
        analyzer,
        Remediator(cfg, store, executor),
        snapshot=lambda: None,
    )
    executor.close()
    store.close()


def deliver(loop: Orchestrator, unit: str) -> None:
    group = AlertGroup.model_validate(
        {
            "version": "4",
            "groupKey": f"{{}}:{{unit={unit!r}}}",
            "status": "firing",
            "alerts": [alert(unit).model_dump(mode="json", by_alias=True)],
        }
    )
    loop.incidents.ingest(group, group.model_dump_json(by_alias=True), group.alerts)


@pytest.mark.systemd
def test_late_alert_about_a_unit_that_is_active_again_restarts_nothing(
    systemd_container: LabSystemd, unit_factory: UnitFactory, loop: Orchestrator
) -> None:
    unit = unit_factory("orc-late.service", "[Service]\nExecStart=/bin/sleep infinity\n")
    systemd_container.run("systemctl", "start", unit)
    pid = systemd_container.run("systemctl", "show", "-p", "MainPID", "--value", unit).stdout
    deliver(loop, unit)  # fired while it was failed; fixed since (by the event path)

    report = loop.run_cycle("alert")

    [(_, _, handled)] = report.handled
    assert handled.verdict.outcome is Outcome.REFUSE
    assert loop.record.store.ledger.list_actions() == []
    same = systemd_container.run("systemctl", "show", "-p", "MainPID", "--value", unit).stdout
    assert same == pid  # not restarted
    lines = [json.loads(x) for x in loop.record.store.audit.decisions_log.read_text().splitlines()]
    assert [s["reason"] for s in lines if s.get("event") == "verdict"] == [
        f"the problem is no longer there: {unit} is active and no alert about it is firing"
    ]


@pytest.mark.systemd
def test_alert_about_a_failed_unit_restarts_it(
    systemd_container: LabSystemd, unit_factory: UnitFactory, loop: Orchestrator
) -> None:
    unit = unit_factory(
        "orc-failed.service",
        "[Service]\nExecStartPre=/bin/sh -c 'test -e /run/orc.ok || { touch /run/orc.ok; "
        "exit 3; }'\nExecStart=/bin/sleep infinity\n",
    )
    systemd_container.run("rm", "-f", "/run/orc.ok", check=False)
    systemd_container.run("systemctl", "start", unit, check=False)
    systemd_container.wait_for_state(unit, "failed")
    deliver(loop, unit)

    report = loop.run_cycle("alert")

    [(_, proposal, handled)] = report.handled
    assert proposal.action.kind == "restart_unit"
    assert handled.result is not None
    assert handled.result.verified
    assert loop.remediator.verifier.watching  # alert-driven: its alert must resolve next
