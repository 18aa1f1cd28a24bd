"""The shipped Grafana dashboards read as Grafana reads them, and checked against a real
Prometheus as Grafana would query it.

Every query a dashboard makes is listed here in one place: panel targets, annotations
(Grafana's Prometheus annotations run a range query) and template variables
(`label_values(selector, label)` is the label-values API with a `match[]`). `concrete()`
fills in the variables as Grafana does for one choice of job and host, so the same text
goes to promtool and to a live Prometheus.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.harness.eyes_support import PROJECT
from tests.harness.stack import Prometheus, poll

GRAFANA = PROJECT / "grafana"
DASHBOARD_DIR = GRAFANA / "dashboards"
DASHBOARDS = sorted(DASHBOARD_DIR.glob("*.json"))
HOST_DASHBOARD = DASHBOARD_DIR / "macha-host.json"
SIDECAR_DASHBOARD = DASHBOARD_DIR / "macha-sidecar.json"
FLEET_DASHBOARD = DASHBOARD_DIR / "macha-fleet.json"

# what every selector of every query carries, so the job and host variables filter it
FILTER = 'job=~"$job",instance=~"$instance"'
# Grafana's built-in intervals, as a dashboard over a short test run would get them
INTERVALS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
# label_values(metric{matchers}, label): a template variable's query
LABEL_VALUES = re.compile(r"label_values\((\w+(?:\{[^}]*\})?), (\w+)\)")
# a series selector with matchers (the only form the dashboards use)
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
# a dashboard-internal link: /d/<uid>[?query]
DASHBOARD_URL = re.compile(r"^/d/([\w-]+)(?:[/?]|$)")


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


def annotation_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(annotation name, expression) for every Prometheus annotation (not Grafana's own)."""
    return [
        (a["name"], a["expr"])
        for a in dashboard["annotations"]["list"]
        if a.get("datasource", {}).get("type") == "prometheus"
    ]


@dataclass(frozen=True)
class VariableQuery:
    """A `label_values` template variable: the label it offers and the series it reads."""

    name: str
    label: str
    selector: str


def variable_queries(dashboard: dict[str, Any]) -> list[VariableQuery]:
    out = []
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        found = LABEL_VALUES.fullmatch(var["definition"])
        assert found, f"${var['name']}: not a label_values() query: {var['definition']}"
        assert var["query"]["query"] == var["definition"], var["name"]
        out.append(VariableQuery(var["name"], found.group(2), found.group(1)))
    return out


def instance_metric(dashboard: dict[str, Any]) -> str:
    """The metric whose `instance` values the dashboard's host variable offers."""
    [query] = [q for q in variable_queries(dashboard) if q.name == "instance"]
    return query.selector.split("{", 1)[0]


def all_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """Every PromQL expression the dashboard sends: panels, annotations, variables' series."""
    return [
        *panel_exprs(dashboard),
        *((f"annotation {name}", expr) for name, expr in annotation_exprs(dashboard)),
        *((f"${q.name}", q.selector) for q in variable_queries(dashboard)),
    ]


def concrete(expr: str, instance: str = ".+", job: str = ".+") -> str:
    """The expression as Grafana would send it, with the dashboard variables filled in."""
    for name, value in INTERVALS.items():
        expr = expr.replace(name, value)
    expr = expr.replace("$instance", instance).replace("$job", job)
    left = re.findall(r"\$\{?[A-Za-z_]\w*", expr)
    assert not left, f"unknown variable {left} in {expr}"
    return expr


def selectors(expr: str) -> list[str]:
    """Every `metric{matchers}` in the expression."""
    return [m.group(0) for m in SELECTOR.finditer(expr)]


def unfiltered(expr: str) -> list[str]:
    """Metric references in `expr` that the job and host variables do not filter."""
    bare = [
        m.group(0)
        for m in re.finditer(r"\b(macha_\w+|up|node_\w+)\b(?!\s*[({])", expr)
        if not re.search(r'"[^"]*$', expr[: m.start()])  # not inside a string literal
    ]
    partial = [s for s in selectors(expr) if FILTER not in s]
    return bare + partial


