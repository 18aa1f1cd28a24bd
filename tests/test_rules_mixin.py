"""The rules as node_exporter's mixin writes them, checked by Debian's promtool: events as
counters read with increase() (the journal burst a per-read gauge missed), the disk trend
in two tiers that skip read-only mounts, the node_* variant for hosts that run
node_exporter, and the approvals links that stay out of the alerts' labels."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from macha_obs.config import Config
from macha_obs.metrics.host import NODE_EXPORTER_FAMILIES
from macha_obs.setup.rules import HOST_RULES, SIDECAR_RULES, render, write_rules
from tests.test_rules_render import case, promtool_tests, run

pytestmark = pytest.mark.stack

W1 = 'job="macha",instance="web1"'
BURST_DESC = "{} logged {} error entries in 5m on web1 (threshold 20)."


def promtool_test(promtool: str, tmp_path: Path, rules: Path, cases: list[dict]) -> str:
    """Run `cases` against `rules`; the output, whichever way it went."""
    spec = tmp_path / f"{rules.parent.name}-{rules.name}.test.yml"
    spec.write_text(promtool_tests(rules, cases))
    done = run(promtool, "test", "rules", str(spec))
    return f"rc={done.returncode}\n{done.stdout}{done.stderr}"


# ------------------------------------------------------------------ the burst that was missed

# What the sidecar exported before: errors per journal read, a gauge back to 0 at the next
# read, and the rule that compared it to the threshold.
OLD_RULE = """\
groups:
  - name: before
    rules:
      - alert: MachaJournalErrorBurst
        expr: macha_journal_recent_errors >= 20
        for: 1m
"""


def test_a_burst_inside_one_cycle_was_missed_by_the_gauge_and_fires_on_the_counter(
    promtool: str, tmp_path: Path
) -> None:
    """500 errors between two 15 s reads: the gauge showed them for one read, so `for: 1m`
    never held; the counter keeps them in increase()'s window."""
    old = tmp_path / "old" / "macha.yml"
    old.parent.mkdir()
    old.write_text(OLD_RULE)
    gauge = case("the old gauge", {
        f'macha_journal_recent_errors{{{W1},unit="app.service"}}': "0x20 500 0x39",
    }, [(t, "MachaJournalErrorBurst", []) for t in ("5m", "7m", "9m", "11m")],
        interval="15s")  # fmt: skip
    out = promtool_test(promtool, tmp_path, old, [gauge])
    assert out.startswith("rc=0"), out  # it never fired: the miss, shown

    (new,) = [p for p in write_rules(Config(), tmp_path / "new") if p.name == HOST_RULES]
    labels = {"job": "macha", "instance": "web1", "severity": "warning", "unit": "app.service"}
    fired = (labels, "Burst of journal errors from app.service on web1",
             BURST_DESC.format("app.service", 500))  # fmt: skip
    counter = case("the counter", {
        f'macha_journal_errors_total{{{W1},unit="app.service"}}': "0x20 500x39",
        f'macha_journal_entries_read_total{{{W1}}}': "0+600x60",
    }, [("5m", "MachaJournalErrorBurst", []), ("7m", "MachaJournalErrorBurst", [fired]),
        ("9m", "MachaJournalErrorBurst", [fired]),
        ("11m", "MachaJournalErrorBurst", [])], interval="15s")  # fmt: skip
    out = promtool_test(promtool, tmp_path, new, [counter])
    assert out.startswith("rc=0"), out


# ------------------------------------------------------------------ beside node_exporter

NODE = 'job="node",instance="web1"'


def node_fs(mountpoint: str, device: str, fstype: str = "ext4") -> str:
    return f'{NODE},device="{device}",fstype="{fstype}",mountpoint="{mountpoint}"'


def fs_labels(mountpoint: str, device: str, severity: str = "warning") -> dict[str, str]:
    return {"job": "node", "instance": "web1", "severity": severity, "mountpoint": mountpoint,
            "device": device, "fstype": "ext4"}  # fmt: skip


