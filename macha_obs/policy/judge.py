"""The policy: what may run, decided from the action itself, the config and the ledger.

Pure: no I/O, no clock of its own. The store supplies the recent executions, verify.py
the breaker's state (its rule, state and reset live there); the caller supplies `now`.
Risk comes from here only, never from a model (DESIGN.md invariant 2). One decision is
one `Facts`, gathered once (remediate/ does the gathering), judged once by `judged`;
the shadow judgement reuses those facts.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from macha_obs.config import AutonomyLevel, Config
from macha_obs.models import (
    PATCH_ACTIONS,
    UNIT_ACTIONS,
    Action,
    Execution,
    Investigate,
    Outcome,
    ResetFailed,
    RestartUnit,
    Risk,
    StartUnit,
    Suppression,
    Verdict,
    describe_action,
    investigation_instead,
)
from macha_obs.policy.risk import risk_of
from macha_obs.policy.scope import Confirmation, Scope, out_of_scope

RATE_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class BreakerState:
    open: bool = False
    failures: int = 0
    reason: str = ""


@dataclass(frozen=True)
class Pause:
    """A human's pause: nothing executes from `since` until `until` (None: until resumed)."""

    since: datetime
    until: datetime | None
    reason: str = ""
    by: str = ""

    def active(self, now: datetime) -> bool:
        return now >= self.since and (self.until is None or now < self.until)

    def describe(self) -> str:
        end = f" until {self.until:%Y-%m-%d %H:%M:%S} UTC" if self.until else " until resumed"
        why = f": {self.reason}" if self.reason else ""
        return f"paused by {self.by or 'unknown'}{end}{why}"


@dataclass(frozen=True)
class PolicyContext:
    """Everything a verdict depends on besides the action."""

    config: Config
    now: datetime
    recent: tuple[Execution, ...] = ()
    breaker: BreakerState = field(default_factory=BreakerState)
    pause: Pause | None = None


@dataclass(frozen=True)
class Facts:
    """What one judgement of one action rests on, gathered once: the action; its risk and
    why (`risk_of`: from the action and the config alone); the ledger's context; the
    incident's scope; the scope lock's test of the unit just now (None: not a unit
    action, or one refused before anyone looked)."""

    action: Action
    risk: Risk
    why: str
    context: PolicyContext
    scope: Scope | None = None
    problem: Confirmation | None = None


def effective_autonomy(config: Config, breaker: BreakerState) -> AutonomyLevel:
    """An open breaker caps autonomy at `suggest` (invariant 7)."""
    if breaker.open and config.autonomy_level in (AutonomyLevel.AUTO_SAFE, AutonomyLevel.AUTO_FULL):
        return AutonomyLevel.SUGGEST
    return config.autonomy_level


# Restart, start and reset-failed+start of one unit are the same remedy to the limiter:
# switching verbs must not buy a unit more attempts.
_UNIT_VERBS = {"restart_unit", "start_unit", "reset_failed"}


def _bucket(kind: str) -> str:
    return "unit" if kind in _UNIT_VERBS else kind


def rate_limit(action: Action, ctx: PolicyContext) -> str | None:
    """A reason if executing `action` now would exceed a limit, else None."""
    if isinstance(action, Investigate):
        return None  # read-only; bounded by the agent's own step limit
    since = ctx.now - RATE_WINDOW
    window = [e for e in ctx.recent if e.at > since]
    cfg = ctx.config
    bucket = _bucket(action.kind)
    same = sum(1 for e in window if _bucket(e.kind) == bucket and e.target == action.target)
    if same >= cfg.max_actions_per_target_per_hour:
        what = "unit actions" if bucket == "unit" else action.kind
        return (
            f"rate limit: {what} on {action.target} already ran {same} time(s) in the last "
            f"hour (limit {cfg.max_actions_per_target_per_hour})"
        )
    if len(window) >= cfg.max_actions_per_hour:
        return (
            f"rate limit: {len(window)} actions in the last hour (global limit "
            f"{cfg.max_actions_per_hour})"
        )
    return None


def judge(
    action: Action,
    ctx: PolicyContext,
    *,
    approved: bool = False,
    scope: Scope | None = None,
    problem: Confirmation | None = None,
) -> Verdict:
    """`judged`, on facts put together here (for a caller that has no `Facts` yet)."""
    risk, why = risk_of(action, ctx.config)
    return judged(Facts(action, risk, why, ctx, scope, problem), approved=approved)


