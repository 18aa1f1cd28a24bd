"""Did the fix work: verification, escalation and the circuit breaker, in one room.

The executor has already watched a unit fix (active, and still active after the settle
time). This room records that verification in the ledger, feeds a failure to the
breaker and escalates it: the fix waits for a human, with what was seen. An alert-driven
fix is verified once more: its incident must resolve (its alert stop firing) within
`alert_verify_window`, or it counts as a failed verification too.

A person's hand is not a failed fix: a fix that did not hold because a person stopped
the unit meanwhile (a stop job the sidecar never issues, found by `person`, a seam the
CLI wires to the journal: collect/unit_journal.py) ends "changed by a person". It is
recorded as such, never escalated, never fed to the breaker or the learning record.

The breaker, whole: `breaker_threshold` failed verifications within `breaker_window`
open it (`breaker_rule`, pure); it is persisted open in the ledger, so it stays open
across restarts, until a human's `macha-obs autonomy reset` (`Breaker.reset`). While it
is open the policy caps autonomy at suggest (`policy.effective_autonomy`, invariant 7).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from macha_obs.config import Config
from macha_obs.models import (
    UNIT_ACTIONS,
    Action,
    Approval,
    ExecutionResult,
    Investigate,
    Proposal,
    describe_action,
)
from macha_obs.policy.judge import BreakerState
from macha_obs.policy.risk import risk_of
from macha_obs.store import Store


def breaker_rule(
    failures: Iterable[datetime], *, opened: bool, config: Config, now: datetime
) -> BreakerState:
    """Open once `breaker_threshold` verifications failed within the window; stays open
    (opened=True, persisted in the ledger) until a human resets it. Pure."""
    since = now - timedelta(seconds=config.breaker_window)
    recent = sum(1 for at in failures if at > since)
    if opened:
        return BreakerState(True, recent, "open until `macha-obs autonomy reset`")
    if recent >= config.breaker_threshold:
        return BreakerState(
            True,
            recent,
            f"{recent} failed verifications in {config.breaker_window:.0f}s "
            f"(threshold {config.breaker_threshold})",
        )
    return BreakerState(False, recent, "")


class Breaker:
    """The circuit breaker's state in the ledger: read, opened when due, reset by a human."""

    def __init__(self, config: Config, store: Store, clock: Callable[[], float] = time.time):
        self.config = config
        self.store = store
        self.clock = clock

    def state(self) -> BreakerState:
        """Persisted open (with the reason it opened), or due to open now."""
        opened_at, reason = self.store.verifications.breaker_opened()
        now = datetime.fromtimestamp(self.clock(), UTC)
        state = breaker_rule(
            self.store.verifications.failed_verifications(),
            opened=opened_at is not None,
            config=self.config,
            now=now,
        )
        if opened_at is not None and reason:
            return BreakerState(True, state.failures, reason)
        return state

    def note_failure(self, action_id: int | None) -> None:
        """After a failed verification was recorded: persist the breaker open if due."""
        state = self.state()
        opened_at, _ = self.store.verifications.breaker_opened()
        if state.open and opened_at is None:
            self.store.verifications.open_breaker(state.reason)
            self.store.audit.audit_action(
                {"event": "breaker_open", "reason": state.reason, "action_id": action_id}
            )

    def reset(self, by: str) -> None:
        """A human closed it (`macha-obs autonomy reset`): failures before now no longer
        count; the reset is audited with who did it."""
        self.store.verifications.reset_breaker(by)


@dataclass(frozen=True)
class Watch:
    """An alert-driven fix that worked on the host, waiting for its alert to resolve."""

    incident_id: str
    action_id: int
    proposal: Proposal
    deadline: float


# What a person did to a unit since a time (seconds since the epoch), or None: a stop,
# start or restart job the sidecar did not issue.
PersonCheck = Callable[[str, float], str | None]


