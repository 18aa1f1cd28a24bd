"""The verdict's helpers: the policy's context from the ledger, the diff check a
config_change passes before a person sees it, what a queued item says first, and the
shadow judgements waiting for their approval."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from macha_obs.config import AutonomyLevel, Config
from macha_obs.intake.incidents import IncidentStore
from macha_obs.models import (
    SETTINGS_PATCHES,
    Action,
    ConfigChange,
    Incident,
    Outcome,
    Proposal,
    Suppression,
    Verdict,
    action_json,
    fix_of,
    learns_from,
    signature_of,
)
from macha_obs.policy.judge import RATE_WINDOW, Facts, PolicyContext
from macha_obs.policy.scope import Confirmation
from macha_obs.remediate.hardening import HardeningChecker
from macha_obs.remediate.patches import PatchChecker
from macha_obs.remediate.pause import PauseBook
from macha_obs.remediate.verify import Breaker
from macha_obs.store import Store


def queue_reason(verdict: Verdict, proposal: Proposal) -> str:
    """What a person reads first about a queued item: the policy's reason and the why."""
    return f"{verdict.reason}. Proposed because: {proposal.reason or '-'}"


def patch_checked(
    action: Action,
    verdict: Verdict,
    patches: PatchChecker,
    hardening: HardeningChecker | None = None,
) -> Verdict:
    """A config_change reaches a person only as a diff that applies to the file it
    names, inside the configured directory, and leaves it parseable; otherwise the
    verdict is a refusal naming the check that failed. A hardening or tuning patch about
    to be queued passes remediate/hardening.py's checks, whose findings the reason then
    carries (observe acts on nothing: no copy is started there). Other actions pass
    unchanged."""
    if isinstance(action, SETTINGS_PATCHES) and verdict.outcome is Outcome.QUEUE:
        if hardening is None:
            return _refused(verdict, "no hardening checker: the patch cannot be checked")
        refused, found = hardening.refusal(action)
        if refused is not None:
            return _refused(verdict, refused)
        return verdict.model_copy(update={"reason": f"{verdict.reason}; {found}"})
    if not isinstance(action, ConfigChange) or verdict.outcome is Outcome.REFUSE:
        return verdict
    refused = patches.refusal(action)
    if refused is None:
        return verdict
    return verdict.model_copy(update={"outcome": Outcome.REFUSE, "reason": f"refused: {refused}"})


def _refused(verdict: Verdict, why: str) -> Verdict:
    return verdict.model_copy(update={"outcome": Outcome.REFUSE, "reason": f"refused: {why}"})


def context_of(config: Config, store: Store, now: datetime) -> PolicyContext:
    """Everything the policy needs from the ledger (recent executions, the breaker, a
    human's pause)."""
    since = (now - RATE_WINDOW).timestamp()
    return PolicyContext(
        config=config,
        now=now,
        recent=store.ledger.recent_executions(since),
        breaker=Breaker(config, store, clock=now.timestamp).state(),
        pause=PauseBook(store).current(now.timestamp()),
    )


@dataclass(frozen=True)
class Preview:
    """A judgement without a record: the verdict, an active suppression, and the facts
    it was judged from (the scope lock's confirmation among them)."""

    verdict: Verdict
    suppressed: Suppression | None
    facts: Facts

    @property
    def problem(self) -> Confirmation | None:
        """The scope lock's confirmation (None for a host action, or one not looked at)."""
        return self.facts.problem


def suppression_for(
    config: Config, store: Store, incident_id: str, action: Action, now: float
) -> Suppression | None:
    """The suppression of this fix for this incident's problem, if one is active."""
    if not learns_from(action):
        return None
    state = IncidentStore(store).get(incident_id)
    incident = state.incident if state is not None else Incident(id="-", source="manual")
    return store.outcomes.suppression(signature_of(incident, action), fix_of(action), config, now)


# Autonomy levels whose decisions are shadow-scored against auto-safe.
SHADOWED = frozenset({AutonomyLevel.OBSERVE, AutonomyLevel.SUGGEST})


class Shadows:
    """What auto-safe would have done, per (incident, action) judged and not yet queued;
    taken when the item is queued, to be scored against the person's decision
    (store/outcomes.py). Past `kept`, the oldest go first."""

    def __init__(self, kept: int = 1000) -> None:
        self.kept = kept
        self._waiting: dict[tuple[str, str], Outcome] = {}

    def note(self, incident_id: str, action: Action, outcome: Outcome) -> None:
        self._waiting[(incident_id, action_json(action))] = outcome
        while len(self._waiting) > self.kept:
            self._waiting.pop(next(iter(self._waiting)))

    def take(self, incident_id: str, action: Action) -> Outcome | None:
        return self._waiting.pop((incident_id, action_json(action)), None)
