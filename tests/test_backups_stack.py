"""Backups under a real Prometheus: the real exporter, fed the lab systemd's reading of a
failing, a never-run and a successful backup, is scraped, and the rendered rules fire for
the failed and the stale ones, never for the one that succeeded."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from macha_obs.collect.backups import DAY, BackupsCollector
from macha_obs.collect.base import collect_all
from macha_obs.collect.meta import MemoryMeta
from macha_obs.config import Config
from macha_obs.metrics import SnapshotCollector
from macha_obs.models import Snapshot
from macha_obs.server import make_app, shutdown, start_server
from macha_obs.setup.rules import HOST_RULES, write_rules
from macha_obs.systemd.bus import IsolatedBus
from tests.harness.labsd import LabSystemd
from tests.harness.stack import Prometheus, poll
from tests.test_backups_lab import PATTERNS, UnitFactory, lab_backups

pytestmark = [pytest.mark.systemd, pytest.mark.stack]

HOST = "testhost"


@pytest.fixture
def lab_reading(systemd_container: LabSystemd, unit_factory: UnitFactory) -> Snapshot:
    """The lab's backups as the collector reads them, first seen three days ago."""
    lab_backups(systemd_container, unit_factory)
    now = [time.time() - 3 * DAY]
    bus = IsolatedBus(systemd_container.bus_address, timeout=20)
    try:
        collector = BackupsCollector(
            MemoryMeta(), patterns=PATTERNS, grace=6 * 3600, bus=bus, clock=lambda: now[0]
        )
        collect_all([collector], hostname=HOST)
        now[0] = time.time()
        return collect_all([collector], hostname=HOST)
    finally:
        bus.close()


@pytest.fixture
def exporter(lab_reading: Snapshot) -> Iterator[int]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: lab_reading))
    server, thread = start_server("127.0.0.1", 0, make_app(registry))
    try:
        yield server.server_port
    finally:
        shutdown(server, thread)


def test_backup_rules_fire_in_a_real_prometheus_scraping_the_exporter(
    exporter: int,
    prometheus_factory: Callable[[str, list[Path]], Prometheus],
    tmp_path: Path,
) -> None:
    rules = [p for p in write_rules(Config(), tmp_path / "rules") if p.name == HOST_RULES]
    config = (
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
        f"  - job_name: macha\n    static_configs: [{{targets: ['127.0.0.1:{exporter}']}}]\n"
        f"    relabel_configs: [{{target_label: instance, replacement: {HOST}}}]\n"
    )
    prometheus = prometheus_factory(config, rules)
    prometheus.wait_targets_up(1)

    def backup_alerts() -> set[tuple[str, str]]:
        return {
            (a["labels"]["alertname"], a["labels"]["unit"])
            for a in prometheus.alerts()
            if a["labels"]["alertname"].startswith("MachaBackup")
        }

    want = {
        ("MachaBackupFailed", "restic-backups-demo.service"),
        ("MachaBackupStale", "restic-backups-demo.service"),
        ("MachaBackupStale", "restic-backups-never.service"),
    }
    assert poll(lambda: want <= backup_alerts(), 60), backup_alerts()
    # the successful backup raises nothing: its series are there, each rule's test is false
    ok = 'unit="borgbackup-job-ok.service"'
    assert prometheus.query(f"macha_backup_last_run_success{{{ok}}} == 1")
    assert prometheus.query(f"macha_backup_last_run_success{{{ok}}} == 0") == []
    age = f"time() - macha_backup_last_success_timestamp_seconds{{{ok}}}"
    assert prometheus.query(f"{age} < 600")
    stale = f"{age} > macha_backup_expected_interval_seconds{{{ok}}} + 21600"
    assert prometheus.query(stale) == []
    assert backup_alerts() == want
    for alert in prometheus.alerts():
        if alert["labels"]["alertname"] == "MachaBackupFailed":
            assert alert["labels"]["macha_finding"] == "backup_failed"
            assert alert["labels"]["instance"] == HOST
