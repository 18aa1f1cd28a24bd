"""The loop: triggers → incidents → analysis → policy → execute/queue/record → verify → audit.

Three triggers wake one worker thread: a new snapshot (the timer), an incident from the
webhook, and a unit entering `failed` on D-Bus. The worker serialises every cycle, so two
triggers can never act on the same unit at once. Each cycle:

1. expire stale approvals; settle alert-driven verifications whose window ended;
2. for every incident whose latest revision was not analysed: leave units that systemd
   is still restarting to systemd; analyse the rest once; judge and carry out each
   proposal through the Remediator (which writes intent, outcome and audit lines);
3. a fix that failed verification is escalated: queued for a human with its evidence.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from macha_obs.config import Config
from macha_obs.execute.dbus_events import UnitEvent
from macha_obs.incidents import OPEN, IncidentStore, Queued, sync_findings
from macha_obs.models import (
    FINDING_SOURCE,
    UNIT_ACTIONS,
    ApprovalStatus,
    Decision,
    Finding,
    FindingKind,
    Incident,
    Outcome,
    Proposal,
    Severity,
    Snapshot,
    UnitState,
    Verdict,
    describe_action,
)
from macha_obs.pause import PauseBook
from macha_obs.remediate import Handled, Remediator, queue_reason
from macha_obs.scope import Scope, confirm, systemd_busy
from macha_obs.selfmetrics import LoopStats
from macha_obs.store import Store

log = logging.getLogger(__name__)

MAX_UNITS_LOOKED_UP = 32
LAST_CYCLE_KEY = "last_cycle"


class Analyze(Protocol):
    def analyze(
        self,
        incident: Incident,
        *,
        unit_status: Mapping[str, str] | None = None,
        journals: Mapping[str, Sequence[str]] | None = None,
    ) -> Decision: ...


@dataclass
class Verification:
    """An alert-driven fix waits for its alert to resolve."""

    incident_id: str
    action_id: int
    proposal: Proposal
    deadline: float


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


def unknown_kinds(snapshot: Snapshot) -> frozenset[FindingKind]:
    """Finding kinds whose collector failed in this snapshot: what they say is unknown."""
    failed = {name for name, run in snapshot.collectors.items() if not run.success}
    return frozenset(k for k, source in FINDING_SOURCE.items() if source in failed)


def unit_failed_finding(event: UnitEvent) -> Finding:
    return Finding(
        kind=FindingKind.UNIT_FAILED,
        severity=Severity.CRITICAL,
        subject=event.unit,
        unit=event.unit,
        summary=f"{event.unit} entered failed ({event.sub_state})",
        details={"source": "dbus", "sub_state": event.sub_state},
    )


class Orchestrator:
    def __init__(
        self,
        config: Config,
        store: Store,
        incidents: IncidentStore,
        analyzer: Analyze,
        remediator: Remediator,
        *,
        snapshot: Callable[[], Snapshot | None],
        stats: LoopStats | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.incidents = incidents
        self.analyzer = analyzer
        self.remediator = remediator
        self.snapshot = snapshot
        self.stats = stats or LoopStats()
        self.clock = clock
        self.monotonic = monotonic
        self.verifications: list[Verification] = []
        self.pauses = PauseBook(store)
        self._cycle = threading.Lock()
        self._wake = threading.Event()
        self._triggers: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.alive_at = monotonic()  # the watchdog's proof of life

    # ------------------------------------------------------------ triggers

    def wake(self, trigger: str) -> None:
        self._triggers.append(trigger)
        self._wake.set()

    def note_snapshot(self, snapshot: Snapshot) -> None:
        """CollectionLoop listener: apply the findings, run a cycle (the timer trigger)."""
        sync_findings(self.incidents, snapshot.findings, unknown_kinds(snapshot))
        self.wake("timer")

    def note_unit_event(self, event: UnitEvent) -> None:
        """UnitWatcher handler: a unit that entered failed is an incident at once."""
        if event.active_state != "failed":
            return
        finding = unit_failed_finding(event)
        current = self.snapshot()
        others = [f for f in (current.findings if current else []) if f.unit == event.unit]
        keep = [f for f in others if f.kind is not FindingKind.UNIT_FAILED]
        incident_id, changed = self.incidents.open_for_findings(event.unit, [finding, *keep])
        if not changed:
            self.incidents.touch(incident_id)  # failed again: look again
        self.wake("event")

    def note_webhook(self) -> None:
        self.wake("alert")

    # ------------------------------------------------------------ the worker

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="macha-orchestrator", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 8.0) -> bool:
        """Ask the worker to stop after the step in flight; False if it did not in time."""
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def healthy(self) -> bool:
        """For the watchdog: the worker runs and is not stuck far beyond a cycle's bound."""
        if self._thread is None or not self._thread.is_alive():
            return False
        bound = self.config.check_interval + 10 * (self.config.verify_timeout + 30)
        return self.monotonic() - self.alive_at < bound

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.config.check_interval)
            self._wake.clear()
            self.alive_at = self.monotonic()
            if self._stop.is_set():
                return
            triggers, self._triggers = self._triggers, []
            try:
                self.run_cycle("+".join(sorted(set(triggers))) or "timer")
            except Exception as exc:  # a bug in one cycle must not end the loop
                log.exception("cycle failed")
                with self.stats.lock:
                    self.stats.cycle_errors += 1
                    self.stats.failing_cycles += 1
                    self.stats.last_cycle_error = f"{type(exc).__name__}: {exc}"[:300]
            else:
                with self.stats.lock:
                    self.stats.failing_cycles = 0
            self.alive_at = self.monotonic()

    # ------------------------------------------------------------ one cycle

    def run_cycle(self, trigger: str = "manual") -> CycleReport:
        with self._cycle:
            report = CycleReport(trigger=trigger, started_at=self.clock())
            began = self.monotonic()
            report.expired = self.store.expire_approvals()
            if self.pauses.expire() is not None:
                # what was only recorded while paused is decided anew from the host now
                self.incidents.reopen_all()
            self._close_confirmed()
            self._settle_verifications(report)
            for incident_id in self.incidents.pending_analysis():
                if self._stop.is_set():
                    break
                self._handle_incident(incident_id, report)
            self._reconcile_queue(report)
            report.duration_seconds = self.monotonic() - began
            self._record(report)
            return report

    def _handle_incident(self, incident_id: str, report: CycleReport) -> None:
        state = self.incidents.get(incident_id)
        if state is None or state.status != OPEN:
            return
        incident = state.incident
        statuses = self._unit_states(incident.units)
        busy = [u for u, s in statuses.items() if systemd_busy(s)]
        if busy and len(busy) == len(incident.units):
            # Left pending: when systemd gives up, the unit's failed event wakes us again.
            report.deferred.append(incident.id)
            self.store.audit_decision(
                {
                    "event": "deferred",
                    "incident_id": incident.id,
                    "reason": f"systemd is restarting {', '.join(busy)}; left to systemd",
                }
            )
            return
        decision = self.analyzer.analyze(
            incident,
            unit_status={u: _describe(s) for u, s in statuses.items()},
            journals=self._journals(incident.units),
        )
        report.analysed.append((incident, decision))
        self.stats.count_decision(decision)
        scope = Scope.of([incident])
        # 1. judge every proposal (the policy applies the scope lock: a unit the evidence
        #    does not name, or whose problem is no longer confirmed, is refused)
        judged: list[tuple[Proposal, Verdict]] = []
        for proposal in decision.proposals:
            unit_state = statuses.get(getattr(proposal.action, "unit", ""))
            if (
                isinstance(proposal.action, UNIT_ACTIONS)
                and unit_state is not None
                and systemd_busy(unit_state)
            ):
                report.deferred.append(f"{incident.id}:{describe_action(proposal.action)}")
                continue
            judged.append((proposal, self.remediator.decide(incident.id, proposal, scope)))
        # 2. queue what waits for a human and mark the incident analysed, in one
        #    transaction: a crash leaves both or neither
        queued = [(p, v) for p, v in judged if v.outcome is Outcome.QUEUE]
        ids = self.incidents.settle_analysis(
            incident.id,
            state.revision,
            [Queued(p.action, v.risk, queue_reason(v, p), tuple(p.evidence)) for p, v in queued],
            self.config.approval_ttl,
        )
        approvals = dict(zip((id(p) for p, _ in queued), ids, strict=True))
        # 3. carry out what the policy lets run, each judged once more just before
        for proposal, verdict in judged:
            if verdict.outcome is Outcome.EXECUTE:
                handled = self.remediator.carry_out(incident.id, proposal, scope)
            elif id(proposal) in approvals:
                handled = Handled(
                    verdict, approval=self.store.get_approval(approvals[id(proposal)])
                )
            else:
                handled = Handled(verdict)
            report.handled.append((incident.id, proposal, handled))
            self.stats.count_handled(proposal.action, handled.verdict, handled.result)
            self._follow_up(incident, proposal, handled, report)

    def _follow_up(
        self, incident: Incident, proposal: Proposal, handled: Handled, report: CycleReport
    ) -> None:
        if handled.verdict.outcome is not Outcome.EXECUTE or handled.result is None:
            return
        if not handled.result.verified:
            self._escalate(incident.id, proposal, handled.result.detail, report)
        elif incident.source == "alert" and handled.action_id is not None:
            self.verifications.append(
                Verification(
                    incident.id,
                    handled.action_id,
                    proposal,
                    self.clock() + self.config.alert_verify_window,
                )
            )

    def _settle_verifications(self, report: CycleReport) -> None:
        """Alert-driven fixes: the alert resolved in time, or the fix did not work."""
        waiting: list[Verification] = []
        for v in self.verifications:
            state = self.incidents.get(v.incident_id)
            if state is None or state.status != OPEN:
                self.store.audit_action(
                    {
                        "event": "alert_resolved",
                        "incident_id": v.incident_id,
                        "action_id": v.action_id,
                    }
                )
                continue
            if self.clock() < v.deadline:
                waiting.append(v)
                continue
            self.store.record_verification(v.action_id, ok=False)
            self.remediator.note_failed_verification(v.action_id)
            detail = f"the alert did not resolve within {self.config.alert_verify_window:g}s"
            self._escalate(v.incident_id, v.proposal, detail, report)
        self.verifications = waiting

    def _escalate(
        self, incident_id: str, proposal: Proposal, detail: str, report: CycleReport
    ) -> None:
        """A fix that did not hold goes to a human, with what was seen."""
        risk = self.remediator.risk(proposal.action)
        approval = self.store.enqueue(
            incident_id,
            proposal.action,
            risk=risk,
            reason=f"escalated: automatic {describe_action(proposal.action)} failed "
            f"verification ({detail}); a human should look before it is tried again",
            evidence=[detail[:200], *proposal.evidence][:5],
            ttl=self.config.approval_ttl,
        )
        report.escalated.append(approval.id)
        self.stats.escalations += 1
        self.store.audit_decision(
            {
                "event": "escalated",
                "incident_id": incident_id,
                "approval_id": approval.id,
                "reason": detail,
            }
        )

    def _close_confirmed(self) -> None:
        """An alert incident about units whose alerts all resolved closes once systemd
        confirms none of its units is failed (or being changed); otherwise it stays
        open, and its findings keep it handled."""
        for state in self.incidents.open_but_quiet():
            seen = {u: self.remediator.unit_state(u) for u in state.incident.units}
            waiting = [
                u
                for u, s in seen.items()
                if s is None or s.active_state == "failed" or systemd_busy(s)
            ]
            if waiting:
                continue
            self.incidents.resolve(state.incident.id)
            self.store.audit_decision(
                {
                    "event": "closed",
                    "incident_id": state.incident.id,
                    "reason": "its alerts resolved and systemd confirms "
                    + ", ".join(f"{u} is {s.active_state}" for u, s in seen.items() if s),
                }
            )

    def _reconcile_queue(self, report: CycleReport) -> None:
        """Cancel a pending item only when its problem is confirmed gone, by the test the
        scope lock uses: for a unit, systemd's state (a resolved alert is a hint to look,
        never proof by itself); otherwise every incident it carries has resolved. A
        state that cannot be read now cancels nothing."""
        for approval in self.store.list_approvals({ApprovalStatus.PENDING}):
            action = approval.action
            if isinstance(action, UNIT_ACTIONS):
                scope = self.incidents.scope_of(approval.incident_ids)
                state = self.remediator.unit_state(action.unit)
                seen = confirm(action.unit, state, scope)
                if seen.present is not False:
                    continue
                why = f"the problem is gone: {seen.reason}"
            elif any(self.incidents.is_open(i) for i in approval.incident_ids):
                continue
            else:
                why = "the problem is gone: every incident it was queued for has resolved"
            if self.store.cancel_approval(approval.id, why):
                report.cancelled.append(approval.id)
                self.store.audit_decision(
                    {
                        "event": "cancelled",
                        "incident_id": approval.incident_id,
                        "approval_id": approval.id,
                        "label": describe_action(action),
                        "reason": why,
                    }
                )

    # ------------------------------------------------------------ context

    def _unit_states(self, units: Sequence[str]) -> dict[str, UnitState]:
        """systemd's state of an incident's units, for its analysis: at most
        MAX_UNITS_LOOKED_UP of them, so one huge alert group cannot hold the next
        incident behind thousands of D-Bus calls (a proposal's own unit is always looked
        up again when it is judged)."""
        states: dict[str, UnitState] = {}
        if len(units) > MAX_UNITS_LOOKED_UP:
            log.warning(
                "an incident names %d units; looking up the first %d",
                len(units),
                MAX_UNITS_LOOKED_UP,
            )
        for unit in units[:MAX_UNITS_LOOKED_UP]:
            try:
                states[unit] = self.remediator.executor.unit_state(unit)
            except Exception as exc:  # unknown state: never counts as busy or healthy
                log.warning("cannot read state of %s: %s", unit, exc)
        return states

    def _journals(self, units: Sequence[str]) -> dict[str, list[str]]:
        snap = self.snapshot()
        if snap is None or snap.journal is None:
            return {}
        return {u: snap.journal.recent_messages.get(u, []) for u in units}

    def _record(self, report: CycleReport) -> None:
        self.stats.note_cycle(report.started_at, report.duration_seconds)
        summary = {
            "at": report.started_at,
            "trigger": report.trigger,
            "duration_seconds": round(report.duration_seconds, 4),
            "analysed": [i.id for i, _ in report.analysed],
            "handled": [
                {"incident_id": i, "action": describe_action(p.action), "outcome": h.summary}
                for i, p, h in report.handled
            ],
            "deferred": report.deferred,
            "escalated": report.escalated,
            "cancelled": report.cancelled,
        }
        self.store.set_meta(LAST_CYCLE_KEY, json.dumps(summary))
        if report.handled or report.escalated or report.deferred or report.cancelled:
            log.info("cycle %s: %s", report.trigger, json.dumps(summary))


def _describe(state: UnitState) -> str:
    return (
        f"{state.active_state}/{state.sub_state} (load {state.load_state}, result "
        f"{state.result or '-'}, restarts {state.n_restarts})"
    )
