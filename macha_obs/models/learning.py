"""What the sidecar learns from its operator: per problem and fix, what became of it.

A *problem signature* says what was wrong and where (a finding kind or an alert name,
and the unit or mount it is about); a *fix key* says what was proposed (an action kind
and its target). For each (signature, fix) the store keeps a `FixRecord` of counts,
derived from the approvals queue and the action ledger (store/outcomes.py). A fix a
person keeps rejecting, or that keeps failing verification, is *suppressed* for a while
(`Suppression`): proposed only as an investigation until it lapses or a person clears
it (DESIGN.md invariant 14: the sidecar only ever moves trust toward safety).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from macha_obs.models.actions import (
    Action,
    DiskUsage,
    FailedUnits,
    Investigate,
    JournalTail,
    JournalVacuum,
    NixGc,
)
from macha_obs.models.findings import FindingKind
from macha_obs.models.incidents import Incident, Outcome
from macha_obs.models.ledger import ApprovalStatus

# Rejection reasons kept per record (newest last): enough to say why, never a history.
REASONS_KEPT = 5
# Disk findings are about a mount, whose subject is the mountpoint.
_MOUNT_KINDS = frozenset({FindingKind.DISK_FILLING, FindingKind.INODES_LOW})


class Signature(BaseModel):
    """What was wrong, and where: `unit_failed:nginx.service`, `DiskFilling:/var`,
    `journal_error_burst` (no subject)."""

    model_config = ConfigDict(frozen=True)

    problem: str = Field(min_length=1, max_length=200)
    subject: str = Field("", max_length=300)

    def __str__(self) -> str:
        return f"{self.problem}:{self.subject}" if self.subject else self.problem

    @classmethod
    def parse(cls, text: str) -> Signature:
        """The inverse of str(): the problem is everything before the first colon."""
        problem, _, subject = text.strip().partition(":")
        return cls(problem=problem, subject=subject)


class FixKey(BaseModel):
    """What was proposed: an action kind and its target ("host" for host-wide ones)."""

    model_config = ConfigDict(frozen=True)

    kind: str = Field(min_length=1, max_length=50)
    target: str = Field("host", max_length=300)

    @classmethod
    def of(cls, action: Action) -> FixKey:
        return cls(kind=action.kind, target=action.target)

    def __str__(self) -> str:
        return self.kind if self.target == "host" else f"{self.kind} {self.target}"

    @property
    def entry(self) -> str:
        """The `trusted_actions` entry that allows exactly this fix."""
        return self.kind if self.target == "host" else f"{self.kind}:{self.target}"


class LearnOutcome(StrEnum):
    """What became of one proposal (a record counts each)."""

    PROPOSED = "proposed"  # reached a person's queue or ran automatically
    AUTO_EXECUTED = "auto_executed"  # ran without a person (autonomy or trust)
    APPROVED = "approved"  # a person approved it (whatever happened next)
    REJECTED = "rejected"
    EXPIRED = "expired"  # nobody decided before its TTL
    FIXED_ELSEWHERE = "fixed_elsewhere"  # cancelled: healthy without the sidecar
    VERIFIED = "verified"  # it ran and held
    FAILED_VERIFICATION = "failed_verification"  # it ran and did not hold


class FixRecord(BaseModel):
    """Counts for one (signature, fix): what the operator and the host made of it."""

    signature: Signature
    fix: FixKey
    proposed: int = 0
    auto_executed: int = 0
    approved: int = 0
    rejected: int = 0
    expired: int = 0
    fixed_elsewhere: int = 0
    verified: int = 0
    failed_verification: int = 0
    # the last few rejection reasons, newest last, as the person wrote them (not
    # redacted: whoever puts them in a prompt redacts them)
    rejection_reasons: tuple[str, ...] = ()
    first_seen: datetime | None = None
    last_seen: datetime | None = None

    def count(self, outcome: LearnOutcome) -> int:
        return int(getattr(self, outcome.value))

    @property
    def decided(self) -> int:
        """Decisions a person made about it (approved or rejected)."""
        return self.approved + self.rejected

    @property
    def ran(self) -> int:
        """Times it ran and was verified either way."""
        return self.verified + self.failed_verification


class Suppression(BaseModel):
    """A fix not proposed as an action for `signature` until `until` (invariant 14)."""

    model_config = ConfigDict(frozen=True)

    signature: Signature
    fix: FixKey
    since: datetime
    until: datetime
    why: str = Field(max_length=500)

    def active(self, now: datetime) -> bool:
        return self.since <= now < self.until


def fix_of(action: Action) -> FixKey:
    return FixKey.of(action)


def learns_from(action: Action) -> bool:
    """A diagnostic is not a fix: nothing is learned or suppressed about it."""
    return not isinstance(action, Investigate)


def signature_of(incident: Incident, action: Action) -> Signature:
    """The problem a proposal answers: the incident's evidence about the action's target.

    A finding or firing alert naming the action's unit wins; otherwise (host-wide fixes
    such as space clean-ups, or no evidence naming the unit) the first finding, then the
    first alert. A finding gives its kind (and its unit, or its mountpoint for disk
    kinds), an alert its name and its unit (or `mountpoint` label). An incident with no
    evidence at all is `manual` on the action's target.
    """
    unit = getattr(action, "unit", None)
    found = _evidence(incident, unit) if unit is not None else None
    found = found or _evidence(incident, None)
    if found is not None:
        return found
    return Signature(problem="manual", subject="" if action.target == "host" else action.target)


def _evidence(incident: Incident, unit: str | None) -> Signature | None:
    """The first finding, then the first alert, about `unit` (None: about anything)."""
    for finding in incident.findings:
        if unit is None or finding.unit == unit:
            subject = finding.unit or (finding.subject if finding.kind in _MOUNT_KINDS else "")
            return Signature(problem=finding.kind.value, subject=subject)
    for alert in incident.alerts:
        if unit is None or alert.unit == unit:
            subject = alert.unit or alert.labels.get("mountpoint", "")
            return Signature(problem=alert.alertname or "alert", subject=subject[:300])
    return None


def suppression_of(
    signature: Signature,
    fix: FixKey,
    *,
    rejections: Sequence[datetime],
    failures: Sequence[datetime],
    after_rejections: int,
    after_failures: int,
    window: timedelta,
    now: datetime,
) -> Suppression | None:
    """Invariant 14, pure: a fix rejected `after_rejections` times (or failing
    verification `after_failures` times) within `window` is suppressed from the moment
    the last of those happened until `window` after it. The latest such lapse wins."""
    found: Suppression | None = None
    for times, needed, what in (
        (rejections, after_rejections, "rejected"),
        (failures, after_failures, "failed verification"),
    ):
        tripped = _tripped(sorted(times), needed, window)
        if tripped is None or now >= tripped + window:
            continue
        if found is None or tripped + window > found.until:
            count = sum(1 for t in times if tripped - window < t <= tripped)
            found = Suppression(
                signature=signature,
                fix=fix,
                since=tripped,
                until=tripped + window,
                why=f"{what} {count} times within {_span(window)} (threshold {needed})",
            )
    return found


def _tripped(times: Sequence[datetime], needed: int, window: timedelta) -> datetime | None:
    """The latest instant at which `needed` of `times` (sorted) fell within `window`."""
    latest: datetime | None = None
    for i in range(needed - 1, len(times)):
        if times[i] - times[i - needed + 1] < window:
            latest = times[i]
    return latest


def _span(window: timedelta) -> str:
    hours = window.total_seconds() / 3600
    return f"{hours / 24:g} days" if hours >= 48 else f"{hours:g} hours"


def investigation_instead(action: Action) -> Investigate:
    """What a suppressed fix becomes: a read-only look at the same target."""
    unit = getattr(action, "unit", None)
    if unit is not None:
        return Investigate(diagnostic=JournalTail(unit=unit))
    if isinstance(action, JournalVacuum | NixGc):
        return Investigate(diagnostic=DiskUsage())
    return Investigate(diagnostic=FailedUnits())


# ---------------------------------------------------------------- what an outcome says

# A queue item in one of these states is settled: its decision can be counted.
SETTLED = frozenset(
    {
        ApprovalStatus.EXECUTED,
        ApprovalStatus.FAILED,
        ApprovalStatus.REJECTED,
        ApprovalStatus.EXPIRED,
        ApprovalStatus.CANCELLED,
        ApprovalStatus.REFUSED,
        ApprovalStatus.ACKNOWLEDGED,
        ApprovalStatus.INTERRUPTED,
    }
)


def decision_outcomes(
    status: ApprovalStatus, *, by_person: bool, merged: bool
) -> list[LearnOutcome]:
    """What a settled item says: a person approved or rejected it, it expired, or the
    problem went away without the sidecar (cancelled as gone; merged items say nothing)."""
    match status:
        case ApprovalStatus.REJECTED:
            return [LearnOutcome.REJECTED]
        case ApprovalStatus.EXPIRED:
            return [LearnOutcome.EXPIRED]
        case ApprovalStatus.CANCELLED:
            if merged:
                return []
            gone = [LearnOutcome.FIXED_ELSEWHERE]
            return [LearnOutcome.APPROVED, *gone] if by_person else gone
        case _:
            return [LearnOutcome.APPROVED] if by_person else []


def shadow_agrees(
    shadow: str | None, status: ApprovalStatus, *, by_person: bool, merged: bool
) -> bool | None:
    """Shadow scoring: whether a person's decision agrees with what auto-safe would have
    done (`shadow`, a policy outcome); None when there is nothing to score (no shadow
    noted, nobody decided, or the item was merged into another)."""
    if shadow is None or not by_person:
        return None
    if status is ApprovalStatus.REJECTED:
        return shadow != Outcome.EXECUTE.value
    if status is ApprovalStatus.CANCELLED and merged:
        return None
    return shadow == Outcome.EXECUTE.value


def execution_outcomes(*, automatic: bool, status: str) -> list[LearnOutcome]:
    """An automatic execution is proposed and auto-executed; any fix that ran is then
    verified or failed verification (the executor's check on the host)."""
    outcomes = [LearnOutcome.PROPOSED, LearnOutcome.AUTO_EXECUTED] if automatic else []
    match status:
        case "succeeded":
            outcomes.append(LearnOutcome.VERIFIED)
        case "failed":
            outcomes.append(LearnOutcome.FAILED_VERIFICATION)
    return outcomes
