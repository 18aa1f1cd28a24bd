"""Eyes: one collector per signal source, a collection cycle (CollectionLoop), snapshot files."""

from macha_obs.collect.base import Collector, CollectorError, collect_all
from macha_obs.collect.loop import CollectionLoop
from macha_obs.collect.setup import build_collectors
from macha_obs.collect.snapshots import latest_snapshot, write_snapshot

__all__ = [
    "CollectionLoop",
    "Collector",
    "CollectorError",
    "build_collectors",
    "collect_all",
    "latest_snapshot",
    "write_snapshot",
]