def node_cases() -> list[dict[str, Any]]:
    var, run_, store = (
        node_fs("/var", "/dev/sda2"),
        node_fs("/run", "tmpfs", "tmpfs"),
        node_fs("/nix/store", "/dev/sda1"),
    )
    tier = "At the rate of the last 6h, /var (/dev/sda2) on web1 will be full within {}; 6% of it is still available."  # noqa: E501
    return [
        case("memory from node_memory_*: 95% used fires, 50% does not", {
            f"node_memory_MemTotal_bytes{{{NODE}}}": "100x20",
            f"node_memory_MemAvailable_bytes{{{NODE}}}": "5x20",
            'node_memory_MemTotal_bytes{job="node",instance="web2"}': "100x20",
            'node_memory_MemAvailable_bytes{job="node",instance="web2"}': "50x20",
        }, [("10m", "MachaMemoryPressure", [({"job": "node", "instance": "web1",
             "severity": "warning"}, "Memory pressure on web1",
             "95% of memory is in use on web1 (threshold 90%).")])]),
        case("disk from node_filesystem_*: tmpfs and a read-only bind are left out", {
            f"node_filesystem_size_bytes{{{var}}}": "1000x30",
            f"node_filesystem_avail_bytes{{{var}}}": "50x30",
            f"node_filesystem_readonly{{{var}}}": "0x30",
            f"node_filesystem_files{{{var}}}": "1000x30",
            f"node_filesystem_files_free{{{var}}}": "5x30",
            f"node_filesystem_size_bytes{{{run_}}}": "1000x30",
            f"node_filesystem_avail_bytes{{{run_}}}": "10x30",
            f"node_filesystem_readonly{{{run_}}}": "0x30",
            f"node_filesystem_size_bytes{{{store}}}": "1000x30",
            f"node_filesystem_avail_bytes{{{store}}}": "10x30",
            f"node_filesystem_readonly{{{store}}}": "1x30",
            f"node_filesystem_files{{{store}}}": "1000x30",
            f"node_filesystem_files_free{{{store}}}": "1x30",
        }, [("15m", "MachaDiskFilling", [(fs_labels("/var", "/dev/sda2"),
             "/var is filling up on web1",
             "/var (/dev/sda2) is 95% full on web1 (threshold 90%).")]),
            ("15m", "MachaInodesLow", [(fs_labels("/var", "/dev/sda2"),
             "/var is running out of inodes on web1",
             "99.5% of the inodes of /var are used on web1 (threshold 90%).")])]),
        case("the disk trend from node_filesystem_*: both tiers for /var, none for read-only", {
            f"node_filesystem_size_bytes{{{var}}}": "1000x600",
            f"node_filesystem_avail_bytes{{{var}}}": "300-0.5x590",
            f"node_filesystem_readonly{{{var}}}": "0x600",
            f"node_filesystem_size_bytes{{{store}}}": "1000x600",
            f"node_filesystem_avail_bytes{{{store}}}": "300-0.5x590",
            f"node_filesystem_readonly{{{store}}}": "1x600",
        }, [("30m", "MachaDiskFillingUp", []),
            ("480m", "MachaDiskFillingUp", [
                (fs_labels("/var", "/dev/sda2"), "/var will be full within 24 hours on web1",
                 tier.format("24 hours")),
                (fs_labels("/var", "/dev/sda2", "critical"),
                 "/var will be full within 4 hours on web1", tier.format("4 hours"))])]),
        case("an unannounced boot, its time from node_boot_time_seconds, joined on instance", {
            f"macha_boot_unexpected_reboot{{{W1}}}": "1x120",
            f"node_boot_time_seconds{{{NODE}}}": "0x120",
            'macha_boot_unexpected_reboot{job="macha",instance="web2"}': "0x120",
            'node_boot_time_seconds{job="node",instance="web2"}': "0x120",
        }, [("10m", "MachaUnexpectedReboot", [({"job": "macha", "instance": "web1",
             "severity": "critical"}, "web1 rebooted unexpectedly",
             "web1 started a new boot that was not announced beforehand.")]),
            ("90m", "MachaUnexpectedReboot", [])]),
    ]  # fmt: skip


def node_ratio_case() -> dict[str, Any]:
    """Two CPUs: cpu0 idle, cpu1 half busy; the ratios from node_cpu_seconds_total."""
    cpu = 'node_cpu_seconds_total{{job="node",instance="web1",cpu="{}",mode="{}"}}'
    series = {
        cpu.format(0, "idle"): "0+60x10",
        cpu.format(0, "user"): "0x10",
        cpu.format(1, "idle"): "0+30x10",
        cpu.format(1, "user"): "0+30x10",
        f"node_load1{{{NODE}}}": "1x10",
        f"node_load5{{{NODE}}}": "3x10",
        f"node_load15{{{NODE}}}": "4x10",
    }
    expected = {"instance:macha_cpu_utilisation:rate5m": 0.25,
                "instance:macha_load1_per_cpu:ratio": 0.5,
                "instance:macha_load5_per_cpu:ratio": 1.5,
                "instance:macha_load15_per_cpu:ratio": 2}  # fmt: skip
    return {
        "name": "the ratios from node_exporter's raw series",
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "promql_expr_test": [
            {"expr": name, "eval_time": "10m",
             "exp_samples": [{"labels": f"{name}{{{NODE}}}", "value": value}]}
            for name, value in expected.items()
        ],
    }  # fmt: skip


