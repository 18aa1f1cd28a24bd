"""A person's decisions on the queue, and the queue's upkeep, through the remediator.

Approving re-runs the policy at that moment (invariant 5): claiming the item and writing
the intent are one transaction, and every other outcome settles it in one step with its
audit line (store/audit.py), so an interruption at any instant leaves the item pending,
interrupted (decidable again) or done, and a decision the audit log cannot take is not
taken. The upkeep cancels an item only when its problem is confirmed gone, and recovers
the claims of `macha-approve` processes that died, without waiting for a restart.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from macha_obs.intake.incidents import IncidentStore
from macha_obs.models import (
    PATCH_ACTIONS,
    UNIT_ACTIONS,
    ActionRecord,
    Approval,
    ApprovalStatus,
    Outcome,
    describe_action,
)
from macha_obs.policy.judge import judged
from macha_obs.policy.scope import Scope, confirm
from macha_obs.remediate.handled import Handled

if TYPE_CHECKING:
    from macha_obs.remediate.remediator import Remediator


class Incidents(Protocol):
    """What the queue's upkeep asks of the incidents (incidents.IncidentStore)."""

    def scope_of(self, incident_ids: Iterable[str]) -> Scope: ...

    def is_open(self, incident_id: str) -> bool: ...


def verdict_record(
    incident_id: str, approval: Approval, outcome: str, reason: str, by: str
) -> dict[str, object]:
    """The audit line of a person's decision that ran nothing."""
    return {
        "event": "decided",
        "incident_id": incident_id,
        "approval_id": approval.id,
        "label": describe_action(approval.action),
        "status": outcome,
        "reason": reason,
        "by": by,
    }


def approve(rem: Remediator, approval_id: int, by: str) -> Handled:
    """Carry out a person's approval, once, if the policy still allows it now."""
    approval = rem.store.approvals.pending_approval(approval_id)
    action = approval.action
    if isinstance(action, PATCH_ACTIONS):
        verdict = judged(rem.facts(action, None))
        rem._audit_verdict(approval.incident_id, action, verdict, f"approval {approval_id}")
        note = "read by a human; nothing executed"
        settled = rem.store.approvals.decide_approval(
            approval_id,
            ApprovalStatus.ACKNOWLEDGED,
            note,
            by=by,
            record=verdict_record(approval.incident_id, approval, "acknowledged", note, by),
        )
        return Handled(verdict, approval=settled)
    scope = rem.scope_of(approval.incident_ids) if rem.scope_of else None
    facts = rem.facts(action, scope)
    problem = facts.problem
    verdict = judged(facts, approved=True)
    rem._audit_verdict(approval.incident_id, action, verdict, f"approval {approval_id}")
    if verdict.outcome is not Outcome.EXECUTE:
        # Refusals that can pass (observe mode, a pause, a rate limit, a state that
        # cannot be read now) keep the item decidable so nothing a human asked for is
        # lost; permanent ones settle it.
        if verdict.outcome is Outcome.RECORD or verdict.rate_limited:
            return Handled(verdict, approval=rem.store.approvals.get_approval(approval_id))
        status = ApprovalStatus.REFUSED
        if problem is not None and problem.present is False:
            status = ApprovalStatus.CANCELLED
        record = verdict_record(approval.incident_id, approval, status.value, verdict.reason, by)
        settled = rem.store.approvals.decide_approval(
            approval_id, status, verdict.reason, by=by, record=record
        )
        return Handled(verdict, approval=settled)
    action_id, result = rem._execute(approval.incident_id, action, approval_id, by=by)
    done = result.verified or bool(result.changed_by_person)
    status = ApprovalStatus.EXECUTED if done else ApprovalStatus.FAILED
    settled = rem.store.approvals.settle_approval(
        approval_id, status, result.detail, action_id=action_id
    )
    if result.verified and isinstance(action, UNIT_ACTIONS):
        look_again(rem, approval.incident_ids)
    return Handled(verdict, approval=settled, action_id=action_id, result=result)


def reject(rem: Remediator, approval_id: int, by: str, reason: str = "") -> Approval:
    """A person's no: the item and its audit line in one step (or neither)."""
    return rem.store.approvals.reject_approval(approval_id, by, reason)


def look_again(rem: Remediator, incident_ids: Iterable[str]) -> None:
    """A person's fix verified on the host: should the unit fail again, that is a new
    problem. A new revision of each incident makes the next cycle (a daemon's, or the
    next `macha-check`, which has no unit events to say "failed again") decide it again
    from the host as it is then; a healthy unit's incident resolves with its findings
    first, and otherwise the scope lock refuses to act on a healthy unit."""
    incidents = IncidentStore(rem.store)
    for incident_id in incident_ids:
        incidents.touch(incident_id)


def reconcile_queue(rem: Remediator, incidents: Incidents) -> list[int]:
    """Cancel a decidable item only when its problem is confirmed gone, by the test the
    scope lock uses: for a unit, systemd's state (a resolved alert is a hint to look,
    never proof by itself); otherwise every incident it carries has resolved. A state
    that cannot be read now cancels nothing."""
    cancelled: list[int] = []
    for approval in rem.store.approvals.list_approvals({ApprovalStatus.PENDING}):
        action = approval.action
        if isinstance(action, UNIT_ACTIONS):
            scope = incidents.scope_of(approval.incident_ids)
            seen = confirm(action.unit, rem.unit_state(action.unit), scope)
            if seen.present is not False:
                continue
            why = f"the problem is gone: {seen.reason}"
        elif any(incidents.is_open(i) for i in approval.incident_ids):
            continue
        else:
            why = "the problem is gone: every incident it was queued for has resolved"
        record = {
            "event": "cancelled",
            "incident_id": approval.incident_id,
            "approval_id": approval.id,
            "label": describe_action(action),
            "reason": why,
        }
        if rem.store.approvals.cancel_approval(approval.id, why, record):
            cancelled.append(approval.id)
    return cancelled


def recover_stranded(rem: Remediator) -> list[ActionRecord]:
    """Intents whose process died (a `macha-approve` killed mid-action) become
    `interrupted`, their items decidable again: on every cycle, not only at start."""
    return rem.store.ledger.recover_interrupted()
