"""The host exporter: families from a fixture snapshot; the golden /metrics (the whole
scrape, self-metrics included) and promtool's lint of it; the fast renderer."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from macha_obs.agent.llm import LlmMetrics
from macha_obs.config import AutonomyLevel
from macha_obs.intake.webhook import ReceiverStats
from macha_obs.metrics import (
    UNIT_ACTIVE_STATES,
    IntakeDropCollector,
    ListenerCollector,
    LlmCollector,
    LoginCollector,
    LoopStats,
    PersistentState,
    SelfCollector,
    SnapshotCollector,
    WebhookCollector,
    build_registry,
    scrape_text,
)
from macha_obs.metrics.host import NODE_EXPORTER_FAMILIES
from macha_obs.models import NixosReading, Snapshot
from macha_obs.server import ListenerStats
from macha_obs.store.intake_bounds import Drops
from macha_obs.web import LoginStats
from tests.harness.eyes_support import FIXTURES, fixture_snapshot

GOLDEN = FIXTURES / "golden.metrics"
BUILD = {"version": "test", "python_version": "test"}


def exposition(snapshot: Snapshot | None) -> str:
    registry = build_registry(lambda: snapshot, build_info=BUILD, process=False)
    return generate_latest(registry).decode()


def test_unit_state_is_one_series_per_state() -> None:
    registry = build_registry(fixture_snapshot)
    for state in UNIT_ACTIVE_STATES:
        value = registry.get_sample_value(
            "macha_systemd_unit_state", {"unit": "nginx.service", "state": state}
        )
        assert value == (1.0 if state == "failed" else 0.0)
    assert registry.get_sample_value("macha_systemd_units_failed") == 1.0
    assert (
        registry.get_sample_value("macha_systemd_unit_restarts_total", {"unit": "app.service"})
        == 7.0
    )


def test_collector_runs_findings_and_readings() -> None:
    registry = build_registry(fixture_snapshot)
    get = registry.get_sample_value
    assert get("macha_scrape_collector_success", {"collector": "nixos"}) == 0.0
    assert get("macha_scrape_collector_success", {"collector": "systemd"}) == 1.0
    assert get("macha_scrape_collector_duration_seconds", {"collector": "disks"}) == 0.01
    assert get("macha_findings", {"kind": "unit_failed"}) == 1.0
    assert get("macha_findings", {"kind": "memory_pressure"}) == 0.0
    fs = {"mountpoint": "/", "device": "/dev/nvme0n1p2", "fstype": "ext4"}
    assert get("macha_filesystem_avail_bytes", fs) == 5e9
    assert get("macha_filesystem_readonly", fs) == 0.0
    assert get("macha_journal_errors_total", {"unit": "nginx.service"}) == 12.0
    assert get("macha_journal_entries_read_total") == 120.0
    assert get("macha_dns_probe_success", {"name": "example.org"}) == 0.0
    assert get("macha_tcp_probe_success", {"target": "db.internal:5432"}) == 1.0
    assert get("macha_boot_unexpected_reboot") == 1.0
    assert get("macha_snapshot_timestamp_seconds") == 1764000200.5
    # the failed nixos collector left no reading: no nixos series, not zeros
    assert get("macha_nixos_present") is None


def test_raw_values_not_ratios_over_the_collection_interval() -> None:
    """CPU seconds by mode and the kernel's load averages: rate() and the rules divide."""
    get = build_registry(fixture_snapshot).get_sample_value
    assert get("macha_cpu_seconds_total", {"mode": "idle"}) == 12000.0
    assert get("macha_cpu_seconds_total", {"mode": "steal"}) == 0.0
    assert (get("macha_load1"), get("macha_load5"), get("macha_load15")) == (2.0, 1.0, 0.5)
    assert get("macha_cpus") == 4.0
    text = exposition(fixture_snapshot())
    for gone in ("macha_cpu_usage_ratio", "macha_load_per_cpu", "macha_journal_recent_errors"):
        assert gone not in text
    assert "# TYPE macha_cpu_seconds_total counter" in text
    assert "# TYPE macha_journal_entries_read_total counter" in text


def families(registry: CollectorRegistry) -> set[str]:
    return {m.name for m in registry.collect()}


def test_beside_node_exporter_its_families_are_left_out_and_nothing_else() -> None:
    """node_exporter = true: no second series for what node_exporter already says; the
    sidecar's own families (units, journal, probes, findings, boot judgement) stay."""
    full, beside = CollectorRegistry(), CollectorRegistry()
    full.register(SnapshotCollector(fixture_snapshot, build_info=BUILD))
    beside.register(SnapshotCollector(fixture_snapshot, build_info=BUILD, node_exporter=True))
    left_out = families(full) - families(beside)
    assert left_out == NODE_EXPORTER_FAMILIES
    assert families(beside) == families(full) - NODE_EXPORTER_FAMILIES
    assert not any(
        name.startswith(
            ("macha_filesystem", "macha_memory", "macha_swap", "macha_load", "macha_cpu")
        )
        for name in families(beside)
    )
    assert {"macha_boot_unexpected_reboot", "macha_journal_errors", "macha_systemd_unit_state",
            "macha_findings"} <= families(beside)  # fmt: skip
    # the findings still come from the sidecar's own collection
    get = beside.get_sample_value
    assert get("macha_findings", {"kind": "unit_failed"}) == 1.0


