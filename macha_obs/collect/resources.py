"""Resources via psutil: CPU seconds by mode, memory, swap, load averages, as raw values.

No ratios over the collection interval in the metrics: Prometheus' rate() over CPU seconds
gives the busy share over whatever window the reader wants, and rules divide the load by
the CPU count. The findings (memory, CPU, load, swap) judge by the same thresholds as the
rules rendered from the config; the CPU's busy share is over the last collection interval,
so the collector keeps the previous CPU seconds. A busy host is a finding once it has been
busy for SUSTAINED seconds, as the rules' `for: 15m` (a build, a backup, a shared CI
machine's burst is not one): the collector keeps when each condition began.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

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


# How long CPU, load or swap must stay over their thresholds to be a finding: the rules'
# `for: 15m` (MachaCpuBusy, MachaLoadHigh, MachaSwapHigh), so the two agree.
SUSTAINED = 900.0
_BUSY = frozenset({FindingKind.CPU_HIGH, FindingKind.LOAD_HIGH, FindingKind.SWAP_HIGH})

# CPU time that is not work: a CPU waiting on I/O or for its hypervisor is not busy
IDLE_MODES = frozenset({"idle", "iowait", "steal"})


@dataclass(frozen=True)
class Thresholds:
    """What counts as too much, from the config (the rules use the same numbers)."""

    memory: float = 0.90
    cpu_busy: float = 0.95
    load_per_cpu: float = 2.0
    swap: float = 0.80


def cpu_busy_ratio(before: Mapping[str, float], after: Mapping[str, float]) -> float | None:
    """The share of CPU time spent working between two readings; None when no time passed
    or a counter went back (a new boot, a CPU taken offline)."""
    modes = set(before) & set(after)
    deltas = {m: after[m] - before[m] for m in modes}
    total = sum(deltas.values())
    if total <= 0 or any(d < 0 for d in deltas.values()):
        return None
    idle = sum(d for m, d in deltas.items() if m in IDLE_MODES)
    return max(0.0, min(1.0, 1.0 - idle / total))


def _busy_findings(raw: RawResources, busy: float | None, limits: Thresholds) -> list[Finding]:
    findings = []
    if busy is not None and busy >= limits.cpu_busy:
        findings.append(
            Finding(
                kind=FindingKind.CPU_HIGH,
                subject="cpu",
                summary=f"CPU {busy:.0%} busy (threshold {limits.cpu_busy:.0%})",
                details={"busy_ratio": round(busy, 4), "cpus": raw.cpu_count},
            )
        )
    per_cpu = raw.load[2] / max(1, raw.cpu_count)
    if per_cpu >= limits.load_per_cpu:
        findings.append(
            Finding(
                kind=FindingKind.LOAD_HIGH,
                subject="load",
                summary=f"15-minute load {raw.load[2]:.2f} on {raw.cpu_count} CPU(s) "
                f"(threshold {limits.load_per_cpu:g} per CPU)",
                details={"load15_per_cpu": round(per_cpu, 3), "cpus": raw.cpu_count},
            )
        )
    if raw.swap_total > 0:
        swapped = raw.swap_used / raw.swap_total
        if swapped >= limits.swap:
            findings.append(
                Finding(
                    kind=FindingKind.SWAP_HIGH,
                    subject="swap",
                    summary=f"swap {swapped:.0%} used (threshold {limits.swap:.0%})",
                    details={"used_ratio": round(swapped, 4), "used_bytes": raw.swap_used},
                )
            )
    return findings


def summarize_resources(
    raw: RawResources,
    memory_pressure_threshold: float,
    *,
    limits: Thresholds | None = None,
    previous_cpu: Mapping[str, float] | None = None,
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
    busy = cpu_busy_ratio(previous_cpu, raw.cpu_seconds) if previous_cpu is not None else None
    findings += _busy_findings(raw, busy, limits or Thresholds(memory=memory_pressure_threshold))
    return reading, findings


@dataclass
class ResourcesCollector:
    name = "resources"

    memory_pressure_threshold: float = 0.90
    limits: Thresholds | None = None
    fetch: Callable[[], RawResources] = fetch_resources
    sustained: float = SUSTAINED
    clock: Callable[[], float] = time.monotonic
    _previous_cpu: Mapping[str, float] | None = field(default=None, init=False)
    _since: dict[FindingKind, float] = field(default_factory=dict, init=False)

    def collect(self) -> tuple[ResourcesReading, list[Finding]]:
        raw = self.fetch()
        limits = self.limits or Thresholds(memory=self.memory_pressure_threshold)
        reading, findings = summarize_resources(
            raw, limits.memory, limits=limits, previous_cpu=self._previous_cpu
        )
        self._previous_cpu = dict(raw.cpu_seconds)
        return reading, self._held(findings)

    def _held(self, findings: list[Finding]) -> list[Finding]:
        """The busy findings whose condition has held for `sustained` seconds."""
        now = self.clock()
        over = {f.kind for f in findings if f.kind in _BUSY}
        self._since = {k: self._since.get(k, now) for k in over}
        return [
            f
            for f in findings
            if f.kind not in _BUSY or now - self._since[f.kind] >= self.sustained
        ]
