"""What the operator taught the sidecar, put into words: the outcome table, the agreement
between a person and auto-safe, the fixes a person could trust, and what is suppressed.

Read by `macha-obs learn`, `macha-approve list/show` (`history_line`), the approvals page
and the metrics. It only reads and reports: trust is granted by a person editing the
config (invariant 14); the exact line to add is printed, never written.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from macha_obs.config import Config, trust_refusal
from macha_obs.intake.incidents import IncidentStore
from macha_obs.models import (
    Approval,
    FixKey,
    FixRecord,
    Incident,
    Signature,
    Suppression,
    fix_of,
    learns_from,
    parse_action,
    signature_of,
)
from macha_obs.policy.judge import trusted_entry
from macha_obs.policy.risk import risk_of
from macha_obs.store import Outcomes, Store

# A fix becomes a candidate for per-action trust after this many approvals, every one
# of its runs verified, and never rejected or failing.
CANDIDATE_MIN_APPROVALS = 3


@dataclass(frozen=True)
class Agreement:
    """Shadow scoring: a person's decisions that agreed with what auto-safe would do."""

    agreed: int = 0
    disagreed: int = 0

    @property
    def total(self) -> int:
        return self.agreed + self.disagreed

    @property
    def rate(self) -> float | None:
        return self.agreed / self.total if self.total else None

    def describe(self) -> str:
        if not self.total:
            return "no scored decisions yet"
        return f"{self.agreed}/{self.total} agreed ({self.rate:.0%})"


@dataclass(frozen=True)
class Candidate:
    """A fix a person could trust, with the exact line that would do it."""

    fix: FixKey
    approved: int
    decided: int
    verified: int
    ran: int

    @property
    def config_line(self) -> str:
        return f'trusted_actions = ["{self.fix.entry}"]'

    @property
    def nixos_line(self) -> str:
        return f'services.macha-autonomous.settings.trusted_actions = [ "{self.fix.entry}" ];'

    def describe(self) -> str:
        return (
            f"{self.fix}: approved {self.approved}/{self.decided}, verified "
            f"{self.verified}/{self.ran} - to allow it, add `{self.config_line}` to your "
            f"config, or in NixOS `{self.nixos_line}`"
        )


@dataclass
class Learned:
    """Everything `macha-obs learn` shows."""

    records: list[FixRecord] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    suppressed: list[Suppression] = field(default_factory=list)
    agreement: Agreement = field(default_factory=Agreement)
    by_kind: dict[str, Agreement] = field(default_factory=dict)


def learned(outcomes: Outcomes, config: Config) -> Learned:
    """The table, the agreement, the candidates and the suppressions, from the store."""
    records = outcomes.fix_records()
    shadow: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for metric, kind, label, _unit, value in outcomes.learn_totals():
        if metric == "shadow":
            shadow[kind][0 if label == "true" else 1] += value
    by_kind = {k: Agreement(a, d) for k, (a, d) in sorted(shadow.items())}
    return Learned(
        records=records,
        candidates=candidates(records, config),
        suppressed=outcomes.suppressions(config),
        agreement=Agreement(
            sum(a.agreed for a in by_kind.values()), sum(a.disagreed for a in by_kind.values())
        ),
        by_kind=by_kind,
    )


def candidates(records: list[FixRecord], config: Config) -> list[Candidate]:
    """Fixes a person approved at least CANDIDATE_MIN_APPROVALS times (over every
    problem they answered), never rejected, every run verified; not already trusted,
    trustable at all (the config's own validator agrees), and not high risk."""
    by_fix: dict[FixKey, list[FixRecord]] = defaultdict(list)
    for record in records:
        by_fix[record.fix].append(record)
    found: list[Candidate] = []
    for fix, group in by_fix.items():
        approved = sum(r.approved for r in group)
        rejected = sum(r.rejected for r in group)
        verified = sum(r.verified for r in group)
        failed = sum(r.failed_verification for r in group)
        if approved < CANDIDATE_MIN_APPROVALS or rejected or failed or verified < approved:
            continue
        if not _trustable(fix, config):
            continue
        found.append(Candidate(fix, approved, approved + rejected, verified, verified + failed))
    return sorted(found, key=lambda c: (-c.approved, str(c.fix)))


def _trustable(fix: FixKey, config: Config) -> bool:
    try:
        action = parse_action(_action_data(fix))
    except ValueError:
        return False
    if not learns_from(action) or trusted_entry(action, config) is not None:
        return False
    if trust_refusal(fix.entry, config.protected_units) is not None:
        return False
    return risk_of(action, config)[0].value in ("low", "medium")


