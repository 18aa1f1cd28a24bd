"""Deterministic runbooks: known alerts and findings → proposals, without a model.

Used when the LLM is disabled, unreachable or invalid, and as the fast path
(`analysis = runbooks-first | runbooks-only`). Proposals are only proposals: the policy
still judges each one. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from macha_obs.models import (
    Action,
    Alert,
    Assessment,
    Decision,
    DecisionSource,
    FailedUnits,
    FindingKind,
    Incident,
    Investigate,
    JournalTail,
    JournalVacuum,
    ListeningSockets,
    NixGc,
    Proposal,
    ResetFailed,
    RestartUnit,
    Severity,
    TopProcesses,
    UnitStatus,
)

# Alert names → the finding kind they report. Order matters: the first match wins
# ("InodesFilling" is about inodes, not disk space). A `macha_finding` label overrides.
_ALERT_PATTERNS: tuple[tuple[FindingKind, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern, re.I))
    for kind, pattern in (
        (FindingKind.INODES_LOW, r"inode|out.?of.?files"),
        (FindingKind.UNIT_FLAPPING, r"flap|restart.?loop|crash.?loop|too.?many.?restarts"),
        (FindingKind.UNIT_FAILED, r"unit.?fail|fail.*unit|service.?(failed|down)|systemd.*fail"),
        (FindingKind.DISK_FILLING, r"disk|filesystem|space|storage"),
        (FindingKind.MEMORY_PRESSURE, r"memory|oom|swap"),
        (FindingKind.JOURNAL_ERROR_BURST, r"journal|log.?errors?|error.?burst"),
        (FindingKind.DNS_FAILING, r"dns|resolv"),
        (FindingKind.TARGET_UNREACHABLE, r"unreachable|probe.?fail|target.?down|endpoint.?down"),
        (FindingKind.UNEXPECTED_REBOOT, r"reboot"),
    )
)
_CRITICAL_KINDS = {FindingKind.UNIT_FAILED, FindingKind.DISK_FILLING, FindingKind.INODES_LOW}


def classify_alert(alert: Alert) -> FindingKind | None:
    explicit = alert.labels.get("macha_finding", "")
    if explicit in FindingKind._value2member_map_:
        return FindingKind(explicit)
    for kind, pattern in _ALERT_PATTERNS:
        if pattern.search(alert.alertname):
            return kind
    return None


def _start_limit_hit(texts: Iterable[str]) -> bool:
    return any("start-limit" in t for t in texts)


def _actions(kind: FindingKind, unit: str | None, start_limit: bool) -> list[tuple[Action, str]]:
    """The runbook for one kind of problem: (action, why)."""
    match kind:
        case FindingKind.UNIT_FAILED if unit and start_limit:
            return [(ResetFailed(unit=unit), f"{unit} hit its start limit: reset it, then start")]
        case FindingKind.UNIT_FAILED if unit:
            return [(RestartUnit(unit=unit), f"{unit} failed: restart it")]
        case FindingKind.UNIT_FLAPPING if unit:
            # restarting a unit that keeps crashing only feeds the loop: look first
            return [(Investigate(diagnostic=JournalTail(unit=unit)), f"{unit} is flapping")]
        case FindingKind.DISK_FILLING:
            return [
                (JournalVacuum(), "disk filling: shrink archived journals"),
                (NixGc(), "disk filling: collect unreferenced store paths"),
            ]
        case FindingKind.INODES_LOW:
            return [(NixGc(), "inodes low: the nix store holds most small files")]
        case FindingKind.MEMORY_PRESSURE:
            return [(Investigate(diagnostic=TopProcesses()), "memory pressure: who uses it")]
        case FindingKind.JOURNAL_ERROR_BURST if unit:
            return [(Investigate(diagnostic=JournalTail(unit=unit)), f"error burst in {unit}")]
        case FindingKind.DNS_FAILING:
            return [
                (
                    Investigate(diagnostic=UnitStatus(unit="systemd-resolved.service")),
                    "DNS failing: is the resolver running",
                )
            ]
        case FindingKind.TARGET_UNREACHABLE:
            return [(Investigate(diagnostic=ListeningSockets()), "target unreachable: sockets")]
        case FindingKind.UNEXPECTED_REBOOT:
            return [(Investigate(diagnostic=FailedUnits()), "unexpected reboot: what failed")]
    if unit:
        return [(Investigate(diagnostic=UnitStatus(unit=unit)), f"{kind.value} on {unit}")]
    # a unit problem whose alert names no unit: the host-wide view is the place to start
    return [(Investigate(diagnostic=FailedUnits()), f"{kind.value} without a unit name")]


def runbook_proposals(incident: Incident) -> tuple[list[Proposal], list[FindingKind]]:
    """Proposals for the firing alerts and the findings, deduplicated, at most five."""
    seen: dict[str, Proposal] = {}
    kinds: list[FindingKind] = []

    def add(kind: FindingKind, unit: str | None, evidence: str, start_limit: bool) -> None:
        kinds.append(kind)
        for action, why in _actions(kind, unit, start_limit):
            key = action.model_dump_json()
            if key not in seen:
                seen[key] = Proposal(action=action, reason=why, evidence=[evidence[:200]])

    for alert in incident.alerts:
        kind = classify_alert(alert) if alert.firing else None
        if kind is not None:
            texts = [*alert.labels.values(), *alert.annotations.values()]
            add(kind, alert.unit, f"alert {alert.alertname}", _start_limit_hit(texts))
    for finding in incident.findings:
        texts = [finding.summary, *(str(v) for v in finding.details.values())]
        add(finding.kind, finding.unit, f"finding {finding.key}", _start_limit_hit(texts))
    return list(seen.values())[:5], kinds


def runbook_decision(incident: Incident, *, error: str = "", raw_output_hash: str = "") -> Decision:
    """The runbooks' decision. With `error` (the model failed) the assessment stays
    "unknown" whatever the runbooks propose (DESIGN.md invariant 8)."""
    proposals, kinds = runbook_proposals(incident)
    if error or not kinds:
        assessment = Assessment.UNKNOWN
    elif _CRITICAL_KINDS & set(kinds):
        assessment = Assessment.FAILING
    else:
        assessment = Assessment.DEGRADED
    names = sorted({k.value for k in kinds})
    summary = f"runbooks: {', '.join(names)}" if names else "no runbook matches this incident"
    return Decision(
        incident_id=incident.id,
        assessment=assessment,
        summary=summary[:500],
        severity=Severity.CRITICAL if assessment is Assessment.FAILING else Severity.WARNING,
        confidence=0.0 if assessment is Assessment.UNKNOWN else 0.6,
        proposals=proposals,
        source=DecisionSource.RUNBOOKS,
        backend="runbooks",
        error=error[:500],
        raw_output_hash=raw_output_hash,
    )
