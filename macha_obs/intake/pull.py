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

The rules, in the order they apply each round:

- A peer's answer counts only when it is a 200 with a JSON list of groups, read whole
  within the timeout and the size bound. Anything else (connection refused, a timeout or
  a peer that stalls mid-answer, a 5xx, garbage) is logged, counted by a fixed result and
  otherwise ignored: it never takes or resolves anything.
- An alert is *taken as firing* when at least one answering peer has it active (or not
  yet processed) with an endsAt still ahead. Silenced or inhibited alerts are not taken,
  as the webhook would not deliver them, but they are *present*.
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
  dedupe would drop it anyway; this spares a transaction per group per round).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from pydantic import ValidationError

from macha_obs.config import Config
from macha_obs.intake.incidents import IncidentStore, IngestResult
from macha_obs.intake.webhook import MAX_LABEL_CHARS, MAX_LABELS, HostMatcher, for_this_host
from macha_obs.models import ZERO_TIME, Alert, AlertGroup
from macha_obs.store import Store

log = logging.getLogger(__name__)

OnIncident = Callable[[IngestResult], None]

# One poll of one peer ends in one of these (a label value: a small fixed set).
POLL_RESULTS = ("ok", "unreachable", "timeout", "http_error", "invalid", "too_large")
# A round (every peer asked once): all answered / some / none / could not store.
ROUND_RESULTS = ("complete", "partial", "failed", "store_error")
# What became of pulled alerts (alert states, counted once per round they are met).
ALERT_RESULTS = ("new", "duplicate", "ignored", "invalid", "resolved")
GROUP_KEY_PREFIX = "pull/"
API_PATH = "/api/v2/alerts/groups"
MAX_ANSWER_BYTES = 64 * 1_048_576  # ~100,000 alerts; a bigger answer is refused, not cut
DEFAULT_TIMEOUT = 10.0
FAILING_ROUNDS = 3  # rounds in a row without a usable answer before health reports it


class PullStats:
    """Pull counters since start, and each peer's last success (Prometheus copes with
    resets). Peers are the configured URLs' host:port: bounded by the config."""

    def __init__(self, peers: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self.polls: Counter[tuple[str, str]] = Counter()
        self.rounds: Counter[str] = Counter(dict.fromkeys(ROUND_RESULTS, 0))
        self.alerts: Counter[str] = Counter(dict.fromkeys(ALERT_RESULTS, 0))
        self.last_success: dict[str, float] = {}
        self.up: dict[str, bool] = {}
        self.failing_rounds = 0
        self.last_problem = ""
        for peer in peers:
            self.up[peer] = False
            for result in POLL_RESULTS:
                self.polls[(peer, result)] = 0

    def poll(self, peer: str, result: str, when: float) -> None:
        with self._lock:
            self.polls[(peer, result)] += 1
            self.up[peer] = result == "ok"
            if result == "ok":
                self.last_success[peer] = when

    def round(self, result: str, problem: str = "") -> None:
        with self._lock:
            self.rounds[result] += 1
            usable = result in ("complete", "partial")
            self.failing_rounds = 0 if usable else self.failing_rounds + 1
            self.last_problem = "" if usable else problem

    def count_alerts(self, **n: int) -> None:
        with self._lock:
            self.alerts.update(n)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "polls": dict(self.polls),
                "rounds": dict(self.rounds),
                "alerts": dict(self.alerts),
                "last_success": dict(self.last_success),
                "up": dict(self.up),
                "failing_rounds": self.failing_rounds,
            }

    def problem(self, failing: int = FAILING_ROUNDS) -> str | None:
        """Why the pull intake is not taking alerts, or None (for health)."""
        with self._lock:
            if self.failing_rounds < failing:
                return None
            rounds, problem = self.failing_rounds, self.last_problem
        return f"no Alertmanager answered the last {rounds} pulls: {problem}"


@dataclass
class PeerAnswer:
    """One peer's answer: its groups (raw JSON objects), or why there are none."""

    peer: str
    result: str
    groups: list[dict[str, Any]] = field(default_factory=list)
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.result == "ok"


@dataclass
class Merged:
    """One round's answers, merged: what to take, what is present, what was not ours."""

    firing: dict[str, dict[str, Alert]] = field(default_factory=dict)  # group key → fp →
    present: set[str] = field(default_factory=set)  # listed, not ended, on some peer
    starts: dict[str, set[str]] = field(default_factory=dict)  # fp → startsAt as written
    owner: dict[str, str] = field(default_factory=dict)  # fp → its group key
    ignored: set[str] = field(default_factory=set)
    invalid: set[str] = field(default_factory=set)


@dataclass
class RoundReport:
    """What one round did (for tests, the bench and the log)."""

    result: str
    answered: int
    taken: list[IngestResult] = field(default_factory=list)
    resolved: int = 0


