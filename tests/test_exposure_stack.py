"""MachaServiceExposed in a real Prometheus scraping the real exporter fed the real lab
reading: the unhardened listener's alert fires, the hardened and the loopback services'
do not, and the exposure Prometheus stores is systemd-analyze's own."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from macha_obs.collect.base import collect_all
from macha_obs.collect.exposure import ExposureCollector, read_host_changes
from macha_obs.config import Config
from macha_obs.metrics import SnapshotCollector
from macha_obs.server import make_app, shutdown, start_server
from macha_obs.setup.rules import write_rules
from tests.harness.exposure_support import (
    HARDENED,
    LOOPBACK,
    OPEN,
    analyze_overall,
    lab_runner,
    start_services,
    unit_texts,
)
from tests.harness.labsd import LabSystemd
from tests.harness.stack import Prometheus, poll
from tests.harness.systemd_fixtures import UnitFactory

pytestmark = [pytest.mark.systemd, pytest.mark.stack]
HOST = "labhost"


def scrape_config(port: int) -> str:
    return (
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
        f"  - job_name: macha\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
        f"    relabel_configs: [{{target_label: instance, replacement: {HOST}}}]\n"
    )


def exposure_alerts(prometheus: Prometheus) -> dict[str, dict[str, Any]]:
    return {
        a["labels"]["unit"]: a
        for a in prometheus.alerts()
        if a["labels"].get("alertname") == "MachaServiceExposed"
    }


def test_the_exposed_rule_is_active_in_a_real_prometheus_for_the_unhardened_listener(
    systemd_container: LabSystemd,
    unit_factory: UnitFactory,
    prometheus_factory: Any,
    tmp_path: Path,
) -> None:
    lab = systemd_container
    start_services(lab, unit_factory)
    collector = ExposureCollector(
        address=lab.bus_address,
        runner=lab_runner(lab),
        changes=lambda: read_host_changes(tmp_path),
    )
    try:
        snapshot = collect_all([collector], hostname=HOST, timeout=60)
    finally:
        collector.bus.close()  # type: ignore[attr-defined]
    assert snapshot.exposure is not None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snapshot))
    server, thread = start_server("127.0.0.1", 0, make_app(registry))
    try:
        # the rules this config renders, with `for:` at 0s so the alert fires at its first
        # evaluation with data (its `for: 10m` is promtool's to test:
        # alert_rules/tests/macha-posture-exposure_test.yml)
        rules = write_rules(Config(hostname=HOST), tmp_path / "rules")
        for path in rules:
            path.write_text(re.sub(r"^(\s+)for: \S+$", r"\1for: 0s", path.read_text(), flags=re.M))
        prometheus: Prometheus = prometheus_factory(scrape_config(server.server_port), rules)
        prometheus.wait_targets_up(1, timeout=60)

        def firing() -> bool:
            alert = exposure_alerts(prometheus).get(OPEN)
            return alert is not None and alert["state"] == "firing"

        assert poll(firing, timeout=60, interval=0.2)
        alerts = exposure_alerts(prometheus)
        assert set(alerts) & {HARDENED, LOOPBACK} == set()
        alert = alerts[OPEN]
        assert alert["labels"]["instance"] == HOST
        assert alert["labels"]["macha_finding"] == "service_exposed"
        stored = prometheus.query(f'macha_unit_security_exposure{{unit="{OPEN}"}}')
        assert float(stored[0]["value"][1]) == analyze_overall(lab, OPEN)
        listening = prometheus.query("macha_unit_listening_non_loopback == 1")
        assert {r["metric"]["unit"] for r in listening} >= {OPEN, HARDENED}
        assert LOOPBACK not in {r["metric"]["unit"] for r in listening}
        assert set(unit_texts()) <= {
            r["metric"]["unit"] for r in prometheus.query("macha_unit_security_exposure")
        }
    finally:
        shutdown(server, thread)
