"""The collection thread: one cycle every `interval`, the latest Snapshot published in memory.

Scrapes read `latest()` (a reference swap, no lock needed under the GIL) and never wait
for a cycle, so a collector that hangs delays the next snapshot, never a scrape.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from macha_obs.collect.base import DEFAULT_COLLECTOR_TIMEOUT, Collector, collect_all
from macha_obs.collect.snapshots import write_snapshot
from macha_obs.models import Snapshot

log = logging.getLogger(__name__)

SnapshotListener = Callable[[Snapshot], None]


class CollectionLoop:
    def __init__(
        self,
        collectors: Sequence[Collector],
        *,
        hostname: str,
        interval: float,
        state_dir: Path | None = None,
        retention: int = 20,
        timeout: float = DEFAULT_COLLECTOR_TIMEOUT,
        listeners: Sequence[SnapshotListener] = (),
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.collectors = list(collectors)
        self.hostname = hostname
        self.interval = interval
        self.state_dir = state_dir
        self.retention = retention
        self.timeout = timeout
        self.listeners = list(listeners)
        self.clock = clock
        self.monotonic = monotonic
        self._latest: Snapshot | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def latest(self) -> Snapshot | None:
        return self._latest

    def ready(self) -> bool:
        """True once a first snapshot has been published."""
        return self._latest is not None

    def run_once(self) -> Snapshot:
        snapshot = collect_all(
            self.collectors,
            hostname=self.hostname,
            timeout=self.timeout,
            clock=self.clock,
            monotonic=self.monotonic,
        )
        self._latest = snapshot
        if self.state_dir is not None:
            try:
                write_snapshot(self.state_dir, snapshot, self.retention)
            except OSError as exc:  # a full disk must not stop the eyes: publish anyway
                log.warning("cannot write snapshot to %s: %s", self.state_dir, exc)
        for listener in self.listeners:
            try:
                listener(snapshot)
            except Exception:
                log.exception("snapshot listener %r failed", listener)
        return snapshot

    def _run(self) -> None:
        while not self._stop.is_set():
            started = self.monotonic()
            try:
                self.run_once()
            except Exception:  # collect_all contains collector failures; this is a bug
                log.exception("collection cycle failed")
            self._stop.wait(max(0.0, self.interval - (self.monotonic() - started)))

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._run, name="macha-collection", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the loop to end and wait for the cycle in flight (collectors are bounded)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
