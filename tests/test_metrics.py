"""The metrics room as a whole: every counter's label combinations at 0 before any event,
histogram buckets, process_* metrics, the whole scrape under promtool, and a room that
imports nothing above it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from macha_obs.agent.llm import ERROR_KINDS, LlmMetrics
from macha_obs.config import AutonomyLevel
from macha_obs.intake.webhook import DELIVERY_RESULTS, ReceiverStats
from macha_obs.metrics import (
    ACTION_DURATION_BUCKETS,
    ListenerCollector,
    LlmCollector,
    LoopStats,
    PersistentState,
    SelfCollector,
    WebhookCollector,
    build_registry,
    scrape_text,
)
from macha_obs.metrics.sidecar import action_kinds
from macha_obs.models import (
    Assessment,
    Decision,
    DecisionSource,
    ExecutionResult,
    Outcome,
    RestartUnit,
    Risk,
    Verdict,
)
from macha_obs.server import LISTENER_OUTCOMES, ListenerStats

METRICS = Path(__file__).resolve().parents[1] / "macha_obs" / "metrics"
LEVEL = AutonomyLevel.AUTO_SAFE


def sidecar_collectors(
    loop: LoopStats | None = None, llm: LlmMetrics | None = None
) -> list[Collector]:
    """The sidecar's own collectors as `serve` registers them, on fresh stats."""
    state = PersistentState(0, False, LEVEL, LEVEL)
    return [
        SelfCollector(loop or LoopStats(), lambda: state, dict),
        WebhookCollector(ReceiverStats()),
        LlmCollector(llm or LlmMetrics()),
        ListenerCollector(ListenerStats()),
    ]


