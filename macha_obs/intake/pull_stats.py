"""The pull intake's counters and its health verdict (read by metrics/pull.py and
server/health.py through small protocols)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from typing import Any

from macha_obs.intake.pull_rules import HOSTILE_RESULTS, POLL_RESULTS

# A round (every peer asked once): all answered / some / none / could not store.
ROUND_RESULTS = ("complete", "partial", "failed", "store_error")
# What became of pulled alerts (alert states, counted once per round they are met).
ALERT_RESULTS = ("new", "duplicate", "ignored", "invalid", "resolved")
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
        # peer → (result, why) while its last answer was a hostile one (HOSTILE_RESULTS)
        self.hostile: dict[str, tuple[str, str]] = {}
        self.last_result: dict[str, str] = {}
        self.failing_rounds = 0
        self.last_problem = ""
        self.store_problem: str | None = None
        for peer in peers:
            self.up[peer] = False
            for result in POLL_RESULTS:
                self.polls[(peer, result)] = 0

    def poll(self, peer: str, result: str, when: float, problem: str = "") -> None:
        with self._lock:
            self.polls[(peer, result)] += 1
            self.up[peer] = result == "ok"
            self.last_result[peer] = result
            if result == "ok":
                self.last_success[peer] = when
            if result in HOSTILE_RESULTS:
                self.hostile[peer] = (result, problem)
            else:
                self.hostile.pop(peer, None)

    def round(self, result: str, problem: str = "") -> None:
        with self._lock:
            self.rounds[result] += 1
            usable = result in ("complete", "partial")
            self.failing_rounds = 0 if usable else self.failing_rounds + 1
            self.last_problem = "" if usable else problem

    def store(self, problem: str | None) -> None:
        """The store is unusable (why), or usable again (None): while it is, the pull
        takes nothing."""
        with self._lock:
            self.store_problem = problem

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
                "failing": {p: r for p, r in self.last_result.items() if r != "ok"},
                "reasons": tuple(r for r in POLL_RESULTS if r != "ok"),
                "failing_rounds": self.failing_rounds,
            }

    def problem(self, failing: int = FAILING_ROUNDS) -> str | None:
        """Why the pull intake is not taking alerts, or not all of them, or None: the store
        is unusable; a peer stalled, flooded or garbled its last answer (at once: that is
        a broken or hostile peer, not a blip); no peer answered `failing` rounds in a row."""
        with self._lock:
            found = []
            if self.store_problem is not None:
                found.append(f"the store is unusable, the pull takes nothing: {self.store_problem}")
            found += [
                f"Alertmanager peer {peer}: {result}: {why}"
                for peer, (result, why) in sorted(self.hostile.items())
            ]
            if self.failing_rounds >= failing:
                found.append(
                    f"no Alertmanager answered the last {self.failing_rounds} pulls:"
                    f" {self.last_problem}"
                )
        return "; ".join(found) or None