def judged(facts: Facts, *, approved: bool = False) -> Verdict:
    """Decide execute / queue / record / refuse for one action, from its facts.

    `scope` is what the incident's evidence names (invariant 12): a unit action outside
    it, or with no scope at all, is refused. `problem` is the scope lock's test of the
    unit's state just now: gone refuses (nothing is done to a healthy host), unknown
    never executes. `approved` is a human's approval being carried out: it replaces the
    autonomy matrix, but protected units, the scope lock and rate limits still apply
    (invariant 5), and `observe` and a pause still act on nothing. An action a person
    trusted (`trusted_actions`) executes where the matrix would queue it, under the
    same checks; `observe` still acts on nothing. A backup unit is never started by
    itself unless trusted by its exact name (`_backup`).
    """
    action, ctx, scope, problem = facts.action, facts.context, facts.scope, facts.problem
    risk, why = facts.risk, facts.why
    autonomy = effective_autonomy(ctx.config, ctx.breaker)

    def verdict(outcome: Outcome, reason: str, *, limited: bool = False) -> Verdict:
        return Verdict(
            outcome=outcome, risk=risk, reason=reason, autonomy=autonomy, rate_limited=limited
        )

    if risk is Risk.FORBIDDEN:
        return verdict(Outcome.REFUSE, f"refused: {why}; never acted on at any autonomy level")
    if isinstance(action, PATCH_ACTIONS):
        if autonomy is AutonomyLevel.OBSERVE:
            return verdict(Outcome.RECORD, f"observe: would queue for a human ({why})")
        return verdict(Outcome.QUEUE, f"queued for a human: {why}; never executed")
    outside = out_of_scope(action, scope)
    if outside is not None:
        return verdict(Outcome.REFUSE, f"refused, out of scope: {outside}")
    if autonomy is AutonomyLevel.OBSERVE:
        prefix = "approved, but " if approved else ""
        return verdict(Outcome.RECORD, f"{prefix}observe mode acts on nothing ({risk} risk: {why})")

    unit_action = isinstance(action, UNIT_ACTIONS)
    if unit_action and problem is not None and problem.present is False:
        return verdict(Outcome.REFUSE, f"the problem is no longer there: {problem.reason}")

    limited = rate_limit(action, ctx)
    if limited:
        return verdict(Outcome.REFUSE, limited, limited=True)

    look = None if approved else _protected_look(action, ctx.config)
    if look is not None:
        return verdict(Outcome.QUEUE, f"{look} ({why})")
    outcome, reason = _matrix(autonomy, risk, why, ctx.breaker, approved=approved)
    if outcome is Outcome.QUEUE:
        outcome, reason = _trusted(action, ctx, (risk, why), (outcome, reason))
    if outcome is not Outcome.EXECUTE:
        return verdict(outcome, reason)

    hold = _hold(action, ctx, approved=approved, problem=problem) if unit_action else None
    if hold is not None:
        return verdict(Outcome.RECORD if approved else Outcome.QUEUE, hold)
    if ctx.pause is not None and ctx.pause.active(ctx.now):
        return verdict(Outcome.RECORD, f"{ctx.pause.describe()}; would {reason}")
    return verdict(outcome, reason)


def _protected_look(action: Action, config: Config) -> str | None:
    """A read-only look at a protected unit is queued for a person: that unit's trouble is
    theirs to act on, so they read it (by approving it), rather than it running unseen."""
    if not isinstance(action, Investigate) or action.target == "host":
        return None
    guarded = config.protection(action.target)
    if guarded is None:
        return None
    return (
        f"queued for a person: {action.target} is protected ({guarded.name}); "
        "the sidecar only looks"
    )


def held_for_human(verdict: Verdict, reason: str) -> Verdict:
    """An automatic EXECUTE verdict turned into QUEUE: something outside the policy's
    inputs (the fleet's blast radius, a suppression) says a person should decide. Only
    ever toward safety: any other verdict is returned unchanged."""
    if verdict.outcome is not Outcome.EXECUTE:
        return verdict
    return verdict.model_copy(
        update={"outcome": Outcome.QUEUE, "reason": f"queued for a human: {reason}"}
    )


def suppressed_verdict(verdict: Verdict, suppression: Suppression, action: Action) -> Verdict:
    """Invariant 14, toward safety only: a suppressed fix that would have run or been
    queued is recorded instead, and the reason says why, what to look at instead, until
    when, and how a person lifts it. A refusal stays a refusal."""
    if verdict.outcome not in (Outcome.EXECUTE, Outcome.QUEUE):
        return verdict
    look = investigation_instead(action).diagnostic
    instead = look.tool + (f" {action.target}" if action.target != "host" else "")
    reason = (
        f"suppressed: {describe_action(action)} for {suppression.signature}: "
        f"{suppression.why}; not proposed as an action until "
        f"{suppression.until:%Y-%m-%d %H:%M} UTC - investigate instead ({instead}); "
        f"`macha-obs learn clear {suppression.signature}` lifts it"
    )
    return verdict.model_copy(
        update={"outcome": Outcome.RECORD, "reason": reason, "suppressed": True}
    )


