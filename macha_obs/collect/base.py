"""The collector contract and one collection cycle: every collector timed, none sinks the rest."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from pydantic import BaseModel

from macha_obs.errors import MachaError
from macha_obs.models import SNAPSHOT_READINGS, CollectorRun, Finding, Snapshot

log = logging.getLogger(__name__)

# A collector whose I/O wedges (a dead NFS mount in statvfs, a resolver that never
# answers) is abandoned after this long; its daemon thread costs a thread, not a cycle.
DEFAULT_COLLECTOR_TIMEOUT = 30.0


class CollectorError(MachaError):
    """A collector could not produce a reading; the message says why."""


class Collector(Protocol):
    """One signal source. `name` is the Snapshot field its reading fills."""

    name: str

    def collect(self) -> tuple[BaseModel, list[Finding]]: ...


def _run_bounded(collector: Collector, timeout: float) -> tuple[BaseModel, list[Finding]]:
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = collector.collect()
        except BaseException as exc:  # reported as this collector's failure, never raised
            box["error"] = exc

    worker = threading.Thread(target=work, name=f"macha-collect-{collector.name}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise CollectorError(f"did not finish within {timeout:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def collect_all(
    collectors: Sequence[Collector],
    *,
    hostname: str,
    timeout: float = DEFAULT_COLLECTOR_TIMEOUT,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> Snapshot:
    """Run every collector once, each bounded by `timeout`, and assemble the Snapshot."""
    taken_at = clock()
    runs: dict[str, CollectorRun] = {}
    readings: dict[str, BaseModel] = {}
    findings: list[Finding] = []
    for collector in collectors:
        if collector.name not in SNAPSHOT_READINGS:
            raise ValueError(f"collector {collector.name!r} has no Snapshot field")
        started = monotonic()
        try:
            reading, found = _run_bounded(collector, timeout)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("collector %s failed: %s", collector.name, error)
            runs[collector.name] = CollectorRun(
                success=False, duration_seconds=max(0.0, monotonic() - started), error=error
            )
            continue
        runs[collector.name] = CollectorRun(
            success=True, duration_seconds=max(0.0, monotonic() - started)
        )
        readings[collector.name] = reading
        findings.extend(found)
    return Snapshot.model_validate(
        {
            "taken_at": taken_at,
            "hostname": hostname,
            "collectors": runs,
            "findings": findings,
            **readings,
        }
    )
