"""What the action lane writes down that is not an action: an incident left to systemd,
the fast lane's decision, an incident closed, the cycle's summary, and the retention
pass. The orchestrator triages; every ledger and audit write it causes goes through
here (or the remediator, for actions), never from the orchestrator to the store.
"""

from __future__ import annotations

from typing import Any, Protocol

from macha_obs.config import Config
from macha_obs.models import Decision
from macha_obs.remediate.pause import PauseBook
from macha_obs.remediate.status import note_cycle
from macha_obs.store import Store


class Recorder(Protocol):
    """The orchestrator's narrow view of the record (tests pass small fakes)."""

    def deferred(self, incident_id: str, reason: str) -> None: ...
    def decision(self, decision: Decision, *, lane: str) -> None: ...
    def closed(self, incident_id: str, reason: str) -> None: ...
    def cycle(self, summary: dict[str, Any]) -> None: ...
    def retain(self) -> None: ...
    def pause_expired(self) -> bool: ...


class CycleRecord:
    """The record the action lane keeps, on the store (invariant 10: each audited
    before the next step starts)."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.pauses = PauseBook(store)

    def deferred(self, incident_id: str, reason: str) -> None:
        """Left to systemd, which is still restarting the units; the event wakes us."""
        self.store.audit.audit_decision(
            {"event": "deferred", "incident_id": incident_id, "reason": reason}
        )

    def decision(self, decision: Decision, *, lane: str) -> None:
        self.store.audit.audit_decision(
            {**decision.model_dump(mode="json"), "event": "decision", "lane": lane}
        )

    def closed(self, incident_id: str, reason: str) -> None:
        self.store.audit.audit_decision(
            {"event": "closed", "incident_id": incident_id, "reason": reason}
        )

    def cycle(self, summary: dict[str, Any]) -> None:
        note_cycle(self.store.meta, summary)

    def retain(self) -> None:
        """Keep the state directory bounded (store/ and statedir/ do the work)."""
        self.store.retain(self.config)

    def pause_expired(self) -> bool:
        """A person's pause that ran out now (and is recorded as over)."""
        return self.pauses.expire() is not None
