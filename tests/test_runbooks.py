"""Runbooks: known alerts and findings map to fixed proposals; the rest is "unknown"."""

from __future__ import annotations

import pytest

from macha_obs.agent.runbooks import runbook_decision, runbook_proposals
from macha_obs.models import (
    Alert,
    Assessment,
    DecisionSource,
    DiskUsage,
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


def disk_finding(
    mountpoint: str, holds: dict[str, bool], kind: FindingKind = FindingKind.DISK_FILLING
) -> Finding:
    details: dict[str, str | float | int | bool] = {"used_ratio": 0.96}
    details.update(holds)
    return Finding(kind=kind, subject=mountpoint, summary=f"{mountpoint} full", details=details)


@pytest.mark.parametrize(
    ("holds", "expected"),
    [
        ({"holds_journal": True}, [JournalVacuum()]),  # /var/log on its own disk: never nix gc
        ({"holds_nix_store": True}, [NixGc()]),
        ({"holds_journal": True, "holds_nix_store": True}, [JournalVacuum(), NixGc()]),
        ({}, [Investigate(diagnostic=DiskUsage())]),  # nothing the sidecar knows to clean
    ],
)
def test_a_filling_disk_is_cleaned_of_what_it_holds_only(
    holds: dict[str, bool], expected: list[object]
) -> None:
    d = runbook_decision(inc(findings=[disk_finding("/data", holds)]))
    assert [p.action for p in d.proposals] == expected


def test_inodes_low_collects_garbage_only_on_the_store_filesystem() -> None:
    low = FindingKind.INODES_LOW
    on_store = runbook_decision(
        inc(findings=[disk_finding("/nix", {"holds_nix_store": True}, low)])
    )
    assert [p.action for p in on_store.proposals] == [NixGc()]
    elsewhere = runbook_decision(inc(findings=[disk_finding("/srv", {"holds_journal": True}, low)]))
    assert [p.action for p in elsewhere.proposals] == [Investigate(diagnostic=DiskUsage())]


@pytest.mark.parametrize("labels", [{"mountpoint": "/"}, {"mountpoint": "/var/log"}, {}])
def test_a_space_alert_alone_cleans_nothing(labels: dict[str, str]) -> None:
    """Issue 20: an alert (with a mountpoint label, or none) is not this host's measure of
    a filesystem filling: a read-only look, never journal_vacuum or nix_gc."""
    for name in ("DiskFilling", "NodeFilesystemAlmostOutOfSpace", "InodesLow"):
        d = runbook_decision(inc(alert(name, **labels)))
        assert [p.action for p in d.proposals] == [Investigate(diagnostic=DiskUsage())]


@pytest.mark.parametrize(
    "unit", ["sshd.service", "nftables.service", "wg-quick@wg0.service", "openvpn-office.service"]
)
def test_a_protected_unit_that_failed_gets_a_look_never_a_fix(unit: str) -> None:
    failed = Finding(kind=FindingKind.UNIT_FAILED, subject=unit, summary="failed", unit=unit)
    status = {unit: "failed/failed (load loaded, result start-limit-hit, restarts 5)"}
    for incident in (inc(findings=[failed]), inc(alert("UnitFailed", unit=unit))):
        proposals, _ = runbook_proposals(incident, status)
        assert [p.action for p in proposals] == [Investigate(diagnostic=JournalTail(unit=unit))]
        assert "a person must look" in proposals[0].reason


@pytest.mark.parametrize(
    "kind", [FindingKind.CPU_HIGH, FindingKind.LOAD_HIGH, FindingKind.SWAP_HIGH]
)
def test_a_busy_host_is_looked_at_not_acted_on(kind: FindingKind) -> None:
    d = runbook_decision(inc(findings=[Finding(kind=kind, subject="cpu", summary="busy")]))
    assert [p.action for p in d.proposals] == [Investigate(diagnostic=TopProcesses())]
    assert d.assessment is Assessment.DEGRADED


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


def test_a_unit_systemd_gave_up_restarting_is_looked_at_before_a_reset() -> None:
    """systemd 252 reports a start limit as result exit-code: a failed unit that systemd
    restarted by itself is one it gave up on, not a crash a restart fixes."""
    a = alert("UnitFailed", unit="loop.service")
    gave_up = {"loop.service": "failed/failed (load loaded, result exit-code, restarts 2)"}
    proposals = [p.action for p in runbook_proposals(inc(a), gave_up)[0]]
    assert proposals == [
        Investigate(diagnostic=JournalTail(unit="loop.service")),
        ResetFailed(unit="loop.service"),
    ]
    crashed = {"loop.service": "failed/failed (load loaded, result signal, restarts 0)"}
    assert [p.action for p in runbook_proposals(inc(a), crashed)[0]] == [
        RestartUnit(unit="loop.service")
    ]