def peer_name(url: str) -> str:
    """The label value for a peer: host:port of its URL, never its credentials or path."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{parts.port}" if parts.port else host


def host_filter(label: str, names: Iterable[str]) -> str:
    """Alertmanager matcher (anchored RE2) for `label` naming one of `names`, with any
    domain suffix after a bare name and an optional port, case-insensitive: the same
    hosts `HostMatcher` accepts, so the server sends (about) only ours."""
    alternatives = "|".join(sorted({re.escape(n.lower()) for n in names if n}))
    pattern = f"(?i)(?:{alternatives})(?:\\.[^:]*)?(?::[0-9]+)?"
    quoted = pattern.replace("\\", "\\\\").replace('"', '\\"')
    return f'{label}=~"{quoted}"'


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


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
        on_incident: OnIncident | None = None,
        stats: PullStats | None = None,
        clock: Callable[[], float] = time.time,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.incidents = incidents
        self.urls = [u.rstrip("/") for u in urls]
        self.peers = [peer_name(u) for u in self.urls]
        self.hosts = hosts
        self.matcher = host_filter(label, hosts.names)
        self.timeout = timeout
        self.on_incident = on_incident
        self.stats = stats or PullStats(self.peers)
        self.clock = clock
        self.max_answer_bytes = max_answer_bytes
        self._sessions = [requests.Session() for _ in self.urls]
        # fingerprint → startsAt (as the API wrote it) of the alert states stored by
        # earlier rounds: while one fires it comes back every round, and is neither
        # validated nor ingested again (the dedupe would drop it; this spares the work)
        self._taken: dict[str, frozenset[str]] = {}
        # fingerprints firing in the pull's own incidents (None: read them again)
        self._candidates: set[str] | None = None
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
        return cls(
            IncidentStore(store),
            config.alertmanager_urls,
            hosts,
            label=config.host_labels[0],
            timeout=DEFAULT_TIMEOUT,
            on_incident=on_incident,
        )

    # ------------------------------------------------------------ one round

    def poll_once(self) -> RoundReport:
        """Ask every peer once, take what is ours, resolve what every peer dropped."""
        answers = list(self._pool.map(self._ask, range(len(self.urls))))
        good = [a for a in answers if a.ok]
        problems = "; ".join(f"{a.peer}: {a.problem}" for a in answers if not a.ok)
        if not good:
            self.stats.round("failed", problems)
            return RoundReport("failed", 0)
        merged = self._merge(good)
        complete = len(good) == len(answers)
        report = RoundReport("complete" if complete else "partial", len(good))
        try:
            self._take(merged, report)
            if complete:
                report.resolved = self._resolve(merged.present)
        except Exception:  # the store: what was committed stays, the rest comes next round
            log.exception("alertmanager pull: cannot store the pulled alerts; next poll retries")
            self.stats.round("store_error", "cannot store the pulled alerts")
            report.result = "store_error"
            return report
        self.stats.round(report.result, problems)
        self.stats.count_alerts(
            new=sum(r.new_alerts for r in report.taken),
            duplicate=sum(r.duplicates for r in report.taken),
            resolved=report.resolved,
            ignored=len(merged.ignored),
            invalid=len(merged.invalid),
        )
        for result in report.taken:
            if result.changed and result.firing and self.on_incident is not None:
                try:
                    self.on_incident(result)
                except Exception:  # stored already; analysis picks it up from the store
                    log.exception("on_incident failed for %s", result.incident_id)
        return report

    def _ask(self, index: int) -> PeerAnswer:
        peer, url = self.peers[index], self.urls[index]
        answer = self._fetch(self._sessions[index], peer, url)
        self.stats.poll(peer, answer.result, self.clock())
        if not answer.ok:
            log.warning("alertmanager pull from %s: %s: %s", peer, answer.result, answer.problem)
        return answer

    def _fetch(self, session: requests.Session, peer: str, url: str) -> PeerAnswer:
        params = {"filter": self.matcher, "active": "true", "silenced": "true",
                  "inhibited": "true"}  # fmt: skip
        deadline = time.monotonic() + self.timeout
        try:
            with session.get(
                url + API_PATH, params=params, timeout=self.timeout, stream=True
            ) as reply:
                if reply.status_code != 200:
                    return PeerAnswer(peer, "http_error", problem=f"HTTP {reply.status_code}")
                raw = bytearray()
                for chunk in reply.iter_content(65536):
                    raw += chunk
                    if len(raw) > self.max_answer_bytes:
                        message = f"answer over {self.max_answer_bytes} bytes"
                        return PeerAnswer(peer, "too_large", problem=message)
                    if time.monotonic() > deadline:  # a peer that drips its answer
                        return PeerAnswer(peer, "timeout", problem="answer not read in time")
        except requests.Timeout:
            return PeerAnswer(peer, "timeout", problem=f"no answer within {self.timeout:g}s")
        except (requests.RequestException, OSError) as exc:
            return PeerAnswer(peer, "unreachable", problem=_cause(exc))
        try:
            groups = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            return PeerAnswer(peer, "invalid", problem=f"invalid JSON: {exc}")
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            return PeerAnswer(peer, "invalid", problem="not a list of alert groups")
        return PeerAnswer(peer, "ok", groups)

    # ------------------------------------------------------------ merging answers

    def _merge(self, answers: Sequence[PeerAnswer]) -> Merged:
        """Every answering peer's alerts, sorted into what to take and what is present."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        merged = Merged()
        for answer in answers:
            for group in answer.groups:
                key = _group_key(group)
                raw_alerts = group.get("alerts")
                for raw in raw_alerts if isinstance(raw_alerts, list) else []:
                    self._sort(raw, key, now, merged)
        return merged

    def _sort(self, raw: object, key: str, now: datetime, merged: Merged) -> None:
        fp = raw.get("fingerprint") if isinstance(raw, dict) else None
        if not isinstance(raw, dict) or not isinstance(fp, str):
            merged.invalid.add(str(fp))
            return
        ends = _parse_time(raw.get("endsAt"))
        ended = ends is not None and ends <= now  # ended on this peer: not present here
        starts = str(raw.get("startsAt"))
        if starts in self._taken.get(fp, ()):  # this state is stored already
            if not ended:
                merged.present.add(fp)
            return
        alert = self._alert(raw)
        if alert is None:
            merged.invalid.add(fp)
            merged.present.add(fp)  # unreadable: never resolve it for that
            return
        if not for_this_host(alert, self.hosts):
            merged.ignored.add(fp)
            return
        if ended:
            return
        merged.present.add(fp)
        if _state(raw) in ("active", "unprocessed"):
            # In several groups (routes), or on several peers: the first one met is the
            # alert. Peers that stamped their own startsAt (an alert posted without one)
            # give one fingerprint several starts: one alert still, taken once.
            owner = merged.owner.setdefault(fp, key)
            merged.firing.setdefault(owner, {}).setdefault(fp, alert)
            merged.starts.setdefault(fp, set()).add(starts)

    @staticmethod
    def _alert(raw: object) -> Alert | None:
        """A pulled alert as the webhook would carry it (firing, no end yet), or None
        when it is not a readable alert within the webhook's label bounds."""
        if not isinstance(raw, dict):
            return None
        try:
            alert = Alert.model_validate(
                {
                    "status": "firing",
                    "labels": raw.get("labels"),
                    "annotations": raw.get("annotations") or {},
                    "startsAt": raw.get("startsAt"),
                    "endsAt": ZERO_TIME,
                    "generatorURL": raw.get("generatorURL") or "",
                    "fingerprint": raw.get("fingerprint"),
                }
            )
        except ValidationError:
            return None
        labels = [alert.labels, alert.annotations]
        if len(alert.labels) > MAX_LABELS or any(
            max(len(k), len(v)) > MAX_LABEL_CHARS for d in labels for k, v in d.items()
        ):
            return None
        return alert

    # ------------------------------------------------------------ storing

    def _take(self, merged: Merged, report: RoundReport) -> None:
        """Ingest each group's alerts, one committed transaction per group."""
        for key in sorted(merged.firing):
            alerts = list(merged.firing[key].values())
            result = self._ingest(key, alerts)  # committed when it returns
            report.taken.append(result)
            for alert in alerts:
                fp = alert.fingerprint
                self._taken[fp] = self._taken.get(fp, frozenset()) | merged.starts[fp]
            if result.new_alerts:
                self._candidates = None  # the pull's firing alerts changed: read them again

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
            gone = [
                a.model_copy(update={"status": "resolved", "ends_at": ended})
                for a in incident.alerts
                if a.firing
                and self.hosts.is_local(a)
                and a.fingerprint
                and a.fingerprint not in present
            ]
            if gone:
                result = self._ingest(incident.group_key, gone, "resolved")
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
        for session in self._sessions:
            session.close()


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
        """Stop after the round in flight (each request is bounded by the timeout); True
        when the thread ended within `timeout`."""
        self._stop.set()
        self._thread.join(timeout)
        alive = self._thread.is_alive()
        if not alive:
            self.puller.close()
        return not alive


def _group_key(group: Mapping[str, Any]) -> str:
    """Our key for an Alertmanager group: pull/<receiver>:{group labels}, the same for
    every peer (the route's own key is not in the API; the groupKey of the webhook is
    `<route>:{labels}`)."""
    receiver = group.get("receiver")
    name = receiver.get("name") if isinstance(receiver, dict) else None
    labels = group.get("labels")
    pairs = sorted(labels.items()) if isinstance(labels, dict) else []
    text = ", ".join(f"{k}={json.dumps(str(v))}" for k, v in pairs)
    return f"{GROUP_KEY_PREFIX}{name or ''}:{{{text}}}"


def _cause(exc: BaseException) -> str:
    """The root cause of a request error, short ("[Errno 111] Connection refused"),
    not requests' retelling with the whole URL."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return f"{type(exc).__name__}: [Errno {seen.errno}] {seen.strerror}"
        seen = seen.__cause__ or seen.__context__
    return f"{type(exc).__name__}: {exc}"


def _state(raw: Mapping[str, Any]) -> str:
    status = raw.get("status")
    state = status.get("state") if isinstance(status, dict) else None
    return state if isinstance(state, str) else "unprocessed"