class Verifier:
    """Records verifications, escalates failures, watches alert-driven fixes."""

    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Callable[[], float] = time.time,
        *,
        person: PersonCheck | None = None,
    ):
        self.config = config
        self.store = store
        self.clock = clock
        self.person = person
        self.breaker = Breaker(config, store, clock)
        self.watching: list[Watch] = []

    def classify(self, action: Action, result: ExecutionResult, *, since: float) -> ExecutionResult:
        """A unit fix that did not verify, because a person changed the unit since
        `since` (when the sidecar began): the result says so (`changed_by_person`). A
        check that fails leaves the result as it is: a failed fix (fail closed)."""
        if result.verified or self.person is None or not isinstance(action, UNIT_ACTIONS):
            return result
        try:
            what = self.person(action.unit, since)
        except Exception:  # unknown: never an excuse for a failed fix
            what = None
        if not what:
            return result
        return result.model_copy(
            update={
                "changed_by_person": what[:200],
                "detail": f"changed by a person during verification ({what[:200]}); "
                f"{result.detail}"[:2000],
            }
        )

    def record(self, action: Action, action_id: int, result: ExecutionResult) -> None:
        """The executor's verdict on a fix, in the ledger; a failure feeds the breaker. A
        diagnostic is not a fix: it is never a verification, and a fix a person changed
        before it could be verified is neither verified nor failed."""
        if isinstance(action, Investigate):
            return
        if result.changed_by_person:
            self.store.audit.audit_action(
                {
                    "event": "changed_by_person",
                    "action_id": action_id,
                    "action": action.model_dump(mode="json"),
                    "detail": result.changed_by_person,
                }
            )
            return
        self.store.verifications.record_verification(action_id, result.verified)
        if not result.verified:
            self.breaker.note_failure(action_id)

    def after_fix(
        self,
        incident_id: str,
        proposal: Proposal,
        action_id: int,
        result: ExecutionResult,
        *,
        alert_driven: bool,
    ) -> Approval | None:
        """A fix that did not hold is escalated (the approval); one an alert asked for is
        watched until the alert resolves."""
        if result.changed_by_person:
            return None  # the person who changed it is already looking
        if not result.verified:
            return self.escalate(incident_id, proposal, result.detail)
        if alert_driven:
            deadline = self.clock() + self.config.alert_verify_window
            self.watching.append(Watch(incident_id, action_id, proposal, deadline))
        return None

    def settle(self, is_open: Callable[[str], bool]) -> list[Approval]:
        """Alert-driven fixes whose incident resolved are done; those whose window ended
        with the incident still open failed verification and are escalated."""
        waiting: list[Watch] = []
        escalated: list[Approval] = []
        for watch in self.watching:
            if not is_open(watch.incident_id):
                self.store.audit.audit_action(
                    {
                        "event": "alert_resolved",
                        "incident_id": watch.incident_id,
                        "action_id": watch.action_id,
                    }
                )
                continue
            if self.clock() < watch.deadline:
                waiting.append(watch)
                continue
            # also counted against the fix in the learning record (store/outcomes.py)
            self.store.outcomes.record_late_failure(watch.action_id)
            self.breaker.note_failure(watch.action_id)
            detail = f"the alert did not resolve within {self.config.alert_verify_window:g}s"
            escalated.append(self.escalate(watch.incident_id, watch.proposal, detail))
        self.watching = waiting
        return escalated

    def escalate(self, incident_id: str, proposal: Proposal, detail: str) -> Approval:
        """A fix that did not hold goes to a human, with what was seen."""
        action = proposal.action
        approval = self.store.approvals.enqueue(
            incident_id,
            action,
            risk=risk_of(action, self.config)[0],
            reason=f"escalated: automatic {describe_action(action)} failed "
            f"verification ({detail}); a human should look before it is tried again",
            evidence=[detail[:200], *proposal.evidence][:5],
            ttl=self.config.approval_ttl,
        )
        self.store.audit.audit_decision(
            {
                "event": "escalated",
                "incident_id": incident_id,
                "approval_id": approval.id,
                "reason": detail,
            }
        )
        return approval