def shadow_outcome(facts: Facts, *, suppressed: Suppression | None) -> Outcome:
    """What the sidecar would have done at auto-safe, with no per-action trust: the same
    judgement (scope lock, problem test, rate limits, breaker, pause) of the same facts
    at that level. The risk stands: it reads the protected classes, not these two."""
    ctx = facts.context
    config = ctx.config.model_copy(
        update={"autonomy_level": AutonomyLevel.AUTO_SAFE, "trusted_actions": ()}
    )
    shadow = judged(replace(facts, context=replace(ctx, config=config)))
    if suppressed is not None:
        shadow = suppressed_verdict(shadow, suppressed, facts.action)
    return shadow.outcome


def _matrix(
    autonomy: AutonomyLevel, risk: Risk, why: str, breaker: BreakerState, *, approved: bool
) -> tuple[Outcome, str]:
    """Invariant 4: what the autonomy level does with this risk (a human's approval aside)."""
    if approved:
        return Outcome.EXECUTE, f"approved by a human ({risk} risk: {why})"
    if risk in _AUTO_EXECUTES[autonomy]:
        return Outcome.EXECUTE, f"{autonomy} executes {risk} risk: {why}"
    breaker_note = f"; breaker open ({breaker.reason})" if breaker.open else ""
    return (
        Outcome.QUEUE,
        f"{autonomy} does not execute {risk} risk by itself; queued for approval "
        f"({why}){breaker_note}",
    )


# What per-action trust may lift: never high risk (mounts, rebuilds that switch,
# rollbacks are a human's whatever is configured), never past an open breaker.
_TRUSTABLE_RISKS = frozenset({Risk.LOW, Risk.MEDIUM})


def trusted_entry(action: Action, config: Config) -> str | None:
    """The `trusted_actions` entry a person wrote that covers `action`, or None."""
    for entry in config.trusted_actions:
        kind, _, glob = entry.partition(":")
        if kind == action.kind and (not glob or fnmatch.fnmatchcase(action.target, glob)):
            return entry
    return None


def _trusted(
    action: Action,
    ctx: PolicyContext,
    risked: tuple[Risk, str],
    queued: tuple[Outcome, str],
) -> tuple[Outcome, str]:
    """Per-action trust granted by a person (invariant 14): an action a
    `trusted_actions` entry covers executes below the autonomy level. Observe never
    gets here (it acts on nothing); protected units, the scope lock and rate limits
    were applied before, the start-limit hold and a pause are applied after."""
    risk, why = risked
    entry = trusted_entry(action, ctx.config)
    if entry is None or risk not in _TRUSTABLE_RISKS:
        return queued
    if ctx.breaker.open:
        return queued[0], f"{queued[1]}; trusted_actions entry {entry!r} waits for the breaker"
    return Outcome.EXECUTE, f"trusted by a person (trusted_actions {entry!r}; {risk} risk: {why})"


def _backup(action: Action, config: Config) -> str | None:
    """A backup (a unit `backup_units` names) is started, restarted or reset only by a
    person, at every autonomy level, unless `trusted_actions` names that very action on
    that very unit ("start_unit:restic-backups-offsite.service"; a glob does not count)."""
    if not isinstance(action, RestartUnit | StartUnit | ResetFailed):
        return None
    if not any(fnmatch.fnmatchcase(action.unit, g) for g in config.backup_units):
        return None
    exact = f"{action.kind}:{action.unit}"
    if exact in config.trusted_actions:
        return None
    return (
        f"queued for a person: {action.unit} is a backup (backup_units); a backup runs by "
        f"itself only where trusted_actions names {exact!r} exactly"
    )


def _hold(
    action: Action, ctx: PolicyContext, *, approved: bool, problem: Confirmation | None
) -> str | None:
    """Why a unit action that would execute must wait for a human (or, approved, for a
    moment when the problem can be confirmed), or None."""
    backup = None if approved else _backup(action, ctx.config)
    if backup is not None:
        return backup
    if problem is None or problem.present is None:
        seen = problem.reason if problem is not None else "nobody looked"
        return f"the problem cannot be confirmed now ({seen}); not executed"
    if problem.start_limit and not approved and not ctx.config.auto_reset_start_limit:
        return (
            f"{problem.reason}: systemd's start limit is its author's 'stop trying'; "
            "overriding it is for a human (auto_reset_start_limit = true allows it)"
        )
    return None


_AUTO_EXECUTES: dict[AutonomyLevel, frozenset[Risk]] = {
    AutonomyLevel.OBSERVE: frozenset(),
    AutonomyLevel.SUGGEST: frozenset(),
    AutonomyLevel.AUTO_SAFE: frozenset({Risk.LOW}),
    AutonomyLevel.AUTO_FULL: frozenset({Risk.LOW, Risk.MEDIUM}),
}
