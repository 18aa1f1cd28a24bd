"""The metrics room: everything /metrics says, on our own registry.

    host.py      the host exporter: the latest Snapshot as metric families
    exposure.py  the exposure reading's families (host.py renders them)
    sidecar.py   the sidecar's own metrics: decisions, actions, loop, health, the ledger
    webhook.py   llm.py   listener.py   the intake, model and HTTP listener counters
    intake.py    what the intake's caps dropped
    web.py       the approvals page's refused logins
    stats.py     the small protocols those collectors read the counters through
    loop.py      LoopStats, the orchestrator's counters (the others live where they happen)
    registry.py  build_registry: the above plus process_* and python_info
    _exposition  the text renderer, private: callers ask for `scrape_text(registry)`

It imports `models` and `config` only: the rooms it measures hand it their counters
through the protocols in stats.py (tests/test_metrics_layering.py holds it to that).
"""

from macha_obs.metrics._exposition import CONTENT_TYPE, scrape_text
from macha_obs.metrics.host import UNIT_ACTIVE_STATES, SnapshotCollector, SnapshotSource
from macha_obs.metrics.intake import DropStatsView, IntakeDropCollector
from macha_obs.metrics.listener import ListenerCollector
from macha_obs.metrics.llm import LlmCollector
from macha_obs.metrics.loop import ACTION_DURATION_BUCKETS, LoopStats
from macha_obs.metrics.registry import build_registry
from macha_obs.metrics.sidecar import HEALTH_PROBLEMS, PersistentState, SelfCollector
from macha_obs.metrics.stats import (
    Histogram,
    ListenerStatsView,
    LlmStatsView,
    LoginStatsView,
    LoopCounts,
    LoopStatsView,
    WebhookStatsView,
)
from macha_obs.metrics.web import LoginCollector
from macha_obs.metrics.webhook import WebhookCollector

__all__ = [
    "ACTION_DURATION_BUCKETS",
    "CONTENT_TYPE",
    "HEALTH_PROBLEMS",
    "UNIT_ACTIVE_STATES",
    "DropStatsView",
    "Histogram",
    "IntakeDropCollector",
    "ListenerCollector",
    "ListenerStatsView",
    "LlmCollector",
    "LlmStatsView",
    "LoginCollector",
    "LoginStatsView",
    "LoopCounts",
    "LoopStats",
    "LoopStatsView",
    "PersistentState",
    "SelfCollector",
    "SnapshotCollector",
    "SnapshotSource",
    "WebhookCollector",
    "WebhookStatsView",
    "build_registry",
    "scrape_text",
]
