"""Health that tells the truth: what /readyz, `macha_ready`, `macha-obs status` and
MachaNotReady report.

Alive (/healthz) is the process answering; ready is the sidecar able to do its job now:
a first snapshot taken; the store still the database file the state dir holds, and
writable; the collectors it decides by (systemd above all) answering; its cycles
completing; and every thread that must run (the lanes, the collection timer, the event
watcher, the pull) alive. Each problem is one of a fixed set (a metric label) with a
reason for a person. A problem clears only when it is gone: a collector when it
answers again, a cycle when one completes; a lost store and a dead thread never clear
by themselves (a person restarts the daemon, after repairing the store).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from macha_obs.metrics import HEALTH_PROBLEMS, LoopStats

log = logging.getLogger(__name__)

PROBLEMS = HEALTH_PROBLEMS
# In a row: one can be a blip (a bus that stalled once). With collect_interval 15 s and
# dbus_timeout 10 s, a bus that went away is reported within 3 cycles, about 45-75 s.
FAILED_CYCLES = 3
# The collectors the sidecar decides by: without systemd it cannot see the units it
# would act on, so every finding about them and every verification is blind. The
# others only add findings; their failures are in macha_scrape_collector_success.
DECIDES_BY = ("systemd",)
# The threads that must run while the daemon serves (by the name their owner gives
# them), and what each is for a person.
MUST_RUN = {
    "macha-orchestrator": "the action lane",
    "macha-analysis": "the analysis lane",
    "macha-collection": "the collection timer",
    "macha-events": "the D-Bus event watcher",
    "debounce": "the D-Bus event delivery",
    "alertmanager-pull": "the Alertmanager pull",
}


class _Run(Protocol):
    @property
    def success(self) -> bool: ...

    @property
    def error(self) -> str: ...


class Snapshot(Protocol):
    """models.Snapshot, as health reads it (the server room sits beside models)."""

    @property
    def collectors(self) -> Mapping[str, _Run]: ...


class CollectorStreaks:
    """How many collection cycles in a row each watched collector failed, and why: a
    listener on the collection loop (fed every snapshot)."""

    def __init__(self, watched: Collection[str] = DECIDES_BY) -> None:
        self.watched = tuple(watched)
        self._lock = threading.Lock()
        self._failing: dict[str, tuple[int, str]] = {}

    def note(self, snapshot: Snapshot) -> None:
        with self._lock:
            for name in self.watched:
                run = snapshot.collectors.get(name)
                if run is None:
                    continue  # not configured here: nothing to decide by
                if run.success:
                    self._failing.pop(name, None)  # it answers again: the problem is gone
                else:
                    count = self._failing.get(name, (0, ""))[0] + 1
                    self._failing[name] = (count, run.error or "no reason given")

    def problem(self, cycles: int) -> str | None:
        with self._lock:
            failing = sorted(
                (name, n, why) for name, (n, why) in self._failing.items() if n >= cycles
            )
        if not failing:
            return None
        return "; ".join(
            f"the {name} collector failed the last {n} cycles: {why}" for name, n, why in failing
        )


@dataclass
class ThreadWatch:
    """The threads that must run, found by name once their owners started them; a death
    and its cause recorded by `excepthook` (installed as threading.excepthook by
    `serve`), so a thread that dies is /readyz's news and the log's, not only stderr's."""

    must_run: Mapping[str, str] = field(default_factory=lambda: dict(MUST_RUN))
    enumerate: Callable[[], Iterable[threading.Thread]] = threading.enumerate
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: list[threading.Thread] = []
        self._causes: dict[int, str] = {}

    def adopt(self) -> list[str]:
        """Watch every running thread that must run; the names found."""
        found = [t for t in self.enumerate() if t.name in self.must_run and t.is_alive()]
        with self._lock:
            known = {id(t) for t in self._watched}
            self._watched.extend(t for t in found if id(t) not in known)
        return sorted(t.name for t in found)

    def excepthook(self, args: threading.ExceptHookArgs) -> None:
        thread = args.thread
        name = thread.name if thread is not None else "unknown"
        cause = f"{args.exc_type.__name__}: {args.exc_value}"
        if thread is not None:  # first: logging is what may have killed it
            with self._lock:
                self._causes[id(thread)] = cause[:300]
        try:
            log.critical(
                "thread %s died: %s",
                name,
                cause,
                exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
            )
        except Exception:
            threading.__excepthook__(args)

    def problem(self) -> str | None:
        if self.stopping.is_set():
            return None  # shutting down: threads end on purpose
        with self._lock:
            dead = [
                (t.name, self._causes.get(id(t), "it ended")) for t in self._watched
                if not t.is_alive()
            ]  # fmt: skip
        if not dead:
            return None
        return "; ".join(
            f"{self.must_run.get(name, name)} ({name}) has died: {cause}" for name, cause in dead
        )


class StoreHealth(Protocol):
    """All readiness asks of the store (store.Store has it)."""

    def problem(self) -> str | None: ...


@dataclass
class Health:
    store: StoreHealth
    snapshot_ready: Callable[[], bool]
    stats: LoopStats
    failed_cycles: int = FAILED_CYCLES
    # the pull intake's own verdict (pull.PullStats.problem); without pull, never a problem
    pull_problem: Callable[[], str | None] = lambda: None
    collectors: CollectorStreaks | None = None
    threads: ThreadWatch | None = None

    def note(self, snapshot: Snapshot) -> None:
        """A collection loop listener: count the collectors' failures, and look at the
        store every cycle, so a loss is seen (and kept) even when nobody asks."""
        if self.collectors is not None:
            self.collectors.note(snapshot)
        self.store.problem()

    def problems(self) -> dict[str, str]:
        """Problem → why; empty when ready."""
        found: dict[str, str] = {}
        if not self.snapshot_ready():
            found["no_snapshot"] = "no snapshot yet"
        store = self.store.problem()
        if store is not None:
            found["store"] = store
        with self.stats.lock:
            failing, last = self.stats.failing_cycles, self.stats.last_cycle_error
        if failing >= self.failed_cycles:
            found["cycles_failing"] = f"the last {failing} cycles failed: {last}"
        pulled = self.pull_problem()
        if pulled is not None:
            found["alertmanager_pull"] = pulled
        blind = self.collectors.problem(self.failed_cycles) if self.collectors else None
        if blind is not None:
            found["collector_failing"] = blind
        dead = self.threads.problem() if self.threads is not None else None
        if dead is not None:
            found["thread_died"] = dead
        return found

    def ready(self) -> str | None:
        """None when ready, else every reason on one line each."""
        found = self.problems()
        return "\n".join(found.values()) if found else None