def sidecar_registry(
    loop: LoopStats | None = None, llm: LlmMetrics | None = None
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    for collector in sidecar_collectors(loop, llm):
        registry.register(collector)
    return registry


def counters(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every counter family's `_total` samples: (labels, value)."""
    return {
        m.name: [(s.labels, s.value) for s in m.samples if s.name.endswith("_total")]
        for m in registry.collect()
        if m.type == "counter"
    }


def test_every_counter_is_at_zero_for_every_known_label_set_before_any_event() -> None:
    families = counters(sidecar_registry())
    kinds = action_kinds()
    expected = {
        "macha_decisions": len(DecisionSource) * len(Assessment),
        "macha_actions": len(kinds) * 2,
        "macha_policy_verdicts": len(Outcome),
        "macha_rate_limited_actions": 1,
        "macha_escalations": 1,
        "macha_cycle_errors": 1,
        "macha_cycles": 1,
        "macha_webhook_deliveries": len(DELIVERY_RESULTS),
        "macha_webhook_alerts": 3,
        "macha_webhook_truncated_alerts": 1,
        "macha_llm_requests": 1 + len(ERROR_KINDS),
        "macha_llm_tokens": 2,
        "macha_listener_connections": len(LISTENER_OUTCOMES),
    }
    assert {name: len(samples) for name, samples in families.items()} == expected
    for name, samples in families.items():
        assert all(value == 0 for _, value in samples), name
        label_sets = [tuple(sorted(labels.items())) for labels, _ in samples]
        assert len(set(label_sets)) == len(label_sets), f"{name}: a label set twice"
    actions = {(labels["kind"], labels["result"]) for labels, _ in families["macha_actions"]}
    assert ("nix_rebuild", "failed") in actions
    assert ("restart_unit", "verified") in actions
    outcomes = {labels["outcome"] for labels, _ in families["macha_llm_requests"]}
    assert outcomes == {"ok", *ERROR_KINDS}


def test_the_action_kinds_are_the_action_union() -> None:
    assert action_kinds()[:3] == ("restart_unit", "start_unit", "reset_failed")
    assert {"nix_rebuild", "nix_gc", "journal_vacuum", "config_change"} <= set(action_kinds())


def test_histograms_have_every_bucket_before_and_after_observations() -> None:
    llm, loop = LlmMetrics(), LoopStats()
    get = sidecar_registry(loop, llm).get_sample_value
    llm_bucket = "macha_llm_request_duration_seconds_bucket"
    for le in ("0.1", "1.0", "60.0", "600.0", "+Inf"):
        assert get(llm_bucket, {"le": le}) == 0.0, le
    for kind in action_kinds():
        for le in [*(str(b) for b in ACTION_DURATION_BUCKETS), "+Inf"]:
            labels = {"kind": kind, "le": le}
            assert get("macha_action_duration_seconds_bucket", labels) == 0.0, labels

    llm.observe("ok", 3.0, 10, 2)
    llm.observe("timeout", 600.0)  # on a bound: counted in that bucket (le is <=)
    llm.observe("timeout", 900.0)
    action = RestartUnit(unit="nginx.service")
    verdict = Verdict(outcome=Outcome.EXECUTE, risk=Risk.LOW, reason="", autonomy=LEVEL)
    loop.count_handled(
        action, verdict, ExecutionResult(ok=True, verified=True, duration_seconds=1.5)
    )
    loop.count_decision(
        Decision(
            incident_id="i1",
            source=DecisionSource.RUNBOOKS,
            assessment=Assessment.FAILING,
            summary="x",
        )
    )

    get = sidecar_registry(loop, llm).get_sample_value
    assert [get(llm_bucket, {"le": le}) for le in ("2.5", "5.0", "300.0", "600.0", "+Inf")] == [
        0.0,
        1.0,
        1.0,
        2.0,
        3.0,
    ]
    assert get("macha_llm_request_duration_seconds_count") == 3.0
    assert get("macha_llm_request_duration_seconds_sum") == 1503.0
    assert get("macha_llm_requests_total", {"outcome": "timeout"}) == 2.0
    restart = {"kind": "restart_unit"}
    assert get("macha_action_duration_seconds_bucket", {**restart, "le": "1.0"}) == 0.0
    assert get("macha_action_duration_seconds_bucket", {**restart, "le": "2.5"}) == 1.0
    assert get("macha_action_duration_seconds_sum", restart) == 1.5
    assert get("macha_action_duration_seconds_count", {"kind": "nix_gc"}) == 0.0
    assert get("macha_actions_total", {"kind": "restart_unit", "result": "verified"}) == 1.0
    assert get("macha_actions_total", {"kind": "restart_unit", "result": "failed"}) == 0.0
    decided = {"source": "runbooks", "assessment": "failing"}
    assert get("macha_decisions_total", decided) == 1.0
    assert get("macha_policy_verdicts_total", {"outcome": "execute"}) == 1.0


def test_the_registry_exports_the_process_itself() -> None:
    get = build_registry(lambda: None).get_sample_value
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ):
        value = get(name)
        assert value is not None, name
        assert value >= 0, name
    assert (get("process_resident_memory_bytes") or 0) > 1_000_000
    assert (get("process_open_fds") or 0) >= 3  # stdin, stdout, stderr at least
    assert b"python_info{" in scrape_text(build_registry(lambda: None))
    assert build_registry(lambda: None, process=False).get_sample_value("process_open_fds") is None


@pytest.mark.stack
def test_the_whole_scrape_passes_promtool_lint(promtool: str) -> None:
    text = scrape_text(build_registry(lambda: None, extra=sidecar_collectors()))
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=60, check=False
    )
    assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()
    assert b"process_cpu_seconds_total" in text
    assert b'macha_action_duration_seconds_bucket{kind="nix_rebuild",le="+Inf"} 0.0' in text


# ------------------------------------------------------------------ layering

# DESIGN.md: metrics/ may import models (and what models may: config, errors).
# config reads the protected classes (protected.py), below it on the map
ALLOWED: tuple[str, ...] = (
    "macha_obs.metrics",
    "macha_obs.models",
    "macha_obs.config",
    "macha_obs.protected",
    "macha_obs.errors",
)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "macha_obs":  # `from macha_obs import x`: x may be a module
                names |= {f"macha_obs.{alias.name}" for alias in node.names}
            else:
                names.add(node.module)
    return names


def _allowed(name: str) -> bool:
    return name == "macha_obs.__version__" or any(
        name == room or name.startswith(room + ".") for room in ALLOWED
    )


def test_the_metrics_room_imports_nothing_above_it() -> None:
    modules = sorted(METRICS.glob("*.py"))
    assert len(modules) >= 5
    for module in modules:
        ours = {n for n in _imports(module) if n.split(".")[0] == "macha_obs"}
        assert {n for n in ours if not _allowed(n)} == set(), module.name


def test_importing_the_metrics_room_loads_no_room_above_it() -> None:
    """Transitively too: a fresh interpreter imports the room and lists what came with it."""
    code = (
        "import sys, macha_obs.metrics\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith('macha_obs')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    above = [m for m in loaded if m != "macha_obs" and not _allowed(m)]
    assert above == [], "the metrics room pulled in rooms above it"
    assert "macha_obs.metrics.sidecar" in loaded
