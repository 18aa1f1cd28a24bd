"""From a proposal to a recorded outcome: judge, then execute, queue, record or refuse.

Used by the daemon for fresh proposals and by `macha-approve` for a human's approval;
both paths go through `judge` again at the moment of execution (invariant 5), write an
intent before any side effect (invariant 6), and append every verdict and outcome to
the audit log before returning (invariant 10). Whether a fix held is verify.py's; the
queue's upkeep (expiry, cancelling what is confirmed gone) is kept here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from macha_obs.config import Config
from macha_obs.errors import RefusedError
from macha_obs.intake.incidents import Queued
from macha_obs.models import (
    UNIT_ACTIONS,
    Action,
    ActionRecord,
    ActionStatus,
    Approval,
    ApprovalStatus,
    ExecutionResult,
    Outcome,
    Proposal,
    Risk,
    Suppression,
    UnitState,
    Verdict,
    describe_action,
    learns_from,
)
from macha_obs.policy.judge import (
    BreakerState,
    Facts,
    PolicyContext,
    held_for_human,
    judged,
    shadow_outcome,
    suppressed_verdict,
)
from macha_obs.policy.risk import Risker, risk_of
from macha_obs.policy.scope import Scope, confirm, out_of_scope
from macha_obs.remediate import approvals
from macha_obs.remediate.approvals import Incidents
from macha_obs.remediate.handled import Handled
from macha_obs.remediate.hardening import HardeningChecker
from macha_obs.remediate.patches import PatchChecker
from macha_obs.remediate.verdicts import (
    SHADOWED,
    Preview,
    Shadows,
    context_of,
    patch_checked,
    queue_reason,
    suppression_for,
)
from macha_obs.remediate.verify import Verifier
from macha_obs.store import ApprovalError, Store

ScopeOf = Callable[[Sequence[str]], Scope]
# Before an automatic fix: a reason to leave it to a human instead (the fleet's blast
# radius), or None to go ahead.
FleetCheck = Callable[[Action], str | None]
# queue an analysis' proposals and mark it done, in one transaction (settle_analysis)
Settle = Callable[[Sequence[Queued]], list[int]]


class Executor(Protocol):
    def run(self, action: Action) -> ExecutionResult: ...

    def unit_state(self, unit: str) -> UnitState: ...


class Remediator:
    def __init__(
        self,
        config: Config,
        store: Store,
        executor: Executor,
        *,
        scope_of: ScopeOf | None = None,
        clock: Callable[[], float] = time.time,
        patches: PatchChecker | None = None,
        verifier: Verifier | None = None,
        fleet_check: FleetCheck | None = None,
        hardening: HardeningChecker | None = None,
        risk: Risker = risk_of,
    ) -> None:
        """`scope_of` gives the evidence of the incidents an approval carries; without it
        an approval of a unit action is out of scope (fail closed). `patches` and
        `hardening` check a config_change and a settings patch before they are queued.
        `fleet_check` is asked right before an automatic fix runs (never before a human's
        approval); a reason queues the fix instead. `risk`: risk_of (a seam to count)."""
        self.config = config
        self.store = store
        self.executor = executor
        self.scope_of = scope_of
        self.patches = patches or PatchChecker(config.nixos_config_dir)
        self.hardening = hardening or HardeningChecker.for_config(config)
        self.clock = clock
        self.verifier = verifier or Verifier(config, store, clock)
        self.fleet_check = fleet_check
        self.risk = risk
        self._shadows = Shadows()
        self.in_flight: int | None = None  # the action id between intent and outcome

    # ------------------------------------------------------------ state

    def breaker(self) -> BreakerState:
        return self.verifier.breaker.state()

    def context(self) -> PolicyContext:
        return context_of(self.config, self.store, datetime.fromtimestamp(self.clock(), UTC))

    def unit_state(self, unit: str) -> UnitState | None:
        try:
            return self.executor.unit_state(unit)
        except Exception:  # unknown: never counts as healthy, failed or busy
            return None

    def facts(self, action: Action, scope: Scope | None) -> Facts:
        """One judgement's facts, gathered once: the risk, the ledger's context, systemd's
        state of a unit just now (not of one the policy refuses: protected, out of scope)."""
        risk, why = self.risk(action, self.config)
        problem = None
        if (
            isinstance(action, UNIT_ACTIONS)
            and scope is not None
            and out_of_scope(action, scope) is None
            and risk is not Risk.FORBIDDEN
        ):
            problem = confirm(action.unit, self.unit_state(action.unit), scope)
        return Facts(action, risk, why, self.context(), scope, problem)

    # ------------------------------------------------------------ proposals

    def decide(self, incident_id: str, proposal: Proposal, scope: Scope) -> Verdict:
        """Judge a fresh proposal against the incident's scope; the verdict is audited.

        A fix the operator keeps rejecting, or that keeps failing verification, for this
        problem is suppressed (invariant 14): recorded, not proposed, with why. In
        suggest and observe, what auto-safe would have done is noted too (the shadow,
        scored against the person's decision by store/outcomes.py)."""
        action = proposal.action
        seen = self.preview(incident_id, action, scope)
        verdict = seen.verdict
        shadow = None
        if self.config.autonomy_level in SHADOWED and learns_from(action):
            shadow = shadow_outcome(seen.facts, suppressed=seen.suppressed)
            self._shadows.note(incident_id, action, shadow)
        self._audit_verdict(incident_id, action, verdict, proposal.reason, shadow=shadow)
        return verdict

    def preview(
        self, incident_id: str | None, action: Action, scope: Scope, *, approved: bool = False
    ) -> Preview:
        """The verdict a proposal (or, `approved`, an approval) gets from systemd's state
        now, recording nothing: what `decide` judges by, and analyze and MCP show."""
        facts = self.facts(action, scope)
        verdict = judged(facts, approved=approved)
        if not approved:
            verdict = patch_checked(action, verdict, self.patches, self.hardening)
        suppressed = self.suppressed(incident_id, action) if incident_id and not approved else None
        if suppressed is not None:
            verdict = suppressed_verdict(verdict, suppressed, action)
        return Preview(verdict, suppressed, facts)

    def suppressed(self, incident_id: str, action: Action) -> Suppression | None:
        """The suppression of this fix for this incident's problem, if one is active."""
        return suppression_for(self.config, self.store, incident_id, action, self.clock())

    def _note_shadow(self, incident_id: str, action: Action, approval_id: int) -> None:
        shadow = self._shadows.take(incident_id, action)
        if shadow is not None:
            self.store.outcomes.note_shadow(approval_id, shadow)

    def carry_out(
        self, incident_id: str, proposal: Proposal, scope: Scope, *, alert_driven: bool = False
    ) -> Handled:
        """Execute a proposal judged EXECUTE, after judging it once more just now: the
        problem is confirmed again right before the side effect (invariant 12)."""
        action = proposal.action
        verdict = judged(self.facts(action, scope))  # gathered again: it is later now
        if verdict.outcome is not Outcome.EXECUTE:
            self._audit_verdict(incident_id, action, verdict, "re-judged before executing")
            return Handled(verdict)
        held = self._fleet_hold(verdict, action)
        if held is not verdict:
            self._audit_verdict(incident_id, action, held, "asked the fleet before executing")
            return self._queue(incident_id, proposal, held)
        return self._fix(incident_id, proposal, verdict, alert_driven=alert_driven)

    def handle(self, incident_id: str, proposal: Proposal, scope: Scope) -> Handled:
        """Judge a fresh proposal and carry out the verdict."""
        verdict = self.decide(incident_id, proposal, scope)
        if verdict.outcome is Outcome.EXECUTE:
            held = self._fleet_hold(verdict, proposal.action)
            if held is verdict:
                return self._fix(incident_id, proposal, verdict, alert_driven=False)
            self._audit_verdict(
                incident_id, proposal.action, held, "asked the fleet before executing"
            )
            verdict = held
        if verdict.outcome is Outcome.QUEUE:
            return self._queue(incident_id, proposal, verdict)
        return Handled(verdict)

    def _queue(self, incident_id: str, proposal: Proposal, verdict: Verdict) -> Handled:
        approval_id = self._enqueue(incident_id, proposal, verdict)
        self._note_shadow(incident_id, proposal.action, approval_id)
        return Handled(verdict, approval=self.store.approvals.get_approval(approval_id))

    def _enqueue(self, incident_id: str, proposal: Proposal, verdict: Verdict) -> int:
        return self.store.approvals.enqueue(
            incident_id,
            proposal.action,
            risk=verdict.risk,
            reason=queue_reason(verdict, proposal),
            evidence=list(proposal.evidence),
            ttl=self.config.approval_ttl,
        ).id

    def _fleet_hold(self, verdict: Verdict, action: Action) -> Verdict:
        """The verdict, or QUEUE when the fleet check says a person should decide. A
        check that fails says so too (fail closed)."""
        if self.fleet_check is None or verdict.outcome is not Outcome.EXECUTE:
            return verdict
        try:
            reason = self.fleet_check(action)
        except Exception as exc:
            reason = f"the fleet check failed ({type(exc).__name__}: {exc})"
        return verdict if reason is None else held_for_human(verdict, reason)

    def act(
        self,
        incident_id: str,
        judged: Sequence[tuple[Proposal, Verdict]],
        scope: Scope,
        *,
        alert_driven: bool,
        settle: Settle | None,
    ) -> list[tuple[Proposal, Handled]]:
        """Carry out judged proposals, each fix judged once more just before it runs. With
        `settle` the analysis is complete: what waits for a human is queued in the
        transaction that marks the incident analysed (a crash leaves both or neither).
        Without it (the fast lane, ahead of a model) it is queued now, so the person
        paged sees it whatever the model is doing; the complete analysis queues it again
        into the same item (one pending item per action) when it settles."""
        queued = [(p, v) for p, v in judged if v.outcome is Outcome.QUEUE]
        if settle is not None:
            ids = settle(
                [Queued(p.action, v.risk, queue_reason(v, p), tuple(p.evidence)) for p, v in queued]
            )
        else:
            ids = [self._enqueue(incident_id, p, v) for p, v in queued]
        queued_ids = dict(zip((id(p) for p, _ in queued), ids, strict=False))
        for (proposal, _), approval_id in zip(queued, ids, strict=False):
            self._note_shadow(incident_id, proposal.action, approval_id)
        done: list[tuple[Proposal, Handled]] = []
        for proposal, verdict in judged:
            if verdict.outcome is Outcome.EXECUTE:
                handled = self.carry_out(incident_id, proposal, scope, alert_driven=alert_driven)
            elif id(proposal) in queued_ids:
                handled = Handled(
                    verdict, approval=self.store.approvals.get_approval(queued_ids[id(proposal)])
                )
            else:
                handled = Handled(verdict)
            done.append((proposal, handled))
        return done

    # ------------------------------------------------------------ the queue's upkeep

    def expire_queue(self) -> list[int]:
        """Pending approvals past their TTL expire; their ids."""
        return self.store.approvals.expire_approvals()

    def settle_verifications(self, is_open: Callable[[str], bool]) -> list[Approval]:
        """Alert-driven fixes whose window ended: verify.py escalates those whose
        incident is still open."""
        return self.verifier.settle(is_open)

    def reconcile_queue(self, incidents: Incidents) -> list[int]:
        """Cancel what is confirmed gone (approvals.py)."""
        return approvals.reconcile_queue(self, incidents)

    def recover_stranded(self) -> list[ActionRecord]:
        """Claims of processes that died, recorded interrupted (approvals.py)."""
        return approvals.recover_stranded(self)

    # ------------------------------------------------------------ approvals

    def approve(self, approval_id: int, by: str) -> Handled:
        """Carry out a human's approval, once, if the policy still allows it now."""
        return approvals.approve(self, approval_id, by)

    def reject(self, approval_id: int, by: str, reason: str = "") -> Approval:
        return approvals.reject(self, approval_id, by, reason)

    # ------------------------------------------------------------ execution

    def _fix(
        self, incident_id: str, proposal: Proposal, verdict: Verdict, *, alert_driven: bool
    ) -> Handled:
        """Run a fresh proposal; verify.py records whether it held and escalates it if not."""
        action_id, result = self._execute(incident_id, proposal.action, None)
        escalation = self.verifier.after_fix(
            incident_id, proposal, action_id, result, alert_driven=alert_driven
        )
        return Handled(verdict, action_id=action_id, result=result, escalation=escalation)

    def _execute(
        self, incident_id: str, action: Action, approval_id: int | None, *, by: str | None = None
    ) -> tuple[int, ExecutionResult]:
        started = self.clock()
        try:
            action_id = self.store.ledger.record_intent(
                incident_id, action, approval_id=approval_id, by=by
            )
            self.in_flight = action_id
            try:
                result = self.executor.run(action)
            except RefusedError as exc:  # the executor's own guard, before any side effect
                result = ExecutionResult(ok=False, detail=f"refused: {exc}")
                self.store.ledger.record_outcome(action_id, ActionStatus.REFUSED, result)
                return action_id, result
            except Exception as exc:
                # a crashing fix is a failed fix: recorded, and it feeds the breaker (inv. 7)
                detail = f"executor error: {type(exc).__name__}: {exc}"
                result = ExecutionResult(ok=False, detail=detail)
            result = self.verifier.classify(action, result, since=started)
            status = ActionStatus.SUCCEEDED if result.verified else ActionStatus.FAILED
            if result.changed_by_person:
                status = ActionStatus.CHANGED
            self.store.ledger.record_outcome(action_id, status, result)
        except (KeyboardInterrupt, SystemExit):
            # Ctrl-C or SIGTERM anywhere from the intent's commit to the outcome's: say
            # so, never leave an open intent (before the commit there is none to close)
            self.in_flight = None
            self.store.ledger.interrupt_own(
                approval_id, action, "interrupted (SIGINT/SIGTERM) while the action ran"
            )
            raise
        finally:
            self.in_flight = None
        self.verifier.record(action, action_id, result)
        return action_id, result

    def interrupt_in_flight(self, reason: str) -> int | None:
        """At shutdown: the action still running is recorded as interrupted (not re-run),
        and so is the approval it carries out."""
        action_id = self.in_flight
        if action_id is not None:
            self.in_flight = None
            result = ExecutionResult(ok=False, detail=reason)
            self.store.ledger.record_outcome(action_id, ActionStatus.INTERRUPTED, result)
            record = self.store.ledger.get_action(action_id)
            if record is not None and record.approval_id is not None:
                self.store.approvals.settle_approval(
                    record.approval_id, ApprovalStatus.INTERRUPTED, reason, action_id=action_id
                )
        return action_id

    def _audit_verdict(
        self,
        incident_id: str,
        action: Action,
        verdict: Verdict,
        why: str,
        *,
        shadow: Outcome | None = None,
    ) -> None:
        record: dict[str, object] = {
            "event": "verdict",
            "incident_id": incident_id,
            "action": action.model_dump(mode="json"),
            "label": describe_action(action),
            "outcome": verdict.outcome.value,
            "risk": verdict.risk.value,
            "autonomy": verdict.autonomy.value,
            "reason": verdict.reason,
            "proposed_because": why,
        }
        if shadow is not None:
            record["shadow_auto_safe"] = shadow.value
        self.store.audit.audit_decision(record)


__all__ = [
    "ApprovalError",
    "Handled",
    "Remediator",
    "context_of",
]
