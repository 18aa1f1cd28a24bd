"""Pull intake: this host's alerts from Alertmanager's API v2, beside or instead of the webhook.

Every `alertmanager_pull_interval` the sidecar asks each of `alertmanager_urls` for
`GET /api/v2/alerts/groups`, filtered server-side to alerts whose host label (the first
of `host_labels`, `instance` by default) names this host, and checks every alert again
here (`HostMatcher`, strictly: an alert without a host label is nobody's in particular on
a shared Alertmanager, so never ours; loopback names are ours only through
`host_aliases`). The groups are Alertmanager's own (its route's `group_by`), so a storm
is analysed once per group, as with the webhook.

What is taken goes through the webhook's path (`IncidentStore.ingest`: inbox, the seen
keys, incidents, revisions), one committed transaction per group before the next poll.
So an alert pulled from two HA peers, or pulled and also pushed, is one alert state
(fingerprint, startsAt, status) stored and analysed once, whichever came first.

The rules, in the order they apply each round (the pure ones are pull_rules.py):

- While the store is unusable (`Store.problem()`: the database replaced, truncated,
  deleted or unwritable), the pull asks no peer and takes nothing: it cannot keep it.
  Health says so (`alertmanager_pull`), and Alertmanager still holds every alert.
- Every peer is asked at once, each in its own worker with its own wall-clock deadline
  for the whole answer (`alertmanager_pull_timeout`, a trickle included: pull_fetch.py).
  A peer's answer counts only when it is a 200 with a JSON list of groups, read whole
  within the deadline and the bounds (`alertmanager_pull_max_bytes`, `_max_groups`,
  `_max_alerts`, depth: pull_answer.py). Anything else (connection refused, a timeout or
  a peer that stalls mid-answer, a 5xx, garbage, too much) is logged, counted by a fixed
  result and otherwise ignored: it never takes or resolves anything. A peer that stalls,
  floods or garbles its answer is a health problem until it answers well again.
- An alert is *taken as firing*, as soon as an answer that has it active (or not yet
  processed) with an endsAt still ahead is in, whatever the other peers are doing (the
  first such answer is the alert). Silenced or inhibited alerts are not taken, as the
  webhook would not deliver them, but they are *present*.
- An alert this intake took (its incident was opened by a pull) is *resolved* only when
  **every** configured peer answered this round and none lists it as present (any state,
  endsAt ahead). One peer down, slow or answering garbage: nothing resolves this round.
  Resolution goes through the same ingest as a webhook `resolved` (endsAt: now): an
  incident about units stays open until systemd confirms (a resolve is a hint to look).
  A peer that restarts with an empty memory and is the only peer is indistinguishable
  from "resolved" until Prometheus re-sends (its resend delay, 1 min): the alert then
  fires again as a new revision; run an HA pair so the other peer vouches for it.
- Each group is committed before the next; a store error stops the round: what was not
  committed is taken on the next poll (Alertmanager still holds it). Nothing is lost.
  An alert state stored by an earlier round is not ingested again while it fires (the
  dedupe would drop it anyway; this spares a transaction per group per round). After a
  restart, until a peer answers, an alert the pull's incidents hold firing is such a
  state whatever startsAt a peer gives it: answers come in any order, and HA peers that
  stamped their own startsAt must not make it new by answering first.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from macha_obs.config import Config
from macha_obs.errors import StateError
from macha_obs.intake.incidents import IncidentStore, IngestResult
from macha_obs.intake.pull_answer import AnswerLimits
from macha_obs.intake.pull_fetch import fetch_answer
from macha_obs.intake.pull_rules import (
    GROUP_KEY_PREFIX,
    POLL_RESULTS,
    Merged,
    PeerAnswer,
    RoundReport,
    RoundState,
    Stored,
    gone,
    host_filter,
    peer_name,
    sort_answer,
)
from macha_obs.intake.pull_stats import ALERT_RESULTS, ROUND_RESULTS, PullStats
from macha_obs.intake.webhook import HostMatcher
from macha_obs.models import Alert, AlertGroup
from macha_obs.store import Store

log = logging.getLogger(__name__)

__all__ = [
    "ALERT_RESULTS",
    "POLL_RESULTS",
    "ROUND_RESULTS",
    "AlertmanagerPuller",
    "PullStats",
    "PullThread",
    "host_filter",
    "peer_name",
]

OnIncident = Callable[[IngestResult], None]
API_PATH = "/api/v2/alerts/groups"
DEFAULT_TIMEOUT = 10.0
SPARE_SECONDS = 30.0  # beyond a peer's deadline, before the round stops waiting for it


class StoreUnusable(StateError):
    """The store cannot keep what the pull would take."""


class AlertmanagerPuller:
    """Polls Alertmanager peers for this host's alerts and ingests them like the webhook."""

    def __init__(
        self,
        incidents: IncidentStore,
        urls: Sequence[str],
        hosts: HostMatcher,
        *,
        label: str = "instance",
        timeout: float = DEFAULT_TIMEOUT,
        limits: AnswerLimits | None = None,
        on_incident: OnIncident | None = None,
        stats: PullStats | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        store_problem: Callable[[], str | None] | None = None,
    ) -> None:
        self.incidents = incidents
        self.urls = [u.rstrip("/") for u in urls]
        self.peers = [peer_name(u) for u in self.urls]
        self.hosts = hosts
        self.matcher = host_filter(label, hosts.names)
        self.timeout = timeout
        self.limits = limits or AnswerLimits()
        self.on_incident = on_incident
        self.stats = stats or PullStats(self.peers)
        self.clock = clock
        self.monotonic = monotonic
        self._store_problem = store_problem
        # fingerprint → startsAt (as the API wrote it) of the alert states stored by
        # earlier rounds: while one fires it comes back every round, and is neither
        # validated nor ingested again (the dedupe would drop it; this spares the work)
        self._taken: dict[str, frozenset[str]] = {}
        # fingerprints firing in the pull's own incidents (None: read them again)
        self._candidates: set[str] | None = None
        # until a peer answered once: what the pull's incidents hold firing (a restart)
        self._restarted: set[str] | None = None
        # one worker per peer: each answer is bounded by its deadline, so none waits
        self._pool = ThreadPoolExecutor(max(1, len(self.urls)), thread_name_prefix="am-pull")

    @classmethod
    def from_config(
        cls, config: Config, store: Store, on_incident: OnIncident | None = None
    ) -> AlertmanagerPuller:
        hosts = HostMatcher(
            config.hostname,
            config.host_aliases,
            config.host_labels,
            loopback_is_local=False,
            require_label=True,
        )
        limits = AnswerLimits(
            max_bytes=config.alertmanager_pull_max_bytes,
            max_groups=config.alertmanager_pull_max_groups,
            max_alerts=config.alertmanager_pull_max_alerts,
        )
        return cls(
            IncidentStore(store),
            config.alertmanager_urls,
            hosts,
            label=config.host_labels[0],
            timeout=config.alertmanager_pull_timeout,
            limits=limits,
            on_incident=on_incident,
        )

    # ------------------------------------------------------------ one round

    def store_problem(self) -> str | None:
        """Why the store cannot keep what the pull would take, or None."""
        if self._store_problem is not None:
            return self._store_problem()
        return self.incidents.store.problem()

    def poll_once(self) -> RoundReport:
        """Ask every peer at once, take each answer's alerts as it comes in, and resolve
        what every peer dropped once all have answered."""
        problem = self.store_problem()
        self.stats.store(problem)
        if problem is not None:
            log.warning("alertmanager pull: taking nothing, the store is unusable: %s", problem)
            self.stats.round("store_error", problem)
            return RoundReport("store_error", 0)
        now = datetime.fromtimestamp(self.clock(), UTC)
        done = RoundState(RoundReport("failed", 0))
        if self._restarted is None:
            self._restarted = self._firing_taken()
        # each answer is handed over as it comes in, and dropped once taken: at most the
        # answers not yet taken are held, each bounded by its limits
        answers: queue.SimpleQueue[PeerAnswer] = queue.SimpleQueue()
        for i in range(len(self.urls)):
            self._pool.submit(self._ask_into, i, answers)
        try:
            for _ in self.urls:
                try:
                    answer = answers.get(timeout=self.timeout + SPARE_SECONDS)
                except queue.Empty:  # cannot be: every answer is bounded by its deadline
                    done.problems.append("a peer's worker did not hand its answer over")
                    break
                self._answer_in(answer, now, done)
                del answer
            report = done.report
            problems = "; ".join(done.problems)
            if not report.answered:
                self.stats.round("failed", problems)
                return report
            self._restarted = set()  # what a peer lists is known from now on
            report.result = "complete" if report.answered == len(self.urls) else "partial"
            if report.result == "complete":
                report.resolved = self._resolve(done.present)
        except StoreUnusable as exc:
            log.warning("alertmanager pull: stopped taking, the store is unusable: %s", exc)
            self.stats.store(str(exc))
            return self._store_failed(done.report)
        except Exception:  # the store: what was committed stays, the rest comes next round
            log.exception("alertmanager pull: cannot store the pulled alerts; next poll retries")
            return self._store_failed(done.report)
        self.stats.round(report.result, problems)
        self.stats.count_alerts(
            new=sum(r.new_alerts for r in report.taken),
            duplicate=sum(r.duplicates for r in report.taken),
            resolved=report.resolved,
            ignored=len(done.ignored),
            invalid=len(done.invalid),
        )
        return report

    def _store_failed(self, report: RoundReport) -> RoundReport:
        self.stats.round("store_error", "cannot store the pulled alerts")
        report.result = "store_error"
        return report

    def _answer_in(self, answer: PeerAnswer, now: datetime, done: RoundState) -> None:
        """One peer's answer is in: take what it holds now (committed), note what it lists."""
        if not answer.ok:
            done.problems.append(f"{answer.peer}: {answer.problem}")
            return
        done.report.answered += 1
        merged = Merged()
        stored = Stored(self._taken, self._restarted or ())
        sort_answer(answer, merged, hosts=self.hosts, now=now, stored=stored, this_round=done.taken)
        for fp, starts in merged.known.items():
            self._taken[fp] = self._taken.get(fp, frozenset()) | starts
        done.present |= merged.present
        done.ignored |= merged.ignored
        done.invalid |= merged.invalid
        taken = self._take(merged, done.report)
        done.taken |= {fp for alerts in merged.firing.values() for fp in alerts}
        for fp, starts in merged.starts.items():  # another peer's own startsAt: stored too
            if fp in done.taken:
                self._taken[fp] = self._taken.get(fp, frozenset()) | starts
        for result in taken:
            if result.changed and result.firing and self.on_incident is not None:
                try:
                    self.on_incident(result)
                except Exception:  # stored already; analysis picks it up from the store
                    log.exception("on_incident failed for %s", result.incident_id)

    def _ask_into(self, index: int, answers: queue.SimpleQueue[PeerAnswer]) -> None:
        try:
            answers.put(self._ask(index))
        except Exception as exc:  # never leave the round waiting for this peer
            log.exception("alertmanager pull from %s failed", self.peers[index])
            answers.put(PeerAnswer(self.peers[index], "unreachable", problem=repr(exc)))

    def _ask(self, index: int) -> PeerAnswer:
        peer, url = self.peers[index], self.urls[index]
        params = {"filter": self.matcher, "active": "true", "silenced": "true",
                  "inhibited": "true"}  # fmt: skip
        answer = fetch_answer(
            url + API_PATH,
            params,
            peer=peer,
            timeout=self.timeout,
            limits=self.limits,
            clock=self.monotonic,
        )
        self.stats.poll(peer, answer.result, self.clock(), answer.problem)
        if not answer.ok:
            log.warning("alertmanager pull from %s: %s: %s", peer, answer.result, answer.problem)
        return answer

    # ------------------------------------------------------------ storing

    def _take(self, merged: Merged, report: RoundReport) -> list[IngestResult]:
        """Ingest each group's alerts, one committed transaction per group."""
        taken = []
        for key in sorted(merged.firing):
            alerts = list(merged.firing[key].values())
            result = self._ingest(key, alerts)  # committed when it returns
            taken.append(result)
            for alert in alerts:
                fp = alert.fingerprint
                self._taken[fp] = self._taken.get(fp, frozenset()) | merged.starts[fp]
            if result.new_alerts:
                self._candidates = None  # the pull's firing alerts changed: read them again
        report.taken += taken
        return taken

    def _resolve(self, present: set[str]) -> int:
        """After a complete round: resolve what every peer dropped, if anything was."""
        self._taken = {fp: k for fp, k in self._taken.items() if fp in present}
        if self._candidates is None:
            self._candidates = self._firing_taken()
        if not self._candidates - present:
            return 0
        self._candidates = None
        return self._resolve_gone(present)

    def _firing_taken(self) -> set[str]:
        """Fingerprints firing in the incidents the pull opened: what it may resolve."""
        return {
            a.fingerprint
            for s in self.incidents.open_incidents()
            if s.incident.source == "alert" and s.incident.group_key.startswith(GROUP_KEY_PREFIX)
            for a in s.incident.alerts
            if a.firing and a.fingerprint and self.hosts.is_local(a)
        }

    def _ingest(self, key: str, alerts: list[Alert], status: str = "firing") -> IngestResult:
        problem = self.store_problem()
        if problem is not None:  # it broke mid-round: keep nothing we cannot keep
            raise StoreUnusable(problem)
        body = {
            "version": "4",
            "groupKey": key,
            "status": status,
            "receiver": "pull",
            "alerts": [a.model_dump(mode="json", by_alias=True) for a in alerts],
        }
        text = json.dumps(body, ensure_ascii=False)
        group = AlertGroup.model_validate(body)
        return self.incidents.ingest(group, text, group.alerts)

    def _resolve_gone(self, present: set[str]) -> int:
        """Resolve the alerts this intake took that no peer lists any more; how many."""
        ended = datetime.fromtimestamp(self.clock(), UTC)
        resolved = 0
        for state in self.incidents.open_incidents():
            incident = state.incident
            if incident.source != "alert" or not incident.group_key.startswith(GROUP_KEY_PREFIX):
                continue
            ends = [
                a.model_copy(update={"status": "resolved", "ends_at": ended})
                for a in incident.alerts
                if gone(a, present, self.hosts)
            ]
            if ends:
                result = self._ingest(incident.group_key, ends, "resolved")
                resolved += result.new_alerts
        return resolved

    # ------------------------------------------------------------ the thread

    def run(self, stop: threading.Event, interval: float) -> None:
        """Poll now and every `interval` seconds until `stop` is set."""
        while not stop.is_set():
            began = time.monotonic()
            try:
                self.poll_once()
            except Exception:  # never let the thread die: the next round tries again
                log.exception("alertmanager pull round failed")
                self.stats.round("failed", "the round raised")
            stop.wait(max(0.0, interval - (time.monotonic() - began)))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class PullThread:
    """The pull intake in its own thread: `serve` starts it and stops it on SIGTERM."""

    def __init__(self, puller: AlertmanagerPuller, interval: float) -> None:
        self.puller = puller
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=puller.run, args=(self._stop, interval), name="alertmanager-pull", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Stop after the round in flight (each answer is bounded by its deadline); True
        when the thread ended within `timeout`."""
        self._stop.set()
        self._thread.join(timeout)
        alive = self._thread.is_alive()
        if not alive:
            self.puller.close()
        return not alive
