"""Triage and two lanes: what each trigger means, and who acts on it, never behind a model.

A new snapshot (the timer), an incident from the webhook, or a unit entering `failed` on
D-Bus wakes the action lane. Each cycle: the queue's upkeep and alert-driven
verifications; the model answers the analysis lane (lanes.py) sent back; then every
incident whose latest revision was not analysed. Units systemd is still restarting are
left to it. When no model will be asked (runbooks-only, no model, runbooks-first and a
runbook knows the problem) the runbooks' answer is carried out whole; otherwise their
unit fixes run now (the fast lane) and the incident goes to the analysis lane, whose
answer can add to them, never hold them back. Only the action lane acts, so two fixes
never race on one unit. Judging, queueing, executing, verifying, escalating and the
breaker are the remediator's (remediate.py, verify.py). Without `start()` (macha-check,
tests) `run_cycle` runs both lanes inline.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from macha_obs.agent.runbooks import runbook_decision
from macha_obs.collect.systemd import unit_failed_finding
from macha_obs.config import Config
from macha_obs.intake.incidents import IncidentState, IncidentStore, Queued, sync_findings
from macha_obs.lanes import ActionLane, AnalysisLane, Analyze, Job
from macha_obs.metrics import LoopStats
from macha_obs.models import (
    UNIT_ACTIONS,
    Decision,
    FindingKind,
    Incident,
    Outcome,
    Proposal,
    Snapshot,
    UnitState,
    Verdict,
    describe_action,
    investigation_instead,
)
from macha_obs.policy.scope import Scope, systemd_busy
from macha_obs.remediate.cycle import CycleReport, describe_state, units_of, unknown_kinds
from macha_obs.remediate.record import CycleRecord
from macha_obs.remediate.remediator import Remediator, Settle
from macha_obs.store import Store
from macha_obs.store.incidents import OPEN
from macha_obs.systemd.events import UnitEvent

log = logging.getLogger(__name__)

MAX_UNITS_LOOKED_UP = 32


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
        self.incidents = incidents
        self.analyzer = analyzer
        self.remediator = remediator
        self.snapshot = snapshot
        self.stats = stats or LoopStats()
        self.clock = clock
        self.monotonic = monotonic
        self.record = CycleRecord(config, store)  # every write the lanes cause
        self.analysis = AnalysisLane(analyzer, lambda: self.wake("analysis"))
        bound = config.check_interval + 10 * (config.verify_timeout + 30)
        self.lane = ActionLane(self._guarded_cycle, config.check_interval, bound, monotonic)
        self._cycle = threading.Lock()
        self._retained_at: float | None = None

    # ------------------------------------------------------------ triggers

    def wake(self, trigger: str) -> None:
        self.lane.wake(trigger)

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

    # ------------------------------------------------------------ the lanes

    def start(self) -> None:
        self.analysis.start()
        self.lane.start()

    def stop(self, timeout: float = 8.0) -> bool:
        """Stop both lanes: the action lane after the step in flight (False if it did not
        in time); a model call in flight is abandoned (it acts on nothing)."""
        self.analysis.stop(timeout=0.5)
        return self.lane.stop(timeout)

    def healthy(self) -> bool:
        """For the watchdog: the action lane runs and is not stuck (a model call in the
        analysis lane never counts against it)."""
        return self.lane.healthy()

    def _guarded_cycle(self, trigger: str) -> None:
        try:
            self.run_cycle(trigger)
        except Exception as exc:  # a bug in one cycle must not end the loop
            log.exception("cycle failed")
            self._count_error(f"{type(exc).__name__}: {exc}")
        else:
            with self.stats.lock:
                self.stats.failing_cycles = 0

    def _count_error(self, text: str) -> None:
        with self.stats.lock:
            self.stats.cycle_errors += 1
            self.stats.failing_cycles += 1
            self.stats.last_cycle_error = text[:300]

    # ------------------------------------------------------------ one cycle

    def run_cycle(self, trigger: str = "manual") -> CycleReport:
        with self._cycle:
            report = CycleReport(trigger=trigger, started_at=self.clock())
            began = self.monotonic()
            # a `macha-approve` that died mid-action strands nothing until a restart
            self.remediator.recover_stranded()
            report.expired = self.remediator.expire_queue()
            if self.record.pause_expired():
                # what was only recorded while paused is decided anew from the host now
                self.incidents.reopen_all()
            self._close_confirmed()
            escalated = self.remediator.settle_verifications(self.incidents.is_open)
            self._note_escalations([a.id for a in escalated], report)
            self._take_answers(report)
            for incident_id in self.incidents.pending_analysis():
                if self.lane.stopping.is_set():
                    break
                self._triage(incident_id, report)
            if not self.analysis.started:
                self.analysis.run_pending()
                self._take_answers(report)
            report.cancelled = self.remediator.reconcile_queue(self.incidents)
            self._retain()
            report.duration_seconds = self.monotonic() - began
            self._record(report)
            return report

    def _retain(self) -> None:
        """Keep the state directory bounded, once per check_interval at most."""
        now = self.monotonic()
        if self._retained_at is None or now - self._retained_at >= self.config.check_interval:
            self._retained_at = now
            self.record.retain()

    def _triage(self, incident_id: str, report: CycleReport) -> None:
        state = self.incidents.get(incident_id)
        if state is None or state.status != OPEN:
            return
        if self.analysis.holds(incident_id, state.revision):
            return  # the model is looking at this revision; its answer comes back
        incident = state.incident
        statuses = self._unit_states(incident.units)
        busy = [u for u, s in statuses.items() if systemd_busy(s)]
        if busy and len(busy) == len(incident.units):
            # Left pending: when systemd gives up, the unit's failed event wakes us again.
            report.deferred.append(incident.id)
            self.record.deferred(
                incident.id, f"systemd is restarting {', '.join(busy)}; left to systemd"
            )
            return
        status_text = {u: describe_state(s) for u, s in statuses.items()}
        journals = self._journals(incident.units)
        runbooks = runbook_decision(incident, unit_status=status_text)
        if not self.analysis.needed(runbooks):
            decision = self.analyzer.analyze(incident, unit_status=status_text, journals=journals)
            self._conclude(state, state.revision, decision, statuses, kept=(), report=report)
            return
        # the fast lane, before the model is asked: the runbooks' fixes run now, and what
        # they propose for a person is queued (or, in observe, recorded) now
        fixes = runbooks.proposals
        fast: list[tuple[Proposal, Verdict]] = []
        if fixes:
            fast_decision = runbooks.model_copy(update={"proposals": fixes})
            self.record.decision(fast_decision, lane="fast")
            report.analysed.append((incident, fast_decision))
            self.stats.count_decision(fast_decision)
            fast = self._judge(incident, fixes, statuses, report)
            self._act(state, fast, settle=None, report=report)
            acted = units_of([p for p, v in fast if v.outcome is Outcome.EXECUTE])
            for unit, seen in self._unit_states(acted).items():
                status_text[unit] = describe_state(seen)  # the model sees the host as it is now
        job = Job(incident, state.revision, status_text, journals, tuple(fast))
        self.analysis.submit(job)

    def _take_answers(self, report: CycleReport) -> None:
        """The analysis lane's answers: carried out here, in the action lane. What the
        fast lane already judged is not judged again; what it left waiting is queued."""
        for job, decision in self.analysis.results():
            if decision is None:
                self._count_error(f"analysis of {job.incident.id} failed")
                continue
            state = self.incidents.get(job.incident.id)
            if state is None or state.status != OPEN:
                continue
            judged = {p.action.model_dump_json() for p, _ in job.fast}
            fresh = [p for p in decision.proposals if p.action.model_dump_json() not in judged]
            # what the fast lane queued or recorded is settled again (into the same item),
            # not reported twice
            kept = tuple((p, v) for p, v in job.fast if v.outcome is not Outcome.EXECUTE)
            answer = decision.model_copy(update={"proposals": fresh})
            statuses = self._unit_states(units_of(fresh))
            self._conclude(state, job.revision, answer, statuses, kept=kept, report=report)

    def _conclude(
        self,
        state: IncidentState,
        revision: int,
        decision: Decision,
        statuses: Mapping[str, UnitState],
        *,
        kept: Sequence[tuple[Proposal, Verdict]],
        report: CycleReport,
    ) -> None:
        """A complete analysis: judge its proposals, queue and mark the incident analysed
        in one step, carry out the rest (all through the remediator)."""
        incident = state.incident
        report.analysed.append((incident, decision))
        self.stats.count_decision(decision)
        judged = [*kept, *self._judge(incident, decision.proposals, statuses, report)]

        def settle(queued: Sequence[Queued]) -> list[int]:
            ttl = self.config.approval_ttl
            return self.incidents.settle_analysis(incident.id, revision, queued, ttl)

        self._act(state, judged, settle=settle, report=report, seen=kept)

    def _judge(
        self,
        incident: Incident,
        proposals: Sequence[Proposal],
        statuses: Mapping[str, UnitState],
        report: CycleReport,
    ) -> list[tuple[Proposal, Verdict]]:
        """Each proposal judged by the policy (which applies the scope lock: a unit the
        evidence does not name, or whose problem is no longer confirmed, is refused); a
        unit systemd is still restarting is left to systemd."""
        scope = Scope.of([incident])
        judged: list[tuple[Proposal, Verdict]] = []
        proposed = [p.action for p in proposals]
        for proposal in proposals:
            seen = statuses.get(getattr(proposal.action, "unit", ""))
            if isinstance(proposal.action, UNIT_ACTIONS) and seen and systemd_busy(seen):
                report.deferred.append(f"{incident.id}:{describe_action(proposal.action)}")
                continue
            verdict = self.remediator.decide(incident.id, proposal, scope)
            judged.append((proposal, verdict))
            if verdict.suppressed:  # invariant 14: the fix becomes an investigation
                look = investigation_instead(proposal.action)
                if look not in proposed:
                    proposed.append(look)
                    why = f"instead of a suppressed fix: {verdict.reason}"
                    stand_in = Proposal(action=look, reason=why[:500], evidence=proposal.evidence)
                    judged.append((stand_in, self.remediator.decide(incident.id, stand_in, scope)))
        return judged

    def _act(
        self,
        state: IncidentState,
        judged: Sequence[tuple[Proposal, Verdict]],
        *,
        settle: Settle | None,
        report: CycleReport,
        seen: Sequence[tuple[Proposal, Verdict]] = (),
    ) -> None:
        """Through the remediator; what the fast lane already reported (`seen`) is not
        reported again."""
        incident = state.incident
        reported = {id(p) for p, _ in seen}
        done = self.remediator.act(
            incident.id,
            judged,
            Scope.of([incident]),
            alert_driven=incident.source == "alert",
            settle=settle,
        )
        for proposal, handled in done:
            if id(proposal) in reported:
                continue
            report.handled.append((incident.id, proposal, handled))
            self.stats.count_handled(proposal.action, handled.verdict, handled.result)
            if handled.escalation is not None:
                self._note_escalations([handled.escalation.id], report)

    def _note_escalations(self, ids: Sequence[int], report: CycleReport) -> None:
        report.escalated.extend(ids)
        with self.stats.lock:
            self.stats.escalations += len(ids)

    def _close_confirmed(self) -> None:
        """An alert incident about units whose alerts all resolved closes once systemd
        confirms none of its units is failed (or being changed); otherwise it stays
        open, and its findings keep it handled."""
        for state in self.incidents.open_but_quiet():
            seen = {u: self.remediator.unit_state(u) for u in state.incident.units}
            if any(
                s is None or s.active_state == "failed" or systemd_busy(s) for s in seen.values()
            ):
                continue
            self.incidents.resolve(state.incident.id)
            self.record.closed(
                state.incident.id,
                "its alerts resolved and systemd confirms "
                + ", ".join(f"{u} is {s.active_state}" for u, s in seen.items() if s),
            )

    # ------------------------------------------------------------ context

    def _unit_states(self, units: Sequence[str]) -> dict[str, UnitState]:
        """systemd's state of at most MAX_UNITS_LOOKED_UP units, so one huge alert group
        cannot hold the next incident behind thousands of D-Bus calls (a proposal's unit
        is looked up again when judged). Unknown is left out: never busy or healthy."""
        if len(units) > MAX_UNITS_LOOKED_UP:
            log.warning("%d units named; looking up the first %d", len(units), MAX_UNITS_LOOKED_UP)
        states = {u: self.remediator.unit_state(u) for u in units[:MAX_UNITS_LOOKED_UP]}
        return {u: s for u, s in states.items() if s is not None}

    def _journals(self, units: Sequence[str]) -> dict[str, list[str]]:
        snap = self.snapshot()
        if snap is None or snap.journal is None:
            return {}
        return {u: snap.journal.recent_messages.get(u, []) for u in units}

    def _record(self, report: CycleReport) -> None:
        self.stats.note_cycle(report.started_at, report.duration_seconds)
        summary = report.summary()
        self.record.cycle(summary)
        if report.handled or report.escalated or report.deferred or report.cancelled:
            log.info("cycle %s: %s", report.trigger, json.dumps(summary))


__all__ = ["MAX_UNITS_LOOKED_UP", "CycleReport", "Orchestrator", "unknown_kinds"]
