"""Our own registry (never prometheus_client's global one): the host exporter, the
process's own resources, and whatever self-metrics the caller adds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.registry import Collector

from macha_obs.metrics.host import SnapshotCollector, SnapshotSource


def build_registry(
    source: SnapshotSource,
    *,
    extra: Iterable[Collector] = (),
    build_info: Mapping[str, str] | None = None,
    process: bool = True,
    node_exporter: bool = False,
) -> CollectorRegistry:
    """The snapshot view, then `extra`; with `process`, the sidecar's own CPU, memory and
    file descriptors (process_*, from /proc/self, as every Prometheus client exports them)
    and python_info. The children it starts (the D-Bus workers) are not included."""
    registry = CollectorRegistry(auto_describe=False)
    # node_exporter runs beside us: leave out the families it exports (host.py)
    registry.register(SnapshotCollector(source, build_info=build_info, node_exporter=node_exporter))
    for collector in extra:
        registry.register(collector)
    if process:
        registry.register(ProcessCollector(registry=None))
        registry.register(PlatformCollector(registry=None))
    return registry
