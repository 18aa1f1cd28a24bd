"""Beside node_exporter, under a real Prometheus: Debian's prometheus-node-exporter and the
sidecar's exporter (node_exporter = true) scraped together give one series per host fact,
the node_* rule variant's expressions return data from node_exporter's series, and the
sidecar's findings still come from its own collection."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client import CollectorRegistry

from macha_obs.collect import CollectionLoop, Collector
from macha_obs.collect.boot import BootCollector
from macha_obs.collect.disks import DisksCollector
from macha_obs.collect.meta import MemoryMeta
from macha_obs.collect.resources import ResourcesCollector
from macha_obs.config import Config
from macha_obs.metrics import SnapshotCollector
from macha_obs.metrics.host import NODE_EXPORTER_FAMILIES
from macha_obs.server import make_app, shutdown, start_server
from macha_obs.setup.rules import HOST_RULES, SERIES, write_rules
from tests.harness.labsd import wait_until
from tests.harness.stack import Prometheus, Server, poll

pytestmark = pytest.mark.stack

HOST = "testhost"
# each family the sidecar leaves out, and node_exporter's series for the same fact
SAME_FACT = {
    "macha_filesystem_avail_bytes": "node_filesystem_avail_bytes",
    "macha_filesystem_size_bytes": "node_filesystem_size_bytes",
    "macha_filesystem_readonly": "node_filesystem_readonly",
    "macha_filesystem_files_free": "node_filesystem_files_free",
    "macha_memory_available_bytes": "node_memory_MemAvailable_bytes",
    "macha_memory_total_bytes": "node_memory_MemTotal_bytes",
    "macha_swap_total_bytes": "node_memory_SwapTotal_bytes",
    "macha_load1": "node_load1",
    "macha_cpu_seconds_total": "node_cpu_seconds_total",
    "macha_boot_time_seconds": "node_boot_time_seconds",
}


class NodeExporter(Server):
    """Debian's prometheus-node-exporter with its default collectors, on loopback."""

    kind = "node_exporter"

    def argv(self, path: str) -> list[str]:
        return [path, f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]

    def _ready(self) -> bool:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError(f"node_exporter exited:\n{self.log_tail()}")
        return requests.get(f"{self.url}/metrics", timeout=2).status_code == 200


@pytest.fixture
def node_exporter_server(node_exporter: str, tmp_path: Path) -> Iterator[NodeExporter]:
    del node_exporter  # the fixture fails (or skips) when it is not installed
    with NodeExporter(tmp_path / "node_exporter") as server:
        yield server


@pytest.fixture
def sidecar_port(tmp_path: Path) -> Iterator[int]:
    """The sidecar's host collectors on this host, exported with node_exporter = true; the
    disks collector judges at a threshold this host is above, so it has a finding."""
    collectors: list[Collector] = [
        ResourcesCollector(),
        DisksCollector(fill_threshold=1e-6),
        BootCollector(MemoryMeta()),
    ]
    loop = CollectionLoop(collectors, hostname=HOST, interval=0.5, state_dir=tmp_path / "state")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(loop.latest, node_exporter=True))
    server, thread = start_server("127.0.0.1", 0, make_app(registry))
    loop.start()
    try:
        assert wait_until(loop.ready, timeout=30)
        yield server.server_port
    finally:
        loop.stop(timeout=30)
        shutdown(server, thread)


def prometheus_config(sidecar: int, node: int) -> str:
    """Both jobs name the host the same way (`instance`), as exporters/ does."""
    jobs = "".join(
        f"""  - job_name: {job}
    static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
    relabel_configs: [{{target_label: instance, replacement: {HOST}}}]
"""
        for job, port in (("macha", sidecar), ("node", node))
    )
    return f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{jobs}"


def names(prometheus: Prometheus, job: str) -> set[str]:
    return {
        r["metric"]["__name__"] for r in prometheus.query(f'group by (__name__) ({{job="{job}"}})')
    }


def returns_data(prometheus: Prometheus, expr: str) -> bool:
    return bool(prometheus.query(expr))


