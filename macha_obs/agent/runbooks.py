"""Deterministic runbooks: known alerts and findings → proposals, without a model.

Used when the LLM is disabled, unreachable or invalid, and as the fast path
(`analysis = runbooks-first | runbooks-only`). Proposals are only proposals: the policy
still judges each one. Pure.

Two rules a careful on-call engineer keeps, which the evaluation (eval/) checks:
- a protected unit (sshd, a firewall, a VPN...) that failed is never proposed a fix the
  policy must refuse: a read-only look at its journal, which the policy queues for a
  person (it is theirs to act on);
- space is cleaned only where this host measured it short: the disks collector's finding
  says which filesystem fills and what it holds (the Nix store, the journal), and only
  that is cleaned. An alert alone (a mountpoint label, or none) gets a read-only look.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from macha_obs.agent.history import History, order_by_outcomes
from macha_obs.agent.patch_runbooks import exposure_runbook, memory_proposals
from macha_obs.models import (
    Action,
    Assessment,
    Decision,
    DecisionSource,
    DiskUsage,
    FailedUnits,
    FindingKind,
    Incident,
    InvalidUnitName,
    Investigate,
    JournalTail,
    JournalVacuum,
    ListeningSockets,
    NixGc,
    NixRollback,
    Proposal,
    ResetFailed,
    RestartUnit,
    Severity,
    StartUnit,
    TopProcesses,
    TuneJournald,
    UnitStatus,
    fix_of,
    journal_cap,
    signature_of,
    size_text,
    validate_unit_name,
)
from macha_obs.policy.scope import classify_alert
from macha_obs.protected import protection

# An alert rule's label that asks for a restart of the unit it names (a running unit
# that misbehaves: latency, a health probe). The only action an alert can ask for.
RESTART_LABEL = "macha_action"
_CRITICAL_KINDS = {
    FindingKind.UNIT_FAILED,
    FindingKind.DISK_FILLING,
    FindingKind.INODES_LOW,
    FindingKind.UNITS_FAILED_AFTER_SWITCH,
}


# systemd's word on a unit, as the orchestrator describes it: "failed/failed (load loaded,
# result exit-code, restarts 2)". A failed unit that systemd itself restarted (Restart=)
# is one systemd gave up on: its start limit, whatever result systemd 252 reports.
_GAVE_UP = re.compile(r"^failed/.*\brestarts ([1-9][0-9]*)\)")


def _start_limit_hit(texts: Iterable[str]) -> bool:
    return any("start-limit" in t or _GAVE_UP.search(t) for t in texts)


# the details of a disks finding that say what a filling filesystem holds (collect/disks.py)
HOLDS_NIX_STORE = "holds_nix_store"
HOLDS_JOURNAL = "holds_journal"
_BUSY_KINDS = {
    FindingKind.CPU_HIGH: "CPU busy",
    FindingKind.LOAD_HIGH: "load high",
    FindingKind.SWAP_HIGH: "swap in use",
    FindingKind.MEMORY_PRESSURE: "memory pressure",
}


@dataclass(frozen=True)
class Evidence:
    """One alert or finding, as a runbook reads it."""

    kind: FindingKind
    unit: str | None = None
    start_limit: bool = False
    measured: bool = False  # a collector's finding on this host, not an alert's word
    details: Mapping[str, object] = field(default_factory=dict)
    where: str = ""  # the mountpoint (a finding's subject, an alert's label)


def _space(e: Evidence) -> list[tuple[Action, str]]:
    """Clean only what the filling filesystem holds, and only when this host measured it."""
    look: tuple[Action, str] = (Investigate(diagnostic=DiskUsage()), "")
    if not e.measured:
        if not e.where:
            return [(look[0], f"{e.kind.value} alert names no filesystem: nothing to clean")]
        return [
            (
                look[0],
                f"{e.kind.value} alert on {e.where}: the clean-up waits for this host's own "
                "measure of it (the disks collector)",
            )
        ]
    found: list[tuple[Action, str]] = []
    if e.details.get(HOLDS_JOURNAL) is True and e.kind is FindingKind.DISK_FILLING:
        found.append((JournalVacuum(), f"{e.where} holds the journal: shrink archived journals"))
    if e.details.get(HOLDS_NIX_STORE) is True:
        found.append((NixGc(), f"{e.where} holds the Nix store: collect unreferenced paths"))
    if not found:
        why = f"{e.where} fills and holds nothing the sidecar can clean: what takes the space"
        found.append((look[0], why))
    return found


def journal_caps(incident: Incident, history: History) -> list[Proposal]:
    """A journal that keeps filling its file system: the vacuum already ran for this
    problem (the record says so) and it fills again. Then cap journald, as a patch a
    person applies; the vacuum alone only frees space until the next time."""
    vacuum = JournalVacuum()
    ran = sum(
        r.auto_executed + r.approved
        for r in history(signature_of(incident, vacuum))
        if r.fix == fix_of(vacuum)
    )
    found = []
    for f in incident.findings:
        used, avail = f.details.get("used_ratio"), f.details.get("avail_bytes")
        if (
            not ran
            or f.kind is not FindingKind.DISK_FILLING
            or f.details.get(HOLDS_JOURNAL) is not True
        ):
            continue
        if not isinstance(used, float | int) or not isinstance(avail, int) or not 0 < used < 1:
            continue
        cap = journal_cap(round(avail / (1 - used)))
        why = (
            f"{f.subject} holds the journal and fills again after {ran} vacuum(s): cap "
            f"journald at {size_text(cap)} (a patch)"
        )
        action = TuneJournald(system_max_use=cap)
        found.append(Proposal(action=action, reason=why, evidence=[f"finding {f.key}"[:200]]))
    return found[:1]


# What a host's own measure calls for, by kind.
_MEASURED: dict[FindingKind, Callable[[Evidence], list[tuple[Action, str]]]] = {
    FindingKind.DISK_FILLING: _space,
    FindingKind.INODES_LOW: _space,
    FindingKind.UNIT_OOM_AT_LIMIT: lambda e: memory_proposals(e.unit, e.details),
    FindingKind.SERVICE_EXPOSED: lambda e: exposure_runbook(e.kind, e.unit, e.details, e.measured),
    FindingKind.EXPOSURE_ROSE: lambda e: exposure_runbook(e.kind, e.unit, e.details, e.measured),
}


_BACKUP_KINDS = frozenset({FindingKind.BACKUP_FAILED, FindingKind.BACKUP_STALE})


def _backup(e: Evidence) -> list[tuple[Action, str]]:
    """A failed backup: its journal, and a re-run the policy queues for a person (a backup
    runs by itself only where trusted_actions names start_unit:<that unit>). A late one
    (a timer off, a host that slept, a skipped condition): a look, never a start."""
    unit = e.unit
    if unit is None or e.kind not in _BACKUP_KINDS:
        return []
    if e.kind is FindingKind.BACKUP_STALE:
        return [(Investigate(diagnostic=UnitStatus(unit=unit)), f"backup {unit} is late")]
    return [
        (Investigate(diagnostic=JournalTail(unit=unit)), f"backup {unit} failed: why"),
        (StartUnit(unit=unit), f"backup {unit} failed: run it again"),
    ]


_INTRUSION_KINDS = {
    FindingKind.AUTH_FAILURES,
    FindingKind.NEW_LISTENER,
    FindingKind.NEW_ENABLED_UNIT,
    FindingKind.NEW_SETID_FILE,
}


def _unit_or_none(name: object) -> str | None:
    try:
        return validate_unit_name(str(name)) if name else None
    except InvalidUnitName:
        return None


def _intrusion(e: Evidence) -> list[tuple[Action, str]]:
    """Intrusion signs are a person's to judge: a read-only look, never an action."""
    what = e.where or e.kind.value
    match e.kind:
        case FindingKind.AUTH_FAILURES if (e.details.get("service") or e.where) == "sshd":
            return [
                (
                    Investigate(diagnostic=JournalTail(unit="sshd.service", lines=100)),
                    "SSH authentication failures: who is knocking (for a person to judge)",
                )
            ]
        case FindingKind.AUTH_FAILURES:
            return [(Investigate(diagnostic=TopProcesses()), f"{what}: who runs what now")]
        case FindingKind.NEW_LISTENER:
            found: list[tuple[Action, str]] = [
                (Investigate(diagnostic=ListeningSockets()), f"{what}: which process listens")
            ]
            if owner := _unit_or_none(e.details.get("owner")):
                found.append((Investigate(diagnostic=UnitStatus(unit=owner)), f"{what}: its unit"))
            return found
        case FindingKind.NEW_ENABLED_UNIT if unit := _unit_or_none(e.where):
            return [(Investigate(diagnostic=UnitStatus(unit=unit)), f"{unit} newly enabled")]
    return [(Investigate(diagnostic=TopProcesses()), f"{what}: what runs now (for a person)")]