def _action_data(fix: FixKey) -> dict[str, Any]:
    if fix.kind in ("restart_unit", "start_unit", "reset_failed"):
        return {"kind": fix.kind, "unit": fix.target}
    return {"kind": fix.kind}


def signature_of_approval(store: Store, approval: Approval) -> Signature:
    state = IncidentStore(store).get(approval.incident_id)
    incident = state.incident if state is not None else Incident(id="-", source="manual")
    return signature_of(incident, approval.action)


def history_line(store: Store, approval: Approval) -> str | None:
    """What a person decided about this same fix for this same problem before, in one
    line for `macha-approve` and the approvals page; None when there is no history."""
    if not learns_from(approval.action):
        return None
    signature = signature_of_approval(store, approval)
    record = store.outcomes.fix_record(signature, fix_of(approval.action))
    if record is None:
        return None
    return describe_history(record)


def describe_history(record: FixRecord) -> str | None:
    """ "approved 12 times before, verified 12/12" and the rest that happened."""
    parts: list[str] = []
    if record.approved:
        parts.append(f"approved {_times(record.approved)} before")
    if record.rejected:
        last = record.rejection_reasons[-1] if record.rejection_reasons else ""
        parts.append(f"rejected {_times(record.rejected)}" + (f" (last: {last})" if last else ""))
    if record.auto_executed:
        parts.append(f"ran automatically {_times(record.auto_executed)}")
    if record.ran:
        parts.append(f"verified {record.verified}/{record.ran}")
    if record.expired:
        parts.append(f"expired {_times(record.expired)}")
    if record.fixed_elsewhere:
        parts.append(f"fixed without the sidecar {_times(record.fixed_elsewhere)}")
    if not parts:
        return None
    return f"{record.signature}: " + ", ".join(parts)


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


# ---------------------------------------------------------------- rendering


def render_text(learned_: Learned) -> str:
    """The whole table, then the agreement, the candidates and the suppressions."""
    lines = ["Outcomes by problem and fix:"]
    if not learned_.records:
        lines.append("  nothing learned yet")
    header = ("PROBLEM", "FIX", "PROP", "AUTO", "APPR", "REJ", "EXP", "ELSEWH", "VERIF", "FAIL")
    rows = [header] + [
        (
            str(r.signature),
            str(r.fix),
            *(
                str(v)
                for v in (
                    r.proposed,
                    r.auto_executed,
                    r.approved,
                    r.rejected,
                    r.expired,
                    r.fixed_elsewhere,
                    r.verified,
                    r.failed_verification,
                )
            ),
        )
        for r in learned_.records
    ]
    if learned_.records:
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines += [
            "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
    lines += ["", f"Agreement with auto-safe (suggest/observe): {learned_.agreement.describe()}"]
    lines += [f"  {kind}: {a.describe()}" for kind, a in learned_.by_kind.items()]
    lines += ["", "Candidates for per-action trust (a person decides; nothing is granted):"]
    lines += [f"  {c.describe()}" for c in learned_.candidates] or ["  none yet"]
    lines += ["", "Suppressed fixes (not proposed as actions; `macha-obs learn clear` lifts):"]
    lines += [
        f"  {s.fix} for {s.signature} until {s.until:%Y-%m-%d %H:%M} UTC: {s.why}"
        for s in learned_.suppressed
    ] or ["  none"]
    return "\n".join(lines)


def render_json(learned_: Learned) -> dict[str, Any]:
    def agreement(a: Agreement) -> dict[str, Any]:
        return {"agreed": a.agreed, "disagreed": a.disagreed, "total": a.total, "rate": a.rate}

    return {
        "records": [
            r.model_dump(mode="json")
            | {"signature": str(r.signature), "fix": str(r.fix), "entry": r.fix.entry}
            for r in learned_.records
        ],
        "agreement": agreement(learned_.agreement)
        | {"by_kind": {k: agreement(a) for k, a in learned_.by_kind.items()}},
        "candidates": [
            {
                "fix": str(c.fix),
                "entry": c.fix.entry,
                "approved": c.approved,
                "decided": c.decided,
                "verified": c.verified,
                "ran": c.ran,
                "config_line": c.config_line,
                "nixos_line": c.nixos_line,
                "text": c.describe(),
            }
            for c in learned_.candidates
        ],
        "suppressed": [
            {
                "signature": str(s.signature),
                "fix": str(s.fix),
                "since": s.since.isoformat(),
                "until": s.until.isoformat(),
                "why": s.why,
            }
            for s in learned_.suppressed
        ],
    }
