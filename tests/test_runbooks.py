"""Runbooks: known alerts and findings map to fixed proposals; the rest is "unknown"."""

from __future__ import annotations

import pytest

from macha_obs.agent.runbooks import runbook_decision, runbook_proposals
from macha_obs.models import (
    Alert,
    Assessment,
    DecisionSource,
    Finding,
    FindingKind,
    Incident,
    Investigate,
    JournalTail,
    JournalVacuum,
    NixGc,
    ResetFailed,
    RestartUnit,
    TopProcesses,
)
from macha_obs.policy.scope import classify_alert
from tests.harness.receiver_support import alert, resolved


def inc(*alerts: dict, findings: list[Finding] | None = None) -> Incident:
    return Incident(
        id="i",
        source="alert",
        alerts=[Alert.model_validate(a) for a in alerts],
        findings=findings or [],
    )


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("SystemdUnitFailed", FindingKind.UNIT_FAILED),
        ("MachaUnitFailed", FindingKind.UNIT_FAILED),
        ("ServiceDown", FindingKind.UNIT_FAILED),
        ("UnitFlapping", FindingKind.UNIT_FLAPPING),
        ("NodeFilesystemAlmostOutOfSpace", FindingKind.DISK_FILLING),
        ("NodeFilesystemAlmostOutOfFiles", FindingKind.INODES_LOW),
        ("InodesLow", FindingKind.INODES_LOW),
        ("HostOomKillDetected", FindingKind.MEMORY_PRESSURE),
        ("DnsResolutionFailing", FindingKind.DNS_FAILING),
        ("Watchdog", None),
    ],
)
def test_classify_alert(name: str, kind: FindingKind | None) -> None:
    assert classify_alert(Alert.model_validate(alert(name))) == kind


def test_explicit_label_wins() -> None:
    a = Alert.model_validate(alert("Whatever", macha_finding="memory_pressure"))
    assert classify_alert(a) is FindingKind.MEMORY_PRESSURE


def test_unit_failed_restarts_the_unit() -> None:
    d = runbook_decision(inc(alert("UnitFailed", unit="nginx")))
    assert [p.action for p in d.proposals] == [RestartUnit(unit="nginx.service")]
    assert d.assessment is Assessment.FAILING
    assert d.source is DecisionSource.RUNBOOKS


def test_start_limit_hit_investigates_and_proposes_the_reset() -> None:
    """systemd gave up on purpose: look first; the reset is proposed (and the policy
    queues it for a human unless auto_reset_start_limit is set)."""
    a = alert("UnitFailed", unit="nginx.service", result="start-limit-hit")
    assert [p.action for p in runbook_proposals(inc(a))[0]] == [
        Investigate(diagnostic=JournalTail(unit="nginx.service")),
        ResetFailed(unit="nginx.service"),
    ]


def test_start_limit_hit_seen_in_systemds_state() -> None:
    """The alert may not say it; systemd's result on the unit does."""
    a = alert("UnitFailed", unit="nginx.service")
    status = {"nginx.service": "failed/failed (load loaded, result start-limit-hit, restarts 5)"}
    assert ResetFailed(unit="nginx.service") in [
        p.action for p in runbook_proposals(inc(a), status)[0]
    ]
    assert RestartUnit(unit="nginx.service") in [p.action for p in runbook_proposals(inc(a))[0]]


def test_disk_filling_vacuums_and_collects() -> None:
    d = runbook_decision(inc(alert("DiskFilling", mountpoint="/")))
    assert [p.action for p in d.proposals] == [JournalVacuum(), NixGc()]


def test_flapping_unit_is_investigated_not_restarted() -> None:
    f = Finding(
        kind=FindingKind.UNIT_FLAPPING, subject="a.service", summary="5 restarts", unit="a.service"
    )
    d = runbook_decision(inc(findings=[f]))
    assert [p.action for p in d.proposals] == [
        Investigate(diagnostic=JournalTail(unit="a.service"))
    ]
    assert d.assessment is Assessment.DEGRADED


def test_memory_pressure_looks_at_processes() -> None:
    f = Finding(kind=FindingKind.MEMORY_PRESSURE, subject="memory", summary="95%")
    assert runbook_proposals(inc(findings=[f]))[0][0].action == Investigate(
        diagnostic=TopProcesses()
    )


def test_resolved_alerts_propose_nothing() -> None:
    d = runbook_decision(inc(resolved(alert("UnitFailed", unit="a.service"))))
    assert d.proposals == []
    assert d.assessment is Assessment.UNKNOWN


def test_unknown_alert_is_unknown() -> None:
    d = runbook_decision(inc(alert("Watchdog")))
    assert d.assessment is Assessment.UNKNOWN
    assert d.proposals == []
    assert "no runbook" in d.summary


def test_model_failure_keeps_unknown_but_still_proposes() -> None:
    d = runbook_decision(inc(alert("UnitFailed", unit="a.service")), error="LlmTimeout: slow")
    assert d.assessment is Assessment.UNKNOWN  # never healthy, never a guess (invariant 8)
    assert [p.action for p in d.proposals] == [RestartUnit(unit="a.service")]
    assert d.error == "LlmTimeout: slow"


def test_duplicates_merge_and_at_most_five() -> None:
    alerts = [alert("UnitFailed", unit=f"u{i}.service") for i in range(8)]
    alerts.append(alert("UnitFailed", unit="u0.service", instance="other-label"))
    proposals, _ = runbook_proposals(inc(*alerts))
    assert len(proposals) == 5
    assert len({p.action for p in proposals}) == 5
