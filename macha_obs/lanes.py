"""The two lanes' threads: the action lane, which alone acts, and the analysis lane.

A model call takes seconds to minutes (`llm_timeout`, a 70B model on CPU). The action
lane runs the orchestrator's cycle; it hands an incident to the analysis lane once the
runbooks' fixes for it have run, and goes on: a failed unit that a runbook knows how to
fix never waits behind a model. The analysis lane only analyses; it never judges or
acts. Its decisions go back to the action lane, which alone executes, so two fixes can
never race on one unit.

One analysis job per incident: a newer revision handed on before the older one started
replaces it. Without `start()` (macha-check, tests), `run_pending` analyses in the
caller's thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from macha_obs.config import AnalysisMode
from macha_obs.models import Assessment, Decision, Incident, Proposal, Verdict

log = logging.getLogger(__name__)


class Analyze(Protocol):
    """agent.analyze.Analyzer, as the lanes use it."""

    @property
    def mode(self) -> AnalysisMode: ...

    @property
    def client(self) -> object | None: ...

    def analyze(
        self,
        incident: Incident,
        *,
        unit_status: Mapping[str, str] | None = None,
        journals: Mapping[str, Sequence[str]] | None = None,
    ) -> Decision: ...


def needs_model(mode: AnalysisMode, has_model: bool, runbooks: Decision) -> bool:
    """Whether analysing an incident asks the model, given the runbooks' answer (the
    rule agent/analyze.py follows). Pure."""
    if mode is AnalysisMode.RUNBOOKS_ONLY or not has_model:
        return False
    if mode is AnalysisMode.RUNBOOKS_FIRST:
        return runbooks.assessment is Assessment.UNKNOWN or not runbooks.proposals
    return True


@dataclass(frozen=True)
class Job:
    """One incident revision for the model, with the context the action lane read."""

    incident: Incident
    revision: int
    unit_status: Mapping[str, str]
    journals: Mapping[str, Sequence[str]]
    fast: tuple[tuple[Proposal, Verdict], ...] = ()  # what the fast lane already judged


# a decision, or None when the analysis itself crashed (a bug: logged, tried again later)
Done = tuple[Job, Decision | None]


class AnalysisLane:
    def __init__(self, analyzer: Analyze, on_done: Callable[[], None]) -> None:
        """`on_done` wakes the action lane for an answer."""
        self.analyzer = analyzer
        self.on_done = on_done
        self._lock = threading.Lock()
        self._waiting: dict[str, Job] = {}
        self._running: Job | None = None
        self._done: list[Done] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def needed(self, runbooks: Decision) -> bool:
        """Whether the analysis of the incident the runbooks answered asks the model."""
        return needs_model(self.analyzer.mode, self.analyzer.client is not None, runbooks)

    def submit(self, job: Job) -> None:
        with self._lock:
            self._waiting[job.incident.id] = job
        self._wake.set()

    def holds(self, incident_id: str, revision: int) -> bool:
        """That revision is waiting, being analysed, or answered and not yet taken."""
        with self._lock:
            jobs = [*self._waiting.values(), self._running, *(j for j, _ in self._done)]
        return any(
            j is not None and (j.incident.id, j.revision) == (incident_id, revision) for j in jobs
        )

    def busy(self) -> bool:
        with self._lock:
            return self._running is not None or bool(self._waiting)

    def results(self) -> list[Done]:
        """The answers that came back since the last call, oldest first."""
        with self._lock:
            done, self._done = self._done, []
        return done

    def run_pending(self) -> None:
        """Analyse every waiting job now, in this thread (when the lane is not started)."""
        while self._step():
            pass

    def _step(self) -> bool:
        with self._lock:
            if not self._waiting:
                return False
            job = self._waiting.pop(next(iter(self._waiting)))
            self._running = job
        decision: Decision | None = None
        try:
            decision = self.analyzer.analyze(
                job.incident, unit_status=job.unit_status, journals=job.journals
            )
        except Exception:  # a bug in one analysis must not end the lane
            log.exception("analysis of %s failed", job.incident.id)
        with self._lock:
            self._running = None
            if not self._stop.is_set():
                self._done.append((job, decision))
        return True

    # ------------------------------------------------------------ the thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="macha-analysis", daemon=True)
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def stop(self, timeout: float = 1.0) -> None:
        """Stop taking jobs. A model call in flight is abandoned, not awaited: it has no
        side effect, and its incident is analysed again on the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            while not self._stop.is_set() and self._step():
                self.on_done()


class ActionLane:
    """The one thread that acts: runs `cycle(trigger)` when woken, or every `interval`."""

    def __init__(
        self,
        cycle: Callable[[str], None],
        interval: float,
        bound: float,
        monotonic: Callable[[], float],
    ) -> None:
        """`bound`: how long one cycle may take before the watchdog calls it stuck."""
        self.cycle = cycle
        self.interval = interval
        self.bound = bound
        self.monotonic = monotonic
        self.alive_at = monotonic()  # the watchdog's proof of life
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._triggers: list[str] = []
        self._thread: threading.Thread | None = None

    def wake(self, trigger: str) -> None:
        self._triggers.append(trigger)
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="macha-orchestrator", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Stop after the step in flight; False if it did not in time."""
        self.stopping.set()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def healthy(self) -> bool:
        """The thread runs and is not stuck far beyond a cycle's bound."""
        if self._thread is None or not self._thread.is_alive():
            return False
        return self.monotonic() - self.alive_at < self.bound

    def _run(self) -> None:
        while not self.stopping.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            self.alive_at = self.monotonic()
            if self.stopping.is_set():
                return
            triggers, self._triggers = self._triggers, []
            self.cycle("+".join(sorted(set(triggers))) or "timer")
            self.alive_at = self.monotonic()
