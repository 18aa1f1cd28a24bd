"""What became of one proposal or approval: the remediator's answer to its callers."""

from __future__ import annotations

from dataclasses import dataclass

from macha_obs.models import Approval, ExecutionResult, Verdict


@dataclass(frozen=True)
class Handled:
    """What became of one proposal or approval."""

    verdict: Verdict
    approval: Approval | None = None
    action_id: int | None = None
    result: ExecutionResult | None = None
    escalation: Approval | None = None  # the fix failed verification: queued for a human

    @property
    def summary(self) -> str:
        if self.result is not None:
            state = "verified" if self.result.verified else "NOT verified"
            if self.result.changed_by_person:
                state = "changed by a person before it was verified"
            return f"{self.verdict.outcome}: {state}: {self.result.detail}"
        if self.approval is not None:
            return f"{self.verdict.outcome} as approval {self.approval.id}: {self.verdict.reason}"
        return f"{self.verdict.outcome}: {self.verdict.reason}"
