"""grafana/: dashboard structure, provisioning, and every expression parsed by promtool."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.core import Metric

from macha_obs.agent.llm import LlmMetrics
from macha_obs.config import AutonomyLevel
from macha_obs.metrics import (
    ListenerCollector,
    LlmCollector,
    LoopStats,
    PersistentState,
    SelfCollector,
    WebhookCollector,
)
from macha_obs.receiver import ReceiverStats
from macha_obs.server import ListenerStats
from tests.harness.eyes_support import PROJECT
from tests.harness.stack import Prometheus, poll

GRAFANA = PROJECT / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
HOST_DASHBOARD = GRAFANA / "dashboards" / "macha-host.json"
SIDECAR_DASHBOARD = GRAFANA / "dashboards" / "macha-sidecar.json"
# the rows of each dashboard, in no particular order
SECTIONS = {
    HOST_DASHBOARD.name: {
        "Units",
        "Resources",
        "Disks",
        "Journal",
        "Network",
        "Boot and NixOS",
        "Sidecar",
    },
    SIDECAR_DASHBOARD.name: {
        "Needs a human",
        "Decisions and actions",
        "Loop",
        "LLM",
        "Webhook and HTTP listener",
    },
}


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panel_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) for every query target."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def instance_metric(dashboard: dict[str, Any]) -> str:
    """The metric whose `instance` values the dashboard's host variable offers."""
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    found = re.fullmatch(r"label_values\((\w+), instance\)", variables["instance"]["definition"])
    assert found, variables["instance"]
    assert variables["instance"]["query"]["query"] == found.group(0)
    return found.group(1)


def concrete(expr: str, instance: str = ".+") -> str:
    """The expression as Grafana would send it, with the dashboard variables filled in."""
    return expr.replace("$instance", instance).replace("$__rate_interval", "1m")


def test_dashboards_exist() -> None:
    assert set(DASHBOARDS) == {HOST_DASHBOARD, SIDECAR_DASHBOARD}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    dash = load(path)
    assert dash["uid"]
    assert dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]
        if panel["type"] != "row":
            assert refs, f"{panel['title']} has no query"
            assert panel["datasource"]["uid"] == "${datasource}"
    rows = {p["title"] for p in dash["panels"] if p["type"] == "row"}
    assert rows == SECTIONS[path.name]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert instance_metric(dash).startswith("macha_")
    for title, expr in panel_exprs(dash):
        assert 'instance=~"$instance"' in expr, f"{title}: not filtered by the instance variable"


def test_panels_do_not_overlap() -> None:
    for path in DASHBOARDS:
        cells: dict[tuple[int, int], str] = {}
        for panel in load(path)["panels"]:
            g = panel["gridPos"]
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                    cells[(x, y)] = panel["title"]


def exported_names(metric: Metric) -> list[str]:
    """The sample names a metric family is scraped as."""
    match metric.type:
        case "counter":
            return [f"{metric.name}_total"]
        case "summary":
            return [f"{metric.name}_count", f"{metric.name}_sum"]
        case "histogram":
            return [f"{metric.name}_bucket", f"{metric.name}_count", f"{metric.name}_sum"]
        case _:
            return [metric.name]


def test_sidecar_dashboard_shows_every_self_metric() -> None:
    """Every metric of what the sidecar decided and did has a panel (a new one needs one)."""
    # paused with an end: the state in which every self-metric is exported
    state = PersistentState(
        0, False, AutonomyLevel.SUGGEST, AutonomyLevel.SUGGEST, paused=True, pause_until=1.8e9
    )
    families = [
        *SelfCollector(LoopStats(), lambda: state).collect(),
        *WebhookCollector(ReceiverStats()).collect(),
        *LlmCollector(LlmMetrics()).collect(),
        *ListenerCollector(ListenerStats()).collect(),
    ]
    names = {name for family in families for name in exported_names(family)}
    exprs = " ".join(expr for _, expr in panel_exprs(load(SIDECAR_DASHBOARD)))
    used = set(re.findall(r"\bmacha_\w+", exprs))
    assert names - used == set(), "no panel for these"
    assert used - names == set(), "not a self-metric"


def test_provisioning_file() -> None:
    text = (GRAFANA / "provisioning/dashboards/macha.yml").read_text()
    assert re.search(r"^apiVersion: 1$", text, re.M)
    assert "type: file" in text
    assert re.search(r"^\s+path: /\S+$", text, re.M)


def expressions_as_rules(tmp_path: Path) -> Path:
    """Every panel expression as a recording rule, so promtool parses each one."""
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for path in DASHBOARDS:
        for n, (_, expr) in enumerate(panel_exprs(load(path))):
            lines += [
                f"      - record: dashboard:expr_{n}",
                f"        expr: {json.dumps(concrete(expr))}",
            ]
    rules = tmp_path / "dashboard_rules.yml"
    rules.write_text("\n".join(lines) + "\n")
    return rules


@pytest.mark.stack
def test_every_expression_parses(promtool: str, tmp_path: Path) -> None:
    rules = expressions_as_rules(tmp_path)
    check = subprocess.run(
        [promtool, "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def assert_every_query_returns_data(prometheus: Prometheus, dashboard: Any, host: str) -> None:
    """Every panel's query, and the host variable, return data for `host` from a live
    Prometheus (bounded wait: the first scrapes and evaluations take a few seconds)."""
    exprs = [(t, concrete(e, host)) for t, e in panel_exprs(dashboard)]
    exprs.append(("$instance", f'{instance_metric(dashboard)}{{instance="{host}"}}'))
    empty: list[str] = []

    def all_return_data() -> bool:
        empty[:] = [f"{title}: {expr}" for title, expr in exprs if not prometheus.query(expr)]
        return not empty

    assert poll(all_return_data, timeout=60, interval=0.5), "no data for:\n" + "\n".join(empty)
