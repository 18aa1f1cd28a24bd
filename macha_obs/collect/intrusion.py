"""Intrusion signs: authentication failures, and the posture against the accepted baseline.

The failures come from the journal collector's own read (`AuthFailureTap` is one of its
sinks: one cursor, each entry seen once), counted per service in a fixed set; usernames
and addresses stay in the journal. The posture (collect/posture.py) is compared with
what a person accepted (`macha-obs posture accept`); no baseline, no posture findings.
Every finding here is for a person to look at: the runbooks only ever investigate it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from macha_obs.collect.base import CollectorError
from macha_obs.collect.journal import Entry
from macha_obs.collect.posture import (
    SetidScanner,
    UnitFiles,
    fetch_listeners,
    fetch_units_and_setid,
    load_baseline,
    socket_owners,
)
from macha_obs.models import (
    AUTH_SERVICES,
    Finding,
    FindingKind,
    IntrusionReading,
    Listener,
    PostureBaseline,
    PostureDiff,
    PostureNow,
    auth_failure_service,
    posture_diff,
)

MAX_FINDINGS = 20  # per kind and cycle: a new baseline's worth of change is one look


class AuthFailureTap:
    """Counts authentication failures in the entries the journal collector reads; keeps
    each service's recent counts for the burst window. Thread-safe: the journal and the
    intrusion collectors run in their own threads."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._totals = dict.fromkeys(AUTH_SERVICES, 0)
        self._recent: dict[str, deque[tuple[float, int]]] = {
            s: deque(maxlen=4096) for s in AUTH_SERVICES
        }

    def __call__(self, entries: Sequence[Entry]) -> None:
        counts = dict.fromkeys(AUTH_SERVICES, 0)
        for entry in entries:
            service = auth_failure_service(entry.identifier, entry.comm, entry.message)
            if service is not None:
                counts[service] += 1
        now = self.clock()
        with self._lock:
            for service, count in counts.items():
                if count:
                    self._totals[service] += count
                    self._recent[service].append((now, count))

    def totals(self) -> dict[str, int]:
        with self._lock:
            return dict(self._totals)

    def in_window(self, window: float) -> dict[str, int]:
        now = self.clock()
        with self._lock:
            for recent in self._recent.values():
                while recent and now - recent[0][0] > window:
                    recent.popleft()
            return {s: sum(c for _, c in r) for s, r in self._recent.items()}


def auth_findings(window_counts: dict[str, int], burst: int, window: float) -> list[Finding]:
    return [
        Finding(
            kind=FindingKind.AUTH_FAILURES,
            subject=service,
            summary=f"{count} {service} authentication failures within {window:g}s "
            f"(threshold {burst})",
            details={"service": service, "failures": count, "window_seconds": window},
        )
        for service, count in sorted(window_counts.items())
        if count >= burst
    ]


def posture_findings(diff: PostureDiff) -> list[Finding]:
    findings = [
        Finding(
            kind=FindingKind.NEW_LISTENER,
            subject=x.key,
            summary=f"{x.key} listens and was not there when the baseline was accepted"
            + (f" (owned by {x.unit})" if x.unit else ""),
            details={"proto": x.proto, "port": x.port, "owner": x.unit},
        )
        for x in diff.listeners[:MAX_FINDINGS]
    ]
    findings += [
        Finding(
            kind=FindingKind.NEW_ENABLED_UNIT,
            subject=unit,
            summary=f"{unit} is enabled and was not when the baseline was accepted",
        )
        for unit in (diff.enabled_units or [])[:MAX_FINDINGS]
    ]
    findings += [
        Finding(
            kind=FindingKind.NEW_SETID_FILE,
            subject=path[-300:],
            summary=f"{path[-200:]} is setuid/setgid and was not when the baseline was accepted",
        )
        for path in diff.setid_files[:MAX_FINDINGS]
    ]
    return findings


class IntrusionCollector:
    name = "intrusion"

    def __init__(
        self,
        tap: AuthFailureTap,
        *,
        state_dir: Path,
        unit_files: UnitFiles,
        setid_dirs: Sequence[Path],
        auth_burst: int = 10,
        auth_window: float = 600.0,
        interval: float = 300.0,
        proc: Path = Path("/proc"),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`interval`: how often the unit files and setid files are read again (the
        listeners are read every cycle: TCP by sock_diag, UDP from /proc/net)."""
        self.tap = tap
        self.state_dir = state_dir
        self.unit_files = unit_files
        self.scanner = SetidScanner(setid_dirs, monotonic=monotonic)
        self.auth_burst = auth_burst
        self.auth_window = auth_window
        self.interval = interval
        self.proc = proc
        self.monotonic = monotonic
        self._slow: tuple[float, PostureNow] | None = None
        self._owners: dict[str, str] = {}  # listener key → unit, looked up once

    def _posture(self, pairs: list[tuple[Listener, int]]) -> PostureNow:
        now = self.monotonic()
        if self._slow is None or now - self._slow[0] >= self.interval:
            self._slow = (now, fetch_units_and_setid(self.unit_files, self.scanner))
        return self._slow[1].model_copy(update={"listeners": [x for x, _ in pairs]})

    def _with_owners(
        self, listeners: list[Listener], pairs: list[tuple[Listener, int]]
    ) -> list[Listener]:
        # the owner of a new listener, looked up once per socket (a walk of /proc)
        inodes = {x.key: inode for x, inode in pairs}
        unknown = [k for k in (x.key for x in listeners) if k not in self._owners and k in inodes]
        if unknown:
            owners = socket_owners((inodes[k] for k in unknown), self.proc)
            for key in unknown:
                self._owners[key] = owners.get(inodes[key], "")
        self._owners = {k: v for k, v in self._owners.items() if k in inodes}  # bounded
        return [x.model_copy(update={"unit": self._owners.get(x.key, "")}) for x in listeners]

    def collect(self) -> tuple[IntrusionReading, list[Finding]]:
        window = self.tap.in_window(self.auth_window)
        findings = auth_findings(window, self.auth_burst, self.auth_window)
        reading = {
            "auth_failures_total": self.tap.totals(),
            "auth_failures_window": window,
            "auth_window_seconds": self.auth_window,
        }
        baseline: PostureBaseline | None = None
        try:
            baseline = load_baseline(self.state_dir)
        except CollectorError as exc:  # the counters still count; the posture says why
            reading["baseline_error"] = str(exc)[:500]
        pairs = fetch_listeners(self.proc)  # once a cycle: TCP by sock_diag, UDP from /proc/net
        posture = self._posture(pairs)
        reading["listeners"] = len(posture.listeners)
        reading["units_error"] = posture.units_error
        if baseline is not None:
            diff = posture_diff(baseline, posture)
            diff = diff.model_copy(update={"listeners": self._with_owners(diff.listeners, pairs)})
            findings += posture_findings(diff)
            reading |= {
                "baseline_at": baseline.accepted_at,
                "unaccepted_listeners": diff.listeners,
                "new_enabled_units": diff.enabled_units,
                "new_setid_files": diff.setid_files,
            }
        return IntrusionReading.model_validate(reading), findings
