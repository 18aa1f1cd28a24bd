"""Ledger records: what was done (the action ledger), what waits for a person (approvals),
and past executions as the rate limiter counts them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from macha_obs.models.actions import Action, Risk
from macha_obs.models.units import UnitState


class ActionStatus(StrEnum):
    INTENT = "intent"  # written before any side effect
    SUCCEEDED = "succeeded"  # done and verified
    FAILED = "failed"  # done (or tried) and not verified
    REFUSED = "refused"  # the executor refused before any side effect
    INTERRUPTED = "interrupted"  # the process died between intent and outcome
    # done; then a person stopped or changed the unit before it was verified: neither a
    # verified nor a failed fix (it never feeds the breaker)
    CHANGED = "changed"


class ExecutionResult(BaseModel):
    """What the executor did and what it saw before and after."""

    ok: bool
    verified: bool = False
    detail: str = ""
    before: UnitState | None = None
    after: UnitState | None = None
    output: str = ""
    attempts: int = 1
    duration_seconds: float = 0.0
    # nix gc: bytes the store's filesystem got back (None: not measured)
    freed_bytes: int | None = Field(None, ge=0)
    # not verified because a person changed the unit meanwhile: what they did
    changed_by_person: str = ""


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"  # claimed by one approver; being carried out
    EXECUTED = "executed"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"  # the incident resolved or the problem went away
    REFUSED = "refused"  # the policy refused it at execution time
    ACKNOWLEDGED = "acknowledged"  # a config_change a human has read; nothing ran
    INTERRUPTED = "interrupted"


class Approval(BaseModel):
    """An action waiting for (or past) a human's decision."""

    id: int
    incident_id: str
    action: Action
    risk: Risk
    reason: str
    evidence: list[str] = Field(default_factory=list)
    status: ApprovalStatus
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None = None
    decided_by: str = ""
    note: str = ""
    action_id: int | None = None
    # every incident whose evidence it carries (the first is `incident_id`)
    incident_ids: list[str] = Field(default_factory=list)


class ActionRecord(BaseModel):
    """A row of the action ledger."""

    id: int
    incident_id: str
    approval_id: int | None = None
    action: Action
    status: ActionStatus
    started_at: datetime
    finished_at: datetime | None = None
    result: ExecutionResult | None = None


@dataclass(frozen=True)
class Execution:
    """One past execution, as the rate limiter sees it: read from the ledger, judged by
    the policy."""

    kind: str
    target: str
    at: datetime
