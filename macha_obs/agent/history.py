"""Past decisions as context: what people decided about the same problem before, and what
worked, as prompt lines and as the runbooks' order.

The record itself (models/learning.py, kept by the store) is looked up through one seam,
`History`: a signature in, its per-fix records out. Pure apart from that seam.

Ordering rule, used by the runbooks: a fix that was verified more often than it failed
comes first, then the one people rejected less, then the runbooks' own order. The
verified ratio is smoothed, (verified + 1) / (ran + 2), so a fix never run ranks 0.5:
above one that failed every time, below one that held every time, and one success does
not outrank a long record. Ordering is a permutation: it never adds a fix the runbook
would not propose and never removes one (suppression is the policy's and the store's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from macha_obs.agent.redact import redact
from macha_obs.models import (
    Action,
    FixKey,
    FixRecord,
    Incident,
    JournalVacuum,
    Proposal,
    RestartUnit,
    Signature,
    signature_of,
)

History = Callable[[Signature], Sequence[FixRecord]]

# Lines offered to the prompt (best first); the prompt's budget may keep fewer.
HISTORY_LINES = 6
REASON_CHARS = 60  # of one rejection reason, after redaction
REASONS_SHOWN = 2  # the newest ones


def no_history(_signature: Signature) -> Sequence[FixRecord]:
    """The seam when nothing is recorded (tests, `macha-obs analyze` without a store)."""
    return ()


def incident_signatures(incident: Incident, proposals: Iterable[Proposal]) -> list[Signature]:
    """The problems the incident is about, as the learning record keys them
    (models/learning.signature_of): those the proposals answer, then those of a fix on
    each unit it names and of a host-wide fix (a model may propose what no runbook
    does); first-seen order, without repeats."""
    actions: list[Action] = [p.action for p in proposals]
    actions += [RestartUnit(unit=u) for u in incident.units]
    actions.append(JournalVacuum())
    seen: dict[Signature, None] = {}
    for action in actions:
        seen.setdefault(signature_of(incident, action), None)
    return list(seen)


def records_for(
    incident: Incident, proposals: Sequence[Proposal], history: History
) -> list[FixRecord]:
    """Every record for the problems the proposals answer, most decided-about first."""
    records = [r for s in incident_signatures(incident, proposals) for r in history(s)]
    return sorted(records, key=lambda r: -(r.decided + r.ran + r.auto_executed))


def _reason(text: str) -> str:
    # redacted before it is shortened: a cut secret would no longer match its pattern
    cleaned = " ".join(redact(text).split())
    return cleaned if len(cleaned) <= REASON_CHARS else cleaned[: REASON_CHARS - 1] + "…"


def describe(record: FixRecord) -> str:
    """One line a model reads: `unit_failed:a.service → restart_unit a.service: approved 3,
    rejected 1 ('maintenance window'), verified 3/3`. The reasons are a person's words:
    redacted here, and cleaned and fenced again by the prompt like any untrusted text."""
    parts: list[str] = []
    if record.approved:
        parts.append(f"approved {record.approved}")
    if record.rejected:
        reasons = [_reason(r) for r in record.rejection_reasons[-REASONS_SHOWN:] if r.strip()]
        said = f" ({'; '.join(repr(r) for r in reasons)})" if reasons else ""
        parts.append(f"rejected {record.rejected}{said}")
    if record.auto_executed:
        parts.append(f"ran automatically {record.auto_executed}")
    if record.expired:
        parts.append(f"expired undecided {record.expired}")
    if record.fixed_elsewhere:
        parts.append(f"fixed without it {record.fixed_elsewhere}")
    if record.ran:
        parts.append(f"verified {record.verified}/{record.ran}")
    if not parts:
        parts.append(f"proposed {record.proposed}, no decision yet")
    return f"{record.signature} → {record.fix}: {', '.join(parts)}"


def history_lines(incident: Incident, proposals: Sequence[Proposal], history: History) -> list[str]:
    """The prompt's summary of past decisions about this incident's problems."""
    return [describe(r) for r in records_for(incident, proposals, history)[:HISTORY_LINES]]


def worked_score(record: FixRecord | None) -> tuple[float, int]:
    """Sort key (ascending = better): smoothed verified ratio, then fewer rejections."""
    if record is None:
        return (-0.5, 0)
    return (-(record.verified + 1) / (record.ran + 2), record.rejected)


def order_by_outcomes(
    incident: Incident, proposals: Sequence[Proposal], history: History
) -> list[Proposal]:
    """The same proposals, what has worked on this host first (module docstring)."""
    cache: dict[Signature, dict[FixKey, FixRecord]] = {}

    def record(proposal: Proposal) -> FixRecord | None:
        signature = signature_of(incident, proposal.action)
        if signature not in cache:
            cache[signature] = {r.fix: r for r in history(signature)}
        return cache[signature].get(FixKey.of(proposal.action))

    scored = [(worked_score(record(p)), i, p) for i, p in enumerate(proposals)]
    return [p for _, _, p in sorted(scored, key=lambda t: (t[0], t[1]))]