def test_the_node_variant_reads_what_node_exporter_exports(promtool: str, tmp_path: Path) -> None:
    written = write_rules(Config(node_exporter=True), tmp_path / "node")
    run(promtool, "check", "rules", *map(str, written))
    (rules,) = [p for p in written if p.name == HOST_RULES]
    out = promtool_test(promtool, tmp_path, rules, [*node_cases(), node_ratio_case()])
    assert out.startswith("rc=0"), out


def test_the_node_variant_reads_none_of_the_families_left_out() -> None:
    """The sidecar stops exporting them (metrics/host.py): a rule on one would never fire."""
    text = render(Config(node_exporter=True))[HOST_RULES]
    rules = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    read = set(re.findall(r"\b(macha_[a-z0-9_]+)", rules))
    assert not {n.removesuffix("_total") for n in read} & NODE_EXPORTER_FAMILIES
    assert {"node_filesystem_readonly", "node_memory_MemAvailable_bytes", "node_load1",
            "node_cpu_seconds_total", "node_boot_time_seconds"} <= set(
        re.findall(r"\b(node_[A-Za-z0-9_]+)", rules))  # fmt: skip
    # only the host file differs: the sidecar's own rules read only its own series
    assert render(Config(node_exporter=True))[SIDECAR_RULES] == render(Config())[SIDECAR_RULES]


# ------------------------------------------------------------------ approvals, one per item


def test_per_item_approval_alerts_only_when_asked() -> None:
    assert "MachaApprovalPendingItem" not in render(Config())[SIDECAR_RULES]
    assert "MachaApprovalPendingItem" in render(Config(approval_alert_per_item=True))[SIDECAR_RULES]


def test_one_alert_per_pending_item_with_its_link_as_an_annotation(
    promtool: str, tmp_path: Path
) -> None:
    cfg = Config(approval_alert_per_item=True, approval_ttl=600, external_url="https://m.example/")
    (rules,) = [p for p in write_rules(cfg, tmp_path / "items") if p.name == SIDECAR_RULES]
    info = 'macha_approval_pending_info{{{},approval_id="{}",kind="{}",risk="{}",url="{}"}}'
    a1 = "https://{}.example.org/approvals/a1"  # a plain page URL: it needs a login
    human = {"job": "macha", "instance": "web1", "severity": "warning", "audience": "human"}

    def item(aid: str, kind: str, risk: str, url: str) -> tuple[Any, ...]:
        labels = {**human, "approval_id": aid, "kind": kind, "risk": risk}
        return (labels, f"{kind} ({risk} risk) waits for approval on web1",
                f"macha-obs on web1 has queued {kind} ({risk} risk) for a human for over"
                f" 5 minutes: approval {aid}. Open its approval_url, or `macha-approve show"
                f" {aid}`; unanswered, it expires and nothing is done.",
                {"approval_url": url})  # fmt: skip

    spec = case("each pending item alerts once; a link moved is the same alert", {
        # a1's link moves at 4m (a new external_url): same item, same alert, the new link
        info.format(W1, "a1", "restart_unit", "low", a1.format("old")): "1x3 stale",
        info.format(W1, "a1", "restart_unit", "low", a1.format("new")): "_x4 1x9",
        # a2 exported without a link: the approvals page at external_url
        'macha_approval_pending_info{job="macha",instance="web1",approval_id="a2",'
        'kind="nix_gc",risk="medium",url=""}': "1x13",
        # a3 is answered after 2 minutes: no alert
        info.format(W1, "a3", "reset_failed", "high", "https://w/a3"): "1 1 _x11",
    }, [("3m", "MachaApprovalPendingItem", []),
        ("8m", "MachaApprovalPendingItem", [
            item("a1", "restart_unit", "low", a1.format("new")),
            item("a2", "nix_gc", "medium", "https://m.example/approvals"),
        ])])  # fmt: skip
    out = promtool_test(promtool, tmp_path, rules, [spec])
    assert out.startswith("rc=0"), out
