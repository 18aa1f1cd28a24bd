"""The dashboards over a fleet of two: two real daemons (`macha-obs serve`, host-a and
host-b) on the lab systemd, each with its own NixOS-shaped tree, scraped by one real
Prometheus as two targets of one job.

Things happen that each annotation and each fleet panel exists to show: a unit that
cannot be fixed fails host-a's restart (auto-safe, breaker at the first failed fix), host-b
(suggest) queues the same fix for a human, who pauses it and rejects the fix, and host-b
switches NixOS generation. Then, with the job and host variables filled in as Grafana fills them:

- the fleet dashboard's every query returns data, and its hosts table is one row per host
  with what each host did (the failed fix on host-a, the pause and the queue on host-b);
  its autonomy timeline shows host-a dropping to suggest;
- the sidecar dashboard's shadow agreement counts the person's decisions on host-b;
- every dashboard's variables offer the job and exactly the two hosts;
- every annotation's series exist for both hosts, and over the test's time range the
  failed fix, each host's boot and host-b's generation switch show up where they happened.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from macha_obs.models import ApprovalStatus
from tests.harness.daemon_support import MACHA_OBS, Daemon
from tests.harness.dashboards_support import (
    DASHBOARDS,
    FLEET_DASHBOARD,
    SIDECAR_DASHBOARD,
    annotation_exprs,
    assert_panels_return_data,
    assert_variables_offer,
    concrete,
    load,
    panel_exprs,
    query_range,
    selectors,
)
from tests.harness.eyes_support import make_nixos_tree
from tests.harness.labsd import LabSystemd
from tests.harness.stack import Prometheus, poll
from tests.harness.systemd_fixtures import UnitFactory

pytestmark = [pytest.mark.stack, pytest.mark.systemd]

JOB = "macha"
HOSTS = ("host-a", "host-b")
# both hosts chosen in the host variable: Grafana sends a multi-value as a regex group
BOTH = "(host-a|host-b)"


def nixos_tree(root: Path) -> Path:
    """A NixOS-shaped tree that runs (and booted) its newest generation, 3."""
    make_nixos_tree(root)
    run = root / "run"
    run.mkdir()
    newest = (root / "nix/var/nix/profiles/system-3-link").readlink()
    (run / "current-system").symlink_to(newest)
    (run / "booted-system").symlink_to(newest)
    return root


def switch_generation(root: Path, generation: int) -> None:
    """What activation does to /run/current-system: the link replaced, atomically."""
    target = (root / f"nix/var/nix/profiles/system-{generation}-link").readlink()
    fresh = root / "run/current-system.new"
    fresh.symlink_to(target)
    os.replace(fresh, root / "run/current-system")


def prometheus_config(daemons: dict[str, Daemon]) -> str:
    targets = "".join(
        f'      - targets: ["127.0.0.1:{d.port}"]\n        labels:\n          instance: {host}\n'
        for host, d in daemons.items()
    )
    return (
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n{targets}"
    )


def by_host(result: list[dict[str, Any]]) -> dict[str, float]:
    """An instant query's result as {instance: value}; each host at most once."""
    hosts = [r["metric"].get("instance", "") for r in result]
    assert len(hosts) == len(set(hosts)), result
    return {r["metric"]["instance"]: float(r["value"][1]) for r in result}


def hosts_table(prometheus: Prometheus) -> dict[str, dict[str, Any]]:
    """The fleet's hosts table as Grafana builds it: every column's instant query, merged
    on (job, instance); a label beside job and instance is a column of its own."""
    fleet = load(FLEET_DASHBOARD)
    [table] = [p for p in fleet["panels"] if p["type"] == "table" and p["title"] == "Hosts"]
    rows: dict[str, dict[str, Any]] = {}
    for target in table["targets"]:
        result = prometheus.query(concrete(target["expr"], ".+", JOB))
        assert len(result) == len({r["metric"]["instance"] for r in result}), target["expr"]
        for series in result:
            labels = dict(series["metric"])
            assert labels.pop("job") == JOB
            row = rows.setdefault(labels.pop("instance"), {})
            row[target["refId"]] = float(series["value"][1])
            row.update(labels)  # autonomy, configured
    return rows


