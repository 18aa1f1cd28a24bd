"""What one cycle of the action lane did (what was analysed, handled, deferred,
escalated), as the CLI prints it and status.py records it; and the small pure readings
of the host the triage shares (orchestrator.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from macha_obs.models import (
    FINDING_SOURCE,
    UNIT_ACTIONS,
    Decision,
    FindingKind,
    Incident,
    Proposal,
    Snapshot,
    UnitState,
    describe_action,
)
from macha_obs.remediate.handled import Handled


@dataclass
class CycleReport:
    trigger: str
    started_at: float
    duration_seconds: float = 0.0
    analysed: list[tuple[Incident, Decision]] = field(default_factory=list)
    handled: list[tuple[str, Proposal, Handled]] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    escalated: list[int] = field(default_factory=list)
    expired: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The cycle as the `last_cycle` meta record keeps it (JSON)."""
        return {
            "at": self.started_at,
            "trigger": self.trigger,
            "duration_seconds": round(self.duration_seconds, 4),
            "analysed": [i.id for i, _ in self.analysed],
            "handled": [
                {"incident_id": i, "action": describe_action(p.action), "outcome": h.summary}
                for i, p, h in self.handled
            ],
            "deferred": self.deferred,
            "escalated": self.escalated,
            "cancelled": self.cancelled,
        }


def unknown_kinds(snapshot: Snapshot) -> frozenset[FindingKind]:
    """Finding kinds whose collector failed in this snapshot: what they say is unknown."""
    failed = {name for name, run in snapshot.collectors.items() if not run.success}
    return frozenset(k for k, source in FINDING_SOURCE.items() if source in failed)


def units_of(proposals: Sequence[Proposal]) -> list[str]:
    return [p.action.unit for p in proposals if isinstance(p.action, UNIT_ACTIONS)]


def describe_state(state: UnitState) -> str:
    """systemd's word on a unit, as the runbooks and the model read it."""
    return (
        f"{state.active_state}/{state.sub_state} (load {state.load_state}, result "
        f"{state.result or '-'}, restarts {state.n_restarts})"
    )