def _actions(e: Evidence) -> list[tuple[Action, str]]:
    """The runbook for one kind of problem: (action, why)."""
    kind, unit, start_limit = e.kind, e.unit, e.start_limit
    guarded = protection(unit) if unit else None
    match kind:
        case FindingKind.UNIT_FAILED | FindingKind.UNIT_FLAPPING if unit and guarded:
            # the sidecar never acts on it (invariant 3): a read-only look, for a person
            return [
                (
                    Investigate(diagnostic=JournalTail(unit=unit)),
                    f"{unit} is protected ({guarded.name}) and {kind.value}: a person must "
                    "look; the sidecar never acts on it",
                )
            ]
        case FindingKind.UNIT_FAILED if unit and start_limit:
            # systemd stopped trying on purpose: look first; the reset waits for a human
            # unless the operator opted in (policy: auto_reset_start_limit)
            return [
                (
                    Investigate(diagnostic=JournalTail(unit=unit)),
                    f"{unit} hit its start limit: why does it keep failing",
                ),
                (ResetFailed(unit=unit), f"{unit} hit its start limit: reset it, then start"),
            ]
        case FindingKind.UNIT_FAILED if unit:
            return [(RestartUnit(unit=unit), f"{unit} failed: restart it")]
        case FindingKind.UNIT_FLAPPING if unit:
            # restarting a unit that keeps crashing only feeds the loop: look first
            return [(Investigate(diagnostic=JournalTail(unit=unit)), f"{unit} is flapping")]
        case kind if kind in _MEASURED:
            return _MEASURED[kind](e)
        case kind if kind in _BUSY_KINDS:
            return [(Investigate(diagnostic=TopProcesses()), f"{_BUSY_KINDS[kind]}: who uses it")]
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
        case FindingKind.UNITS_FAILED_AFTER_SWITCH:
            # the switch is the suspect: going back is high risk, so the policy queues it
            # for a human at every autonomy level; looking is free
            return [
                (Investigate(diagnostic=FailedUnits()), "units failed right after a switch"),
                (NixRollback(), "units failed right after a generation switch: roll back"),
            ]
        case FindingKind.UNEXPECTED_REBOOT:
            return [(Investigate(diagnostic=FailedUnits()), "unexpected reboot: what failed")]
    if unit:
        return [(Investigate(diagnostic=UnitStatus(unit=unit)), f"{kind.value} on {unit}")]
    # a unit problem whose alert names no unit: the host-wide view is the place to start
    return [(Investigate(diagnostic=FailedUnits()), f"{kind.value} without a unit name")]