def test_no_snapshot_yet_gives_build_info_only() -> None:
    text = exposition(None)
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert samples == ['macha_build_info{python_version="test",version="test"} 1.0']


def test_nixos_families() -> None:
    snapshot = fixture_snapshot().model_copy(
        update={
            "nixos": NixosReading(
                is_nixos=True,
                generation=12,
                generation_timestamp=1.7e9,
                generations=5,
                store_size_bytes=1234,
            )
        }
    )
    get = build_registry(lambda: snapshot).get_sample_value
    assert get("macha_nixos_present") == 1.0
    assert get("macha_nixos_generation") == 12.0
    assert get("macha_nix_store_size_bytes") == 1234.0
    off = snapshot.model_copy(update={"nixos": NixosReading(is_nixos=False)})
    get = build_registry(lambda: off).get_sample_value
    assert (get("macha_nixos_present"), get("macha_nixos_generations")) == (0.0, None)


class SelfMetrics(Collector):
    """Stands in for another room's self-metrics, registered beside ours."""

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("macha_pending_approvals", "pending approvals", value=2)


def test_another_collector_registers_beside_ours() -> None:
    registry = build_registry(fixture_snapshot, extra=[SelfMetrics()])
    assert registry.get_sample_value("macha_pending_approvals") == 2.0
    assert registry.get_sample_value("macha_cpus") == 4.0


def test_scrapes_keep_no_state() -> None:
    current = [fixture_snapshot()]
    registry = build_registry(lambda: current[0], build_info=BUILD, process=False)
    first = generate_latest(registry)
    current[0] = current[0].model_copy(update={"systemd": None})
    assert b"macha_systemd_unit_state" not in generate_latest(registry)
    current[0] = fixture_snapshot()
    assert generate_latest(registry) == first


def whole_scrape(snapshot: Snapshot) -> str:
    """/metrics as `serve` builds it, before any event, but for process_* and python_info
    (the only values that differ from run to run)."""
    level = AutonomyLevel.AUTO_SAFE
    state = PersistentState(0, False, level, level)
    extra = [
        SelfCollector(LoopStats(), lambda: state, dict),
        WebhookCollector(ReceiverStats()),
        IntakeDropCollector(Drops()),
        LlmCollector(LlmMetrics()),
        ListenerCollector(ListenerStats()),
        LoginCollector(LoginStats()),
    ]
    registry = build_registry(lambda: snapshot, extra=extra, build_info=BUILD, process=False)
    return scrape_text(registry).decode()


def test_golden_metrics() -> None:
    """The whole /metrics: the host exporter over the fixture snapshot and the sidecar's
    own metrics, every counter and histogram at 0."""
    text = whole_scrape(fixture_snapshot())
    if os.environ.get("MACHA_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "set MACHA_UPDATE_GOLDEN=1 to accept a deliberate change"


@pytest.mark.stack
def test_golden_metrics_pass_promtool_lint(promtool: str) -> None:
    check = subprocess.run(
        [promtool, "check", "metrics"],
        input=GOLDEN.read_bytes(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()


# ------------------------------------------------------------------ the fast renderer


class Assorted(Collector):
    """Families the fast path must hand back to prometheus_client, and awkward values."""

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        odd = GaugeMetricFamily("macha_odd", "doc with \\ and\nnewline", labels=["b", "a"])
        odd.add_metric(['quote " back \\ nl \n', "ü"], float("nan"))
        odd.add_metric(["x", "y"], float("inf"))
        odd.add_metric(["x", "z"], 1e21)
        odd.add_metric(["x", "w"], -0.0)
        yield odd
        yield GaugeMetricFamily("macha_plain", "no labels", value=3)
        created = CounterMetricFamily("macha_created", "with _created", labels=["k"])
        created.add_metric(["v"], 2, created=1700000000.0)
        yield created
        stamped = GaugeMetricFamily("macha_stamped", "with a timestamp")
        stamped.add_metric([], 1, timestamp=1700000000.5)
        yield stamped
        yield HistogramMetricFamily(
            "macha_hist", "histogram", buckets=[("1", 1), ("+Inf", 2)], sum_value=3
        )
        yield InfoMetricFamily("macha_about", "info", value={"a": "b"})


def test_render_is_byte_for_byte_prometheus_client() -> None:
    # no process_*: the sidecar's CPU seconds move between the two renderings
    registry = build_registry(fixture_snapshot, extra=[Assorted()], process=False)
    assert scrape_text(registry) == generate_latest(registry)
