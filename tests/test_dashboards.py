"""grafana/: dashboard structure, variables, annotations, links, provisioning, and every
expression parsed by promtool. The queries against a live Prometheus with data:
test_stack_eyes.py (host), test_stack_sidecar.py (sidecar), test_dashboards_fleet.py
(the fleet, every annotation's event, two hosts)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from prometheus_client.core import Metric

from macha_obs.agent.llm import LlmMetrics
from macha_obs.config import AutonomyLevel
from macha_obs.intake.webhook import ReceiverStats
from macha_obs.metrics import (
    ListenerCollector,
    LlmCollector,
    LoopStats,
    PersistentState,
    SelfCollector,
    WebhookCollector,
)
from macha_obs.metrics.learning import LearnCollector, LearnState
from macha_obs.server import ListenerStats
from tests.harness.dashboards_support import (
    DASHBOARD_URL,
    DASHBOARDS,
    FILTER,
    FLEET_DASHBOARD,
    GRAFANA,
    HOST_DASHBOARD,
    SIDECAR_DASHBOARD,
    all_exprs,
    annotation_exprs,
    assert_every_query_returns_data,
    concrete,
    instance_metric,
    link_targets,
    load,
    panel_exprs,
    unfiltered,
    variable_queries,
)

# re-exported: the stack tests check the dashboards through these
__all__ = [
    "HOST_DASHBOARD",
    "SIDECAR_DASHBOARD",
    "assert_every_query_returns_data",
    "concrete",
    "load",
]

# the rows of each dashboard, in no particular order
SECTIONS = {
    HOST_DASHBOARD.name: {
        "Units",
        "Resources",
        "Disks",
        "Journal",
        "Network",
        "Posture",
        "Boot and NixOS",
        "Sidecar",
    },
    SIDECAR_DASHBOARD.name: {
        "Needs a human",
        "Decisions and actions",
        "Loop",
        "LLM",
        "Webhook and HTTP listener",
        "Learning",
    },
    FLEET_DASHBOARD.name: {"Fleet", "Hosts", "Actions and failures per host", "Trust"},
}
# what each dashboard's annotations show: events read from the sidecar's own series
ANNOTATIONS = {
    "Fixes verified": "macha_actions_total",
    "Fixes failed": "macha_actions_total",
    "Boots": "macha_boot_time_seconds",
    "Unexpected reboots": "macha_boot_unexpected_reboot",
    "NixOS generation switches": "macha_nixos_running_generation",
}


def test_dashboards_exist() -> None:
    """One provisioning folder: Grafana refuses two dashboards with one uid or one title
    there, and a uid longer than 40 characters."""
    assert set(DASHBOARDS) == {HOST_DASHBOARD, SIDECAR_DASHBOARD, FLEET_DASHBOARD}
    dashboards = [load(path) for path in DASHBOARDS]
    uids = [d["uid"] for d in dashboards]
    assert len(uids) == len(set(uids))
    assert all(re.fullmatch(r"[\w-]{1,40}", uid) for uid in uids), uids
    titles = [d["title"] for d in dashboards]
    assert len(titles) == len(set(titles))
    assert all("id" not in d for d in dashboards), "provisioned: Grafana assigns the id"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    dash = load(path)
    assert dash["uid"]
    assert dash["title"]
    assert "macha-obs" in dash["tags"]
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
    for where, expr in [*panel_exprs(dash), *annotation_exprs(dash)]:
        assert not unfiltered(expr), f"{where}: not filtered by $job and $instance: {expr}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_variables(path: Path) -> None:
    """datasource, then job, then the host (offered for the chosen jobs): Grafana refreshes
    a variable whose query names another when that one changes."""
    dash = load(path)
    variables = dash["templating"]["list"]
    assert [v["name"] for v in variables] == ["datasource", "job", "instance"]
    assert variables[0]["type"] == "datasource"
    assert variables[0]["query"] == "prometheus"
    queries = {q.name: q for q in variable_queries(dash)}
    assert queries["job"].label == "job"
    assert queries["job"].selector == "macha_build_info"
    assert queries["instance"].label == "instance"
    assert queries["instance"].selector.endswith('{job=~"$job"}')
    assert instance_metric(dash).startswith("macha_")
    for var in variables[1:]:
        assert var["datasource"]["uid"] == "${datasource}"
        assert var["multi"], var["name"]
        assert var["includeAll"], var["name"]
        # All is a regex, not a list of every host of a large fleet
        assert var["allValue"] == ".+", var["name"]
        assert var["refresh"] == 2, "refreshed with the time range: hosts come and go"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_annotations(path: Path) -> None:
    dash = load(path)
    listed = dash["annotations"]["list"]
    assert listed[0]["builtIn"] == 1, "Grafana's own annotations and alerts stay"
    found = dict(annotation_exprs(dash))
    assert set(found) == set(ANNOTATIONS)
    for name, metric in ANNOTATIONS.items():
        assert re.search(rf"\b{metric}\{{", found[name]), name
    for annotation in listed[1:]:
        assert annotation["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert annotation["enable"], annotation["name"]
        assert annotation["titleFormat"], annotation["name"]
        assert "instance" in annotation["tagKeys"].split(","), annotation["name"]
    # boots sit at the boot time itself (a reboot longer than any window still shows)
    by_name = {a["name"]: a for a in listed[1:]}
    for name in ("Boots", "Unexpected reboots"):
        assert by_name[name]["useValueForTime"] is True
        assert "* 1000" in by_name[name]["expr"], "Grafana wants milliseconds"


def test_links_resolve_and_keep_the_variables() -> None:
    uids = {load(path)["uid"] for path in DASHBOARDS}
    for path in DASHBOARDS:
        dash = load(path)
        own = [link for link in dash["links"] if link["type"] == "link"]
        assert {DASHBOARD_URL.match(link["url"]).group(1) for link in own} == uids - {  # type: ignore[union-attr]
            dash["uid"]
        }, f"{path.name}: links to every other dashboard"
        for link in own:
            assert link["includeVars"], link["title"]
            assert link["keepTime"], link["title"]
        for where, url in link_targets(dash):
            found = DASHBOARD_URL.match(url)
            assert found, f"{path.name} {where}: {url}"
            assert found.group(1) in uids, f"{path.name} {where}: no dashboard {found.group(1)}"


def test_fleet_hosts_table_links_each_host() -> None:
    """The hosts table: one instant query per column, merged on (job, instance) into one row
    per host, whose name links to that host's dashboards with its job and instance."""
    fleet = load(FLEET_DASHBOARD)
    [table] = [p for p in fleet["panels"] if p["type"] == "table" and p["title"] == "Hosts"]
    assert table["transformations"][0]["id"] == "merge"
    for target in table["targets"]:
        assert target["instant"], target["refId"]
        assert target["format"] == "table", target["refId"]
        assert re.match(r"(max|sum) by \(job, instance[,)]", target["expr"]), target["expr"]
    urls = [url for _, url in link_targets({"links": [], "panels": [table]})]
    assert {DASHBOARD_URL.match(u).group(1) for u in urls} == {  # type: ignore[union-attr]
        load(HOST_DASHBOARD)["uid"],
        load(SIDECAR_DASHBOARD)["uid"],
    }
    for url in urls:
        assert "var-instance=${__value.raw}" in url
        assert "var-job=${__data.fields.job}" in url


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
        *LearnCollector(LearnState).collect(),
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
    """Every expression (panels, annotations, variables' series) as a recording rule, so
    promtool parses each one."""
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    n = 0
    for path in DASHBOARDS:
        for _, expr in all_exprs(load(path)):
            lines += [
                f"      - record: dashboard:expr_{n}",
                f"        expr: {json.dumps(concrete(expr))}",
            ]
            n += 1
    rules = tmp_path / "dashboard_rules.yml"
    rules.write_text("\n".join(lines) + "\n")
    return rules


def test_every_expression_is_filtered_and_concrete() -> None:
    for path in DASHBOARDS:
        for where, expr in all_exprs(load(path)):
            if where.startswith("$"):
                continue  # the job variable reads every job; the host one reads $job's
            assert FILTER in expr, f"{path.name} {where}"
            concrete(expr, "host-a|host-b", "macha")  # no variable left unfilled


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
