"""The facts `ask` and `discuss` hand the model: the read-only tools' answers, each with
the citation a person can follow (incident ids, unit names, journal positions)."""

from __future__ import annotations

import contextlib
import re
from typing import Any

from macha_obs.agent.conversation import Fact
from macha_obs.errors import InvalidInput
from macha_obs.mcp.facts import Facts

MAX_INCIDENTS = 3
JOURNAL_LINES = 20
_UNIT = re.compile(r"[A-Za-z0-9@:_.\\-]+\.(?:service|socket|timer|mount|path|swap|target)\b")
_INCIDENT = re.compile(r"\b[a-z]{1,4}-[0-9a-f]{6,}-\d+\b")


def _journal(facts: Facts, unit: str) -> Fact | None:
    try:
        found: dict[str, Any] = facts.unit_journal(unit, JOURNAL_LINES)
    except InvalidInput:
        return None
    lines = found["journal"]["lines"]
    newest = lines[-1].split(" ", 1)[0] if lines else "empty"
    return Fact(f"journal {unit}@{newest}", found)


def for_question(facts: Facts, question: str) -> list[Fact]:
    """Status, findings, the incidents (those the question names first), the queue,
    and the state and journal of the units the question names that the record holds."""
    gathered = [Fact("status", facts.status()), Fact("findings", facts.findings())]
    named = _INCIDENT.findall(question)
    listed = [i["id"] for i in facts.list_incidents(open_only=True, limit=MAX_INCIDENTS)]
    for incident_id in dict.fromkeys([*named, *listed]):
        try:
            gathered.append(Fact(f"incident {incident_id}", facts.get_incident(incident_id)))
        except InvalidInput:
            continue
    gathered.append(Fact("approvals", facts.list_approvals(include_decided=False)))
    recorded = facts.recorded_units()
    for unit in dict.fromkeys(_UNIT.findall(question)):
        if unit in recorded and not facts.config.is_protected(unit):
            gathered.append(Fact(f"unit {unit}", facts.unit_status(unit)))
            if (journal := _journal(facts, unit)) is not None:
                gathered.append(journal)
    return gathered


def for_approval(facts: Facts, approval_id: int) -> list[Fact]:
    """One queued item: itself and its history, what approving would do now, its
    incidents' chains, and its unit's state and journal."""
    item = facts.approval(approval_id)
    gathered = [
        Fact(f"approval {approval_id}", facts.get_approval(approval_id)),
        Fact(f"policy on approving {approval_id}", facts.explain_approval(item)),
    ]
    for incident_id in (item.incident_ids or [item.incident_id])[:MAX_INCIDENTS]:
        try:
            gathered.append(Fact(f"incident {incident_id}", facts.get_incident(incident_id)))
        except InvalidInput:
            continue
    unit = getattr(item.action, "unit", None)
    if unit is not None and not facts.config.is_protected(unit):
        with contextlib.suppress(InvalidInput):
            gathered.append(Fact(f"unit {unit}", facts.unit_status(unit)))
        if (journal := _journal(facts, unit)) is not None:
            gathered.append(journal)
    return gathered
