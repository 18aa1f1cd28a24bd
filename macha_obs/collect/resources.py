"""Resources via psutil: CPU seconds by mode, memory, swap, load averages, as raw values.

No ratios over the collection interval: Prometheus' rate() over CPU seconds gives the busy
share over whatever window the reader wants, and rules divide the load by the CPU count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import psutil

from macha_obs.models import CPU_MODES, Finding, FindingKind, ResourcesReading, Severity


@dataclass(frozen=True)
class RawResources:
    cpu_seconds: Mapping[str, float]
    cpu_count: int
    memory_total: int
    memory_available: int
    swap_total: int
    swap_used: int
    load: tuple[float, float, float]


def cpu_seconds_by_mode(times: object) -> dict[str, float]:
    """psutil's cpu_times() as {mode: seconds} over CPU_MODES; a mode the platform does
    not count is left out, not reported as 0."""
    return {mode: float(getattr(times, mode)) for mode in CPU_MODES if hasattr(times, mode)}


def fetch_resources() -> RawResources:
    memory = psutil.virtual_memory()
    swap = psutil.swap_memory()
    return RawResources(
        cpu_seconds=cpu_seconds_by_mode(psutil.cpu_times()),
        cpu_count=psutil.cpu_count() or 1,
        memory_total=memory.total,
        memory_available=memory.available,
        swap_total=swap.total,
        swap_used=swap.used,
        load=psutil.getloadavg(),
    )


def summarize_resources(
    raw: RawResources, memory_pressure_threshold: float
) -> tuple[ResourcesReading, list[Finding]]:
    reading = ResourcesReading(
        cpu_count=max(1, raw.cpu_count),
        cpu_seconds=dict(raw.cpu_seconds),
        memory_total_bytes=raw.memory_total,
        memory_available_bytes=raw.memory_available,
        swap_total_bytes=raw.swap_total,
        swap_used_bytes=raw.swap_used,
        load1=raw.load[0],
        load5=raw.load[1],
        load15=raw.load[2],
    )
    findings = []
    if raw.memory_total > 0:
        used = 1.0 - raw.memory_available / raw.memory_total
        if used >= memory_pressure_threshold:
            findings.append(
                Finding(
                    kind=FindingKind.MEMORY_PRESSURE,
                    severity=Severity.CRITICAL if used >= 0.97 else Severity.WARNING,
                    subject="memory",
                    summary=f"memory {used:.0%} used (threshold {memory_pressure_threshold:.0%})",
                    details={"used_ratio": round(used, 4), "available_bytes": raw.memory_available},
                )
            )
    return reading, findings


class ResourcesCollector:
    name = "resources"

    def __init__(self, *, memory_pressure_threshold: float = 0.90) -> None:
        self.memory_pressure_threshold = memory_pressure_threshold

    def collect(self) -> tuple[ResourcesReading, list[Finding]]:
        return summarize_resources(fetch_resources(), self.memory_pressure_threshold)