def nonzero(daemon: Daemon, prefix: str) -> list[str]:
    """The daemon's series under `prefix` that are not 0, for a failure's message."""
    text = requests.get(f"{daemon.url}/metrics", timeout=5).text
    return [s for s in text.splitlines() if s.startswith(prefix) and not s.endswith(" 0.0")]


def escalated(daemon: Daemon) -> bool:
    failed = daemon.metric("macha_actions_total", kind="restart_unit", result="failed")
    return bool(failed and daemon.metric("macha_circuit_breaker_open"))


def queued(daemon: Daemon) -> bool:
    return bool(daemon.metric("macha_approvals_pending"))


def test_dashboards_over_a_fleet_of_two(
    systemd_container: LabSystemd,
    unit_factory: UnitFactory,
    daemons: Callable[..., Daemon],
    prometheus_factory: Callable[[str, list[Path]], Prometheus],
    tmp_path: Path,
) -> None:
    lab = systemd_container
    started = time.time()
    trees = {host: nixos_tree(tmp_path / f"nixos-{host}") for host in HOSTS}
    fleet = {
        "host-a": daemons(
            "state-a",
            hostname="host-a",
            nix_root=trees["host-a"],
            autonomy_level="auto-safe",
            breaker_threshold=1,
        ),
        "host-b": daemons(
            "state-b", hostname="host-b", nix_root=trees["host-b"], autonomy_level="suggest"
        ),
    }
    a, b = fleet["host-a"], fleet["host-b"]
    prometheus = prometheus_factory(prometheus_config(fleet), [])
    prometheus.wait_targets_up(2)

    # every counter and the running generation scraped at their start values first:
    # increase() and changes() see what happens next
    def scraped_before() -> bool:
        running = by_host(prometheus.query(f'macha_nixos_running_generation{{job="{JOB}"}}'))
        cycles = by_host(prometheus.query(f'sum by (instance) (macha_cycles_total{{job="{JOB}"}})'))
        return running == {"host-a": 3.0, "host-b": 3.0} and set(cycles) == set(HOSTS)

    assert poll(scraped_before, timeout=60, interval=0.5), (
        "no macha_nixos_running_generation for both hosts (requested: /tmp/h/request_B.md)",
        prometheus.query(f'{{job="{JOB}",__name__=~"macha_nixos.*"}}'),
    )

    # a human pauses host-b; a unit fails that no restart can fix; host-b rolls back to 2
    pause = subprocess.run(
        [MACHA_OBS, "pause", "--reason", "fleet dashboard test"],
        env=b.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert pause.returncode == 0, pause.stdout + pause.stderr
    broken = unit_factory("fleet-broken.service", "[Service]\nExecStart=/bin/false\n")
    lab.run("systemctl", "start", broken, check=False)
    switch_generation(trees["host-b"], 2)
    assert poll(partial(escalated, a), timeout=60), a.log_tail()
    assert poll(partial(queued, b), timeout=60), b.log_tail()

    # the fleet dashboard: every query returns data for the whole fleet
    fleet_dash = load(FLEET_DASHBOARD)
    assert_panels_return_data(prometheus, fleet_dash, ".+", JOB)

    # ... and its hosts table is one row per host, with what each host did
    def rows_show_the_fleet() -> bool:
        rows = hosts_table(prometheus)
        host_a, host_b = rows.get("host-a", {}), rows.get("host-b", {})
        return (
            set(rows) == set(HOSTS)
            and all(len(row) == 12 for row in rows.values())  # 10 columns + 2 level labels
            and host_a["E"] == 1  # breaker open
            and host_a["autonomy"] == "suggest"  # capped by the breaker
            and host_a["configured"] == "auto-safe"
            and host_a["I"] > 0  # the failed fix
            and host_a["F"] == 0
            and host_b["F"] == 1  # paused
            and host_b["G"] >= 1  # the queued fix
            and host_b["H"] == 0  # nothing executed
            and host_b["configured"] == "suggest"
        )

    assert poll(rows_show_the_fleet, timeout=60, interval=0.5), hosts_table(prometheus)
    # one line per host on the autonomy timeline: host-a went from auto-safe (2) to
    # suggest (1) when its breaker opened; host-b stayed at suggest
    autonomy = dict(panel_exprs(fleet_dash))["Effective autonomy per host"]

    def autonomy_timeline() -> dict[str, list[float]]:
        return {
            s["metric"]["instance"]: [float(v) for _, v in s["values"]]
            for s in query_range(prometheus, concrete(autonomy, ".+", JOB), started)
        }

    # the range's last step can lag the instant query the table used: wait for it
    def timeline_shows_the_drop() -> bool:
        line = autonomy_timeline().get("host-a", [])
        return len(line) >= 2 and (line[0], line[-1]) == (2, 1)

    assert poll(timeline_shows_the_drop, timeout=60, interval=0.5), autonomy_timeline()
    timeline = autonomy_timeline()
    assert set(timeline) == set(HOSTS)
    assert set(timeline["host-b"]) == {1}, timeline

    # a person rejects what host-b queued: shadow scoring counts each decision, and the
    # sidecar dashboard's agreement for host-b is a number (no longer 0/0)
    rejected = [x for x in b.approvals() if x.status is ApprovalStatus.PENDING]
    for approval in rejected:
        reply = b.approve("reject", str(approval.id))
        assert reply.returncode == 0, reply.stdout + reply.stderr
    sidecar = dict(panel_exprs(load(SIDECAR_DASHBOARD)))

    def scored() -> bool:
        # by hand from the daemon's own exposition: agreed / all decisions
        lines = nonzero(b, "macha_shadow_decisions_total{")
        counts = [(float(line.rpartition(" ")[2]), 'agreed="true"' in line) for line in lines]
        total = sum(n for n, _ in counts)
        agreed = sum(n for n, yes in counts if yes)
        shown = by_host(prometheus.query(concrete(sidecar["Shadow agreement"], "host-b", JOB)))
        return 0 < total <= len(rejected) and shown == {"host-b": agreed / total}

    assert poll(scored, timeout=60, interval=0.5), (rejected, nonzero(b, "macha_shadow"))

    for path in DASHBOARDS:
        dash = load(path)
        # the variables offer the job and exactly the two hosts
        assert_variables_offer(prometheus, dash, JOB, set(HOSTS))
        # Prometheus accepts every panel query with both hosts chosen
        for _, expr in panel_exprs(dash):
            prometheus.query(concrete(expr, BOTH, JOB))  # raises on an error
        # every annotation's series exist for both hosts
        for name, expr in annotation_exprs(dash):
            for selector in selectors(expr):
                result = prometheus.query(concrete(selector, BOTH, JOB))
                found = {series["metric"]["instance"] for series in result}
                assert set(found) == set(HOSTS), f"{path.name} {name}: {selector} → {found}"

    # over the test's time range, each annotation shows what happened where it happened
    annotations = {ann["name"]: ann for ann in fleet_dash["annotations"]["list"][1:]}

    def events(name: str) -> dict[str, list[float]]:
        expr = concrete(annotations[name]["expr"], BOTH, JOB)
        series = query_range(prometheus, expr, started)
        for s in series:
            for field in ("titleFormat", "textFormat"):
                wanted = re.findall(r"\{\{(\w+)\}\}", annotations[name][field])
                assert set(wanted) <= set(s["metric"]), (name, field, s["metric"])
        return {s["metric"]["instance"]: [float(v) for _, v in s["values"]] for s in series}

    assert poll(lambda: set(events("Fixes failed")) == {"host-a"}, timeout=30), events(
        "Fixes failed"
    )
    assert poll(lambda: set(events("NixOS generation switches")) == {"host-b"}, timeout=30)
    assert events("Fixes verified") == {}
    assert events("Unexpected reboots") == {}
    boots = events("Boots")
    assert set(boots) == set(HOSTS)
    for values in boots.values():  # Grafana places it at the value: the boot, in ms
        assert set(values) == {psutil.boot_time() * 1000}