def _backup_units(incident: Incident) -> set[str]:
    """The units the incident's evidence says are backups."""
    units = {f.unit for f in incident.findings if f.kind in _BACKUP_KINDS and f.unit}
    alerted = (a for a in incident.alerts if a.firing and a.unit)
    units.update(a.unit for a in alerted if classify_alert(a) in _BACKUP_KINDS and a.unit)
    return units


def runbook_proposals(
    incident: Incident, unit_status: Mapping[str, str] | None = None
) -> tuple[list[Proposal], list[FindingKind]]:
    """Proposals for the firing alerts and the findings, deduplicated, at most five.

    `unit_status` is systemd's word on each unit (e.g. its result `start-limit-hit`)."""
    status = unit_status or {}
    seen: dict[str, Proposal] = {}
    kinds: list[FindingKind] = []
    backups = _backup_units(incident)

    def add(e: Evidence, evidence: str) -> None:
        kinds.append(e.kind)
        found = _intrusion(e) if e.kind in _INTRUSION_KINDS else (_backup(e) or _actions(e))
        for action, why in found:
            if isinstance(action, RestartUnit) and action.unit in backups:
                continue  # a failed backup is re-run (start_unit, for a person), not restarted
            key = action.model_dump_json()
            if key not in seen:
                seen[key] = Proposal(action=action, reason=why, evidence=[evidence[:200]])

    for alert in incident.alerts:
        if alert.firing and alert.unit and alert.labels.get(RESTART_LABEL) == "restart_unit":
            # prometheus-am-executor's case: the operator's rule asks for a restart of a
            # running unit that misbehaves; the policy confirms it by the alert firing
            action = RestartUnit(unit=alert.unit)
            why = f"the rule of {alert.alertname} asks for a restart ({RESTART_LABEL})"
            seen.setdefault(
                action.model_dump_json(),
                Proposal(action=action, reason=why, evidence=[f"alert {alert.alertname}"]),
            )
        kind = classify_alert(alert) if alert.firing else None
        if kind is not None:
            texts = [*alert.labels.values(), *alert.annotations.values()]
            texts.append(status.get(alert.unit or "", ""))
            e = Evidence(
                kind, alert.unit, _start_limit_hit(texts), where=alert.labels.get("mountpoint", "")
            )
            add(e, f"alert {alert.alertname}")
    for finding in incident.findings:
        texts = [finding.summary, *(str(v) for v in finding.details.values())]
        texts.append(status.get(finding.unit or "", ""))
        e = Evidence(
            finding.kind,
            finding.unit,
            _start_limit_hit(texts),
            measured=True,
            details=finding.details,
            where=finding.subject,
        )
        add(e, f"finding {finding.key}")
    return list(seen.values())[:5], kinds


def runbook_decision(
    incident: Incident,
    *,
    error: str = "",
    raw_output_hash: str = "",
    unit_status: Mapping[str, str] | None = None,
    history: History | None = None,
) -> Decision:
    """The runbooks' decision. With `error` (the model failed) the assessment stays
    "unknown" whatever the runbooks propose (DESIGN.md invariant 8). With `history`, the
    same proposals in the order of what has worked on this host (agent/history.py), and
    a journald cap when the journal fills again after a vacuum (journal_caps)."""
    proposals, kinds = runbook_proposals(incident, unit_status)
    if history is not None:
        proposals = (proposals + journal_caps(incident, history))[:5]
        proposals = order_by_outcomes(incident, proposals, history)
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
