"""Resources via psutil: CPU busy share, memory, swap, load per CPU."""

from __future__ import annotations

from dataclasses import dataclass

import psutil

from macha_obs.models import Finding, FindingKind, ResourcesReading, Severity


@dataclass(frozen=True)
class CpuTimes:
    busy: float  # seconds, every mode but idle and iowait
    total: float


@dataclass(frozen=True)
class RawResources:
    cpu: CpuTimes
    cpu_count: int
    memory_total: int
    memory_available: int
    swap_total: int
    swap_used: int
    load: tuple[float, float, float]


def fetch_resources() -> RawResources:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    # guest time is already inside user time on Linux: leave it out of the total
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    memory = psutil.virtual_memory()
    swap = psutil.swap_memory()
    return RawResources(
        cpu=CpuTimes(busy=total - idle, total=total),
        cpu_count=psutil.cpu_count() or 1,
        memory_total=memory.total,
        memory_available=memory.available,
        swap_total=swap.total,
        swap_used=swap.used,
        load=psutil.getloadavg(),
    )


def cpu_usage_ratio(previous: CpuTimes | None, current: CpuTimes) -> float:
    """Busy share between two samples; since boot when there is no previous one."""
    busy, total = current.busy, current.total
    if previous is not None and current.total > previous.total:
        busy, total = current.busy - previous.busy, current.total - previous.total
    return min(1.0, max(0.0, busy / total)) if total > 0 else 0.0


def summarize_resources(
    raw: RawResources, previous: CpuTimes | None, memory_pressure_threshold: float
) -> tuple[ResourcesReading, list[Finding]]:
    cpus = max(1, raw.cpu_count)
    reading = ResourcesReading(
        cpu_count=cpus,
        cpu_usage_ratio=cpu_usage_ratio(previous, raw.cpu),
        memory_total_bytes=raw.memory_total,
        memory_available_bytes=raw.memory_available,
        swap_total_bytes=raw.swap_total,
        swap_used_bytes=raw.swap_used,
        load1=raw.load[0] / cpus,
        load5=raw.load[1] / cpus,
        load15=raw.load[2] / cpus,
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
        self._previous: CpuTimes | None = None

    def collect(self) -> tuple[ResourcesReading, list[Finding]]:
        raw = fetch_resources()
        result = summarize_resources(raw, self._previous, self.memory_pressure_threshold)
        self._previous = raw.cpu
        return result