def link_targets(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, url) of every link: the dashboard's own links and panels' data links."""
    out = [(f"link {link['title']}", link["url"]) for link in dashboard.get("links", [])]
    for panel in dashboard["panels"]:
        field_config = panel.get("fieldConfig", {})
        groups = [field_config.get("defaults", {}).get("links", [])]
        groups += [
            prop["value"]
            for override in field_config.get("overrides", [])
            for prop in override["properties"]
            if prop["id"] == "links"
        ]
        out += [(f"{panel['title']}: {link['title']}", link["url"]) for g in groups for link in g]
        out += [
            (f"{panel['title']}: {link['title']}", link["url"]) for link in panel.get("links", [])
        ]
    return out


# --------------------------------------------------------------------------- live


def label_values(prometheus: Prometheus, label: str, selector: str) -> set[str]:
    """What Grafana's `label_values(selector, label)` offers (the label-values API)."""
    reply = requests.get(
        f"{prometheus.url}/api/v1/label/{label}/values", params={"match[]": selector}, timeout=10
    )
    body = reply.json()
    assert body["status"] == "success", body
    return set(body["data"])


def query_range(prometheus: Prometheus, expr: str, start: float, step: float = 1.0) -> list[Any]:
    """A range query from `start` to now, as Grafana runs an annotation or a graph; raises
    with Prometheus' error when it refuses the expression."""
    reply = requests.get(
        f"{prometheus.url}/api/v1/query_range",
        params={"query": expr, "start": str(start), "end": str(time.time()), "step": str(step)},
        timeout=10,
    )
    body = reply.json()
    if body.get("status") != "success":
        raise AssertionError(f"Prometheus refused {expr}: {body.get('error', body)}")
    result: list[Any] = body["data"]["result"]
    return result


def assert_variables_offer(
    prometheus: Prometheus, dashboard: dict[str, Any], job: str, hosts: set[str]
) -> None:
    """The job variable offers `job`, and the host variable, with that job chosen, offers
    exactly `hosts` (bounded wait for the first scrapes)."""
    queries = {q.name: q for q in variable_queries(dashboard)}
    assert set(queries) == {"job", "instance"}, queries
    seen: dict[str, set[str]] = {}

    def offered() -> bool:
        for name, want in (("job", {job}), ("instance", hosts)):
            q = queries[name]
            seen[name] = label_values(prometheus, q.label, concrete(q.selector, job=job))
            if not want <= seen[name]:
                return False
        return seen["instance"] == hosts

    assert poll(offered, timeout=60, interval=0.5), f"{dashboard['uid']}: {seen}, want {hosts}"


def assert_annotations_valid(
    prometheus: Prometheus, dashboard: dict[str, Any], host: str, job: str = "macha"
) -> None:
    """Prometheus accepts every annotation's query as the range query Grafana sends."""
    for name, expr in annotation_exprs(dashboard):
        query_range(prometheus, concrete(expr, host, job), time.time() - 300, step=15)
        assert name  # refused queries raised above


def assert_panels_return_data(
    prometheus: Prometheus, dashboard: dict[str, Any], host: str, job: str
) -> None:
    """Every panel's query returns data for `host` (a regex: ".+" is the whole fleet)."""
    exprs = [(t, concrete(e, host, job)) for t, e in panel_exprs(dashboard)]
    empty: list[str] = []

    def all_return_data() -> bool:
        empty[:] = [f"{title}: {expr}" for title, expr in exprs if not prometheus.query(expr)]
        return not empty

    assert poll(all_return_data, timeout=60, interval=0.5), "no data for:\n" + "\n".join(empty)


def assert_every_query_returns_data(
    prometheus: Prometheus, dashboard: Any, host: str, job: str = "macha"
) -> None:
    """Every panel's query returns data for `host` from a live Prometheus; the job and host
    variables offer them; every annotation query is accepted (an annotation has data only
    when its event happened: tests/test_dashboards_fleet.py makes them happen). Bounded
    wait: the first scrapes and evaluations take a few seconds."""
    assert_panels_return_data(prometheus, dashboard, host, job)
    queries = {q.name: q for q in variable_queries(dashboard)}
    assert job in label_values(prometheus, "job", queries["job"].selector)
    instance = queries["instance"]
    assert host in label_values(prometheus, instance.label, concrete(instance.selector, job=job))
    assert_annotations_valid(prometheus, dashboard, host, job)
