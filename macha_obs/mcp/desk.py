"""The changing calls of a conversation: propose, approve, reject (invariant 15).

A proposal goes through the Remediator exactly as a model's does (the scope lock, the
policy, suppression, the fleet): it can at most queue, or execute where the autonomy
level or a trusted action would let a model's proposal execute. Approving and rejecting
happen here only after a person confirmed them (the server asks through the protocol's
elicitation; `discuss` through its own prompt); whoever calls `approve` says who
confirmed, and every call is audited with who and through which door.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from macha_obs.mcp.facts import Facts
from macha_obs.models import (
    Action,
    ApprovalStatus,
    Proposal,
    describe_action,
)
from macha_obs.remediate.remediator import Remediator
from macha_obs.store import Audit

_CLIENT_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def client_label(name: str | None) -> str:
    """A client's self-given name, made a safe short label ("unknown" if none)."""
    cleaned = _CLIENT_NAME.sub("-", name or "").strip("-.")[:40]
    return cleaned or "unknown"


@dataclass(frozen=True)
class Door:
    """Who is calling, and through which door: `mcp` over stdio or http, or `discuss`."""

    kind: str  # "mcp" or "discuss"
    client: str  # the MCP client's name, or the person's user name for discuss
    transport: str  # "stdio", "http" or "terminal"

    @property
    def source(self) -> str:
        return f"{self.kind}:{self.client}"

    def confirmed_by_person(self) -> str:
        """`decided_by` of an approval or rejection a person confirmed through this door."""
        return f"{self.source} (confirmed by a person)"


class Desk:
    """The three changing calls, each audited with its door."""

    def __init__(self, facts: Facts, remediator: Remediator, audit: Audit) -> None:
        self.facts = facts
        self.remediator = remediator
        self.audit = audit

    def _audit(self, door: Door, call: str, **fields: Any) -> None:
        self.audit.audit_decision(
            {
                "event": "conversation_call",
                "call": call,
                "door": door.kind,
                "client": door.client,
                "transport": door.transport,
                **fields,
            }
        )

    def propose(self, door: Door, incident_id: str, action: Action, reason: str) -> dict[str, Any]:
        """Judge and carry out a proposal as the daemon would a model's, for this incident."""
        scope = self.facts.scope(incident_id)
        proposal = Proposal(
            action=action,
            reason=f"proposed through {door.source} over {door.transport}: {reason}"[:500],
            evidence=[f"proposed by {door.source} ({door.transport})"],
        )
        handled = self.remediator.handle(incident_id, proposal, scope)
        result: dict[str, Any] = {
            "action": describe_action(action),
            "outcome": handled.verdict.outcome.value,
            "risk": handled.verdict.risk.value,
            "reason": handled.verdict.reason,
            "approval_id": handled.approval.id if handled.approval else None,
            "action_id": handled.action_id,
            "verified": handled.result.verified if handled.result else None,
        }
        if handled.approval is not None:
            result["approvals_page"] = self.facts.link_of(handled.approval)
        self._audit(
            door,
            "propose_action",
            incident_id=incident_id,
            label=describe_action(action),
            outcome=result["outcome"],
            approval_id=result["approval_id"],
            action_id=result["action_id"],
        )
        return result

    def approve(self, door: Door, approval_id: int) -> dict[str, Any]:
        """Carry out an item a person confirmed; the policy is judged again now."""
        handled = self.remediator.approve(approval_id, door.confirmed_by_person())
        settled = handled.approval
        result = {
            "approval_id": approval_id,
            "status": settled.status.value if settled else None,
            "summary": handled.summary,
            "action_id": handled.action_id,
            "verified": handled.result.verified if handled.result else None,
            "decided_by": door.confirmed_by_person(),
        }
        self._audit(door, "approve", approval_id=approval_id, status=result["status"])
        return result

    def reject(self, door: Door, approval_id: int, reason: str) -> dict[str, Any]:
        settled = self.remediator.reject(approval_id, door.confirmed_by_person(), reason[:500])
        self._audit(door, "reject", approval_id=approval_id, status=settled.status.value)
        return {
            "approval_id": approval_id,
            "status": settled.status.value,
            "decided_by": door.confirmed_by_person(),
        }

    def unconfirmed(self, door: Door, call: str, approval_id: int, why: str) -> dict[str, Any]:
        """Nothing done: the person did not confirm (or could not be asked)."""
        item = self.facts.approval(approval_id)
        self._audit(door, call, approval_id=approval_id, status="unconfirmed", why=why)
        return {
            "approval_id": approval_id,
            "done": False,
            "status": item.status.value,
            "why": why,
            "approvals_page": self.facts.link_of(item)
            if item.status is ApprovalStatus.PENDING
            else None,
            "or_run": f"macha-approve show {approval_id}",
        }
