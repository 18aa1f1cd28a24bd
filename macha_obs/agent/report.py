"""`macha-obs analyze FILE`: one webhook payload through analysis and the policy, executing
nothing, rendered for a person or as JSON for tools."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from macha_obs.agent.analyze import Analyzer
from macha_obs.agent.schema import first_error
from macha_obs.errors import UsageError
from macha_obs.models import (
    Action,
    AlertGroup,
    Decision,
    Incident,
    Proposal,
    Verdict,
    canonical_unit_name,
    describe_action,
)
from macha_obs.terminal import inert

# The policy's verdict on one proposed action, given the incident whose evidence scopes it.
Judge = Callable[[Action, Incident], Verdict]


class PayloadError(UsageError):
    """The file is not an Alertmanager v4 webhook payload."""


@dataclass(frozen=True)
class Judged:
    proposal: Proposal
    verdict: Verdict


@dataclass(frozen=True)
class AnalysisReport:
    incident: Incident
    decision: Decision | None
    judged: list[Judged] = field(default_factory=list)
    note: str = ""


def parse_payload(text: str) -> AlertGroup:
    try:
        return AlertGroup.model_validate_json(text)
    except ValidationError as exc:
        raise PayloadError(f"not an Alertmanager v4 payload: {first_error(exc)}") from exc


def incident_from_group(group: AlertGroup) -> Incident:
    digest = hashlib.sha256(group.group_key.encode()).hexdigest()[:12]
    return Incident(
        id=f"am-{digest}", source="alert", group_key=group.group_key, alerts=group.alerts
    )


def parse_journal_option(value: str) -> tuple[str, Path]:
    """`UNIT=PATH` of `--journal`; the unit is canonicalised like systemctl does."""
    unit, sep, path = value.partition("=")
    if not sep or not unit or not path:
        raise ValueError(f"{value!r}: expected UNIT=PATH")
    return canonical_unit_name(unit.strip()), Path(path)


def analyze_payload(
    text: str,
    *,
    analyzer: Analyzer,
    judge: Judge,
    journals: Mapping[str, Sequence[str]] | None = None,
    journal_source: Callable[[str], Sequence[str]] | None = None,
    status_source: Callable[[str], str] | None = None,
) -> AnalysisReport:
    """Analyse the payload's incident and judge each proposal; run nothing."""
    incident = incident_from_group(parse_payload(text))
    if not any(a.firing for a in incident.alerts):
        return AnalysisReport(incident, None, note="no alert is firing: nothing to analyse")
    lines: dict[str, Sequence[str]] = dict(journals or {})
    for unit in incident.units:
        if unit not in lines and journal_source is not None:
            lines[unit] = journal_source(unit)
    status = {u: status_source(u) for u in incident.units} if status_source else {}
    decision = analyzer.analyze(incident, unit_status=status, journals=lines)
    judged = [Judged(p, judge(p.action, incident)) for p in decision.proposals]
    return AnalysisReport(incident, decision, judged)


def render_text(report: AnalysisReport) -> str:
    """For a person: every field from the payload or the model on its own line, inert."""
    inc = report.incident
    firing = sum(1 for a in inc.alerts if a.firing)
    out = [f"incident {inert(inc.id)}: {len(inc.alerts)} alert(s), {firing} firing"]
    if report.decision is None:
        return "\n".join([*out, inert(report.note)])
    d = report.decision
    out += [
        f"assessment: {d.assessment.value} (severity {d.severity.value}, "
        f"confidence {d.confidence:.2f}, by {inert(d.backend or d.source.value)}"
        + (f" {inert(d.model)}" if d.model else "")
        + ")",
        f"summary: {inert(d.summary)}",
    ]
    if d.root_cause:
        out.append(f"root cause: {inert(d.root_cause)}")
    if d.error:
        out.append(f"analysis error: {inert(d.error)}")
    if not report.judged:
        out.append("no proposals")
    for n, j in enumerate(report.judged, 1):
        v = j.verdict
        out.append(
            f"{n}. {inert(describe_action(j.proposal.action))} → {v.outcome.value} ({v.risk.value})"
        )
        out.append(f"   why: {inert(j.proposal.reason)}")
        out.append(f"   policy: {inert(v.reason)}")
    out.append("nothing was executed")
    return "\n".join(out)


def render_json(report: AnalysisReport) -> str:
    data: dict[str, Any] = {
        "incident": {"id": report.incident.id, "group_key": report.incident.group_key},
        "decision": report.decision.model_dump(mode="json") if report.decision else None,
        "proposals": [
            {
                "action": j.proposal.action.model_dump(mode="json"),
                "reason": j.proposal.reason,
                "verdict": j.verdict.model_dump(mode="json"),
            }
            for j in report.judged
        ],
        "note": report.note,
        "executed": [],
    }
    # ensure_ascii (the default, said out loud): control and bidi characters from the
    # payload or the model stay \u escapes, so even a `cat` of the output is inert
    return json.dumps(data, indent=2, ensure_ascii=True)