def has_data(prometheus: Prometheus, expr: str) -> Callable[[], bool]:
    """A condition to wait on: `expr` returns data (a rate or a trend needs two scrapes)."""
    return lambda: returns_data(prometheus, expr)


def test_beside_node_exporter_one_series_per_fact_and_the_node_rules_have_data(
    node_exporter_server: NodeExporter,
    sidecar_port: int,
    prometheus_factory: Callable[[str, list[Path]], Prometheus],
    tmp_path: Path,
) -> None:
    # the node_* variant, with memory, disk and inode thresholds this host is above: their
    # alerts go pending only if their expressions find node_exporter's series
    low = {"memory_pressure_threshold": 1e-6, "disk_fill_threshold": 1e-6, "inode_threshold": 1e-6}
    rules = write_rules(Config(node_exporter=True, **low), tmp_path / "rules")
    (host_rules,) = [p for p in rules if p.name == HOST_RULES]
    prometheus = prometheus_factory(
        prometheus_config(sidecar_port, node_exporter_server.port), rules
    )
    prometheus.wait_targets_up(2)

    # no host family twice: the sidecar exports none of node_exporter's, node_exporter has them
    sidecar, node = names(prometheus, "macha"), names(prometheus, "node")
    assert sidecar >= {
        "macha_findings",
        "macha_scrape_collector_success",
        "macha_boot_unexpected_reboot",
    }
    assert not {n.removesuffix("_total") for n in sidecar} & NODE_EXPORTER_FAMILIES
    assert not any(
        n.startswith(("macha_filesystem", "macha_memory", "macha_swap", "macha_load", "macha_cpu"))
        for n in sidecar
    )
    for ours, theirs in SAME_FACT.items():
        assert ours not in sidecar, ours
        assert theirs in node, theirs

    # the sidecar's findings still come from its own collection: a disk finding is exported
    # while its filesystem families are not
    finding = prometheus.query(
        f'macha_findings{{job="macha",instance="{HOST}",kind="disk_filling"}} >= 1'
    )
    assert finding, "the sidecar's own disk finding is missing"

    # the node_* variant: every node_* selector of its rules returns data from this host
    lines = host_rules.read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    selectors = set(re.findall(r"\bnode_[A-Za-z0-9_]+(?:\{[^}]*\})?", text))
    assert {
        SERIES[True]["fs_avail"],
        SERIES[True]["fs_readonly"],
        "node_boot_time_seconds",
    } <= selectors
    for selector in selectors:
        assert returns_data(prometheus, selector), selector

    # ... the parts of the rules that cannot be true on a healthy host return data too (a
    # trend once there are two scrapes)
    for trend in set(re.findall(r"predict_linear\(.*?\], \d+\)", text)):
        assert poll(has_data(prometheus, trend), 30), trend
    booted = f'time() - node_boot_time_seconds{{instance="{HOST}"}}'
    joined = f"macha_boot_unexpected_reboot and on (instance) {booted} > 0"
    assert returns_data(prometheus, joined), joined

    # ... the alerts this host is above go pending, on node_exporter's labels
    def pending() -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for alert in prometheus.alerts():
            labels: dict[str, Any] = alert["labels"]
            found.setdefault(labels["alertname"], set()).add(labels["job"])
        return found

    want = {"MachaMemoryPressure", "MachaDiskFilling", "MachaInodesLow"}
    assert poll(lambda: want <= set(pending()), 30), pending()
    assert all(pending()[name] == {"node"} for name in want)

    # ... and the recording rules divide node_exporter's raw series
    for record in ("instance:macha_cpu_utilisation:rate5m", "instance:macha_load1_per_cpu:ratio",
                   "instance:macha_load15_per_cpu:ratio"):  # fmt: skip
        query = f'{record}{{job="node",instance="{HOST}"}}'
        assert poll(has_data(prometheus, query), 30), query
        (sample,) = prometheus.query(query)
        assert float(sample["value"][1]) >= 0
