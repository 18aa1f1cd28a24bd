"""The alert rules rendered from the config: the shipped files are the defaults' rendering,
a threshold in the config is the threshold Prometheus alerts by, and `rules render` needs
nothing but the config (it runs in a Nix build sandbox)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

import macha_obs.cli.rules  # noqa: F401  (registers `rules` on main)
from macha_obs.cli import main
from macha_obs.config import Config
from macha_obs.setup.rules import (
    APPROVAL_ITEM_FILE,
    RULE_FILES,
    SERIES,
    TEMPLATE_FILES,
    RulesError,
    duration,
    fill,
    number,
    percent,
    ratio,
    render,
    rule_values,
    spoken,
    template,
    write_rules,
)
from tests.harness.eyes_support import PROJECT

SHIPPED = PROJECT / "alert_rules"
SIDECAR = "macha-sidecar.yml"


def alert_blocks(text: str) -> dict[str, str]:
    """Each rule's text, from its `- alert:` line to the next rule or group; tiers of one
    name (MachaDiskFillingUp) by name/severity."""
    found = re.finditer(
        r"^ +- alert: (\S+)\n(.*?)(?=^ +- alert: |^ +- record: |^  - name: |^  #|\Z)",
        text,
        re.M | re.S,
    )
    blocks: dict[str, str] = {}
    for m in found:
        name, block = m.group(1), m.group(2)
        if text.count(f"- alert: {name}\n") > 1:
            name += "/" + re.search(r"severity: (\S+)", block).group(1)  # type: ignore[union-attr]
        blocks[name] = block
    return blocks


def field(block: str, name: str) -> str:
    """A rule's `expr:` (one line or a `|` block), `for:` or `description:`."""
    m = re.search(rf"^ +{name}: (\|\n(?: {{10}}.*\n)+|.*)", block, re.M)
    assert m, f"no {name} in {block}"
    return m.group(1)


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


# ------------------------------------------------------------------ the default rendering


def test_shipped_rule_files_are_the_rendering_of_the_default_config() -> None:
    rendered = render(Config())
    assert sorted(rendered) == sorted(p.name for p in SHIPPED.glob("*.yml"))
    for name, text in rendered.items():
        assert (SHIPPED / name).read_text() == text, (
            f"alert_rules/{name} is not the default rendering: edit macha_obs/setup/rules.py, then "
            "`macha-obs --config /dev/null rules render alert_rules`"
        )


def test_rendering_depends_on_the_thresholds_never_on_the_host() -> None:
    assert render(Config(hostname="web1")) == render(Config(hostname="db7.example.org"))
    assert render(Config(hostname="web1", disk_fill_threshold=0.5)) != render(Config())


def test_every_placeholder_has_a_value_and_every_value_a_placeholder() -> None:
    values = rule_values(Config())
    templates = [template(f) for f in [*TEMPLATE_FILES.values(), APPROVAL_ITEM_FILE]]
    used = {name for t in templates for name in re.findall(r"\[\[([a-z_0-9]+)\]\]", t)}
    for series in SERIES.values():  # each variant names every series the templates read
        assert used == set(values) | set(series) | {"approval_item_rule"}
    for cfg in (Config(), Config(node_exporter=True, approval_alert_per_item=True)):
        assert all(not re.search(r"\[\[[a-z]", text) for text in render(cfg).values())
    with pytest.raises(KeyError, match="nope"):
        fill("x [[nope]]", values)


# ------------------------------------------------------------------ numbers as rules read them


@pytest.mark.parametrize(
    ("value", "as_ratio", "as_percent"),
    [
        (0.9, "0.90", "90"),
        (0.75, "0.75", "75"),
        (1.0, "1.00", "100"),
        (0.5, "0.50", "50"),
        (0.955, "0.955", "95.5"),
        (0.123456789, "0.123456789", "12.3456789"),
        (1e-5, "0.00001", "0.001"),  # never an exponent
    ],
)
def test_ratios_read_the_same_in_the_expression_and_the_description(
    value: float, as_ratio: str, as_percent: str
) -> None:
    assert ratio(value) == as_ratio
    assert percent(value) == as_percent


@pytest.mark.parametrize(
    ("seconds", "prom", "words"),
    [(1800, "30m", "30 minutes"), (90, "1m30s", "90 seconds"), (3600, "1h", "1 hour"),
     (5400, "1h30m", "90 minutes"), (60, "1m", "1 minute"), (30, "30s", "30 seconds")],
)  # fmt: skip
def test_durations_for_prometheus_and_for_people(seconds: int, prom: str, words: str) -> None:
    assert duration(seconds) == prom
    assert spoken(seconds) == words


def test_numbers_are_exact_and_plain() -> None:
    assert [number(v) for v in (900.0, 902.5, 15, 0.1)] == ["900", "902.5", "15", "0.1"]
    assert spoken(902.5) == "902.5 seconds"


# ------------------------------------------------------------------ a threshold follows the config

CHANGES: list[tuple[dict[str, Any], str, dict[str, str]]] = [
    # (config, the one rule that changes, {field: what it now says})
    ({"disk_fill_threshold": 0.75}, "MachaDiskFilling",
     {"expr": "size_bytes >= 0.75\n",
      "description": "full on {{ $labels.instance }} (threshold 75%)."}),
    ({"inode_threshold": 0.955}, "MachaInodesLow",
     {"expr": "files >= 0.955\n", "description": "(threshold 95.5%)."}),
    ({"memory_pressure_threshold": 0.8}, "MachaMemoryPressure",
     {"expr": "total_bytes >= 0.80", "description": "(threshold 80%)."}),
    ({"journal_error_burst": 50}, "MachaJournalErrorBurst",
     {"expr": "[5m]) >= 50", "description": "(threshold 50)."}),
    ({"disk_predict_warning_hours": 48}, "MachaDiskFillingUp/warning",
     {"expr": "[6h], 172800) < 0", "description": "will be full within 48 hours;"}),
    ({"disk_predict_critical_hours": 0.5}, "MachaDiskFillingUp/critical",
     {"expr": "[6h], 1800) < 0", "description": "will be full within 30 minutes;"}),
    ({"auth_failure_burst": 25}, "MachaAuthFailuresBurst",
     {"expr": "[10m]) >= 25", "description": "(threshold 25):"}),
    ({"auth_failure_window": 1800}, "MachaAuthFailuresBurst",
     {"expr": "[30m]) >= 10", "description": "within 30 minutes on"}),
    ({"flapping_restarts": 5}, "MachaUnitFlapping",
     {"expr": "[15m]) >= 5", "description": "(threshold 5)."}),
    ({"collect_interval": 600}, "MachaSnapshotStale",
     {"expr": "> 1800", "description": "(threshold 30 minutes)"}),
    ({"check_interval": 60}, "MachaLoopStalled",
     {"expr": "> 660", "description": "(threshold 11 minutes)"}),
    ({"verify_timeout": 45}, "MachaLoopStalled",
     {"expr": "> 1050", "description": "(threshold 1050 seconds)"}),
    ({"approval_ttl": 600}, "MachaApprovalsPending",
     {"for": "5m", "description": "for over 5 minutes ("}),
    ({"external_url": "https://macha.example.org/"}, "MachaApprovalsPending",
     {"approvals_url": '{{ or $url "https://macha.example.org/approvals" }}'}),
]  # fmt: skip


@pytest.mark.parametrize(("settings", "alert", "says"), CHANGES, ids=lambda c: str(c)[:40])
def test_a_setting_changes_its_rule_and_its_description_and_nothing_else(
    settings: dict[str, Any], alert: str, says: dict[str, str]
) -> None:
    default = {n: alert_blocks(t) for n, t in render(Config()).items()}
    changed = {n: alert_blocks(t) for n, t in render(Config(**settings)).items()}
    differ = [a for n in RULE_FILES for a in default[n] if default[n][a] != changed[n][a]]
    assert differ == [alert]
    (block,) = [blocks[alert] for blocks in changed.values() if alert in blocks]
    for name, fragment in says.items():
        assert fragment in field(block, name), f"{alert} {name}: {field(block, name)}"


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("127.0.0.1:9847", "http://127.0.0.1:9847/readyz"),
        ("[::]:9850", "http://[::1]:9850/readyz"),
        ("[fe80::1]:9850", "http://[fe80::1]:9850/readyz"),
        ("localhost:80", "http://localhost:80/readyz"),
    ],
)
def test_the_readyz_address_follows_listen_address_and_nothing_else_gets_in(
    listen: str, url: str
) -> None:
    assert rule_values(Config(listen_address=listen))["readyz_url"] == url


def test_an_address_that_could_carry_text_into_a_rule_is_refused_by_the_config() -> None:
    """The address field lets nothing but a host through (issue 20's checks), so no
    text of it can reach a rule file."""
    with pytest.raises(ValidationError, match="listen_address"):
        Config(listen_address='evil"} {{ $x }}\n#:9847')


def test_listen_address_is_where_people_are_sent_unless_there_is_an_external_url() -> None:
    default = {n: alert_blocks(t) for n, t in render(Config()).items()}
    moved = {n: alert_blocks(t) for n, t in render(Config(listen_address="[::]:9999")).items()}
    differ = {a for n in RULE_FILES for a in default[n] if default[n][a] != moved[n][a]}
    assert differ == {"MachaNotReady", "MachaApprovalsPending"}
    block = moved[SIDECAR][("MachaApprovalsPending")]
    assert '{{ or $url "http://[::1]:9999/approvals" }}' in field(block, "approvals_url")
    behind = Config(listen_address="[::]:9999", external_url="https://m.example.org/x")
    block = alert_blocks(render(behind)[SIDECAR])["MachaApprovalsPending"]
    assert '$url "https://m.example.org/x/approvals" }}' in field(block, "approvals_url")


@pytest.mark.parametrize(
    "url",
    ['https://x/"}} {{ $x }}', "https://x/a b", "javascript:alert(1)", "https://x/{{ . }}"],
)
def test_an_external_url_a_rule_cannot_hold_is_refused(url: str) -> None:
    """The config refuses it; and should a value ever get past the config, the rendering
    refuses it again rather than write it into a rule file."""
    with pytest.raises(ValidationError, match="external_url"):
        Config(external_url=url)
    unchecked = Config().model_copy(update={"external_url": url})
    with pytest.raises(RulesError, match="approvals_url"):
        render(unchecked)


@pytest.mark.parametrize(
    "url", ['https://x/"}} {{ $x }}', "https://x/a b", "ftp://x/", "https://x/\\n", ""]
)
def test_a_runbook_base_a_rule_cannot_hold_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="runbook_url_base"):
        Config(runbook_url_base=url)
    unchecked = Config().model_copy(update={"runbook_url_base": url})
    with pytest.raises(RulesError, match="runbook_base"):
        render(unchecked)


def test_the_runbook_base_is_every_rules_and_only_that_changes() -> None:
    base = "https://wiki.example.org/ops/macha_runbooks"
    cfg = Config(runbook_url_base=base + "/", approval_alert_per_item=True)
    for text in render(cfg).values():
        names = re.findall(r"- alert: (\S+)", text)
        urls = re.findall(r'runbook_url: "(\S+)"', text)
        assert urls == [f"{base}/{name}.md" for name in names]
        default = render(Config(approval_alert_per_item=True))
        assert text.replace(base, Config().runbook_url_base) in default.values()


def test_disk_tiers_must_warn_before_they_page() -> None:
    with pytest.raises(ValidationError, match="disk_predict_warning_hours"):
        Config(disk_predict_warning_hours=2, disk_predict_critical_hours=4)


def test_approvals_alert_before_they_expire() -> None:
    """With a short approval_ttl the queue empties itself before 30 minutes: the alert
    must wait less than the approvals live, or it never fires."""
    for ttl, wait in ((60.0, "30s"), (600.0, "5m"), (3599.0, "29m59s"), (86400.0, "30m")):
        assert rule_values(Config(approval_ttl=ttl))["approvals_for"] == wait


# ------------------------------------------------------------------ promtool on the rendering

EXTREMES = [
    {},
    {"disk_fill_threshold": 1.0, "inode_threshold": 1e-5, "memory_pressure_threshold": 0.5},
    {"journal_error_burst": 1_000_000, "flapping_restarts": 1, "collect_interval": 3600},
    {"approval_ttl": 60, "check_interval": 86400, "verify_timeout": 0.5},
    {"listen_address": "[::]:1"},
]


@pytest.mark.stack
@pytest.mark.parametrize("settings", EXTREMES, ids=lambda s: ",".join(s) or "defaults")
def test_rendered_rules_pass_promtool_check(
    promtool: str, tmp_path: Path, settings: dict[str, Any]
) -> None:
    written = write_rules(Config(**settings), tmp_path)
    done = run(promtool, "check", "rules", *map(str, written))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


# What fires at the thresholds below and not just under them; the default thresholds
# decide every case the other way, so the default rendering must fail the same tests.
CUSTOM = {
    "disk_fill_threshold": 0.75,
    "inode_threshold": 0.95,
    "memory_pressure_threshold": 0.8,
    "journal_error_burst": 50,
    "flapping_restarts": 5,
    "collect_interval": 600,
    "approval_ttl": 600,
    "check_interval": 60,
    "verify_timeout": 10,
    "listen_address": "0.0.0.0:9999",
}
W1 = 'job="macha",instance="web1"'


RUNBOOKS = Config().runbook_url_base


def case(
    name: str,
    series: dict[str, str],
    evals: list[tuple[str, str, list[tuple]]],
    interval: str = "1m",
) -> dict:
    """One promtool test: `series` name → values; evals of (time, alert, [(labels, summary,
    description[, other annotations])]); every alert's runbook_url is its page."""

    def annotations(alert: str, summary: str, d: str, *more: dict[str, str]) -> dict:
        return {"summary": summary, "description": d, "runbook_url": f"{RUNBOOKS}/{alert}.md",
                **(more[0] if more else {})}  # fmt: skip

    return {
        "name": name,
        "interval": interval,
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": [
            {
                "eval_time": at,
                "alertname": alert,
                "exp_alerts": [
                    {"exp_labels": labels, "exp_annotations": annotations(alert, *rest)}
                    for labels, *rest in expected
                ],
            }
            for at, alert, expected in evals
        ],
    }


def host_cases() -> list[dict]:
    web1 = {"job": "macha", "instance": "web1", "severity": "warning"}
    var = {**web1, "mountpoint": "/var", "device": "/dev/sda2", "fstype": "ext4"}
    srv = {**web1, "mountpoint": "/srv", "device": "/dev/sdb1", "fstype": "ext4"}
    fs = 'job="macha",instance="web1",device="{}",fstype="ext4",mountpoint="{}"'
    return [
        case("memory at 85% fires over 80%; 75% does not", {
            f"macha_memory_total_bytes{{{W1}}}": "100x20",
            f"macha_memory_available_bytes{{{W1}}}": "15x20",
            'macha_memory_total_bytes{job="macha",instance="web2"}': "100x20",
            'macha_memory_available_bytes{job="macha",instance="web2"}': "25x20",
        }, [("10m", "MachaMemoryPressure", [(web1, "Memory pressure on web1",
             "85% of memory is in use on web1 (threshold 80%).")])]),
        case("disk at 80% fires over 75%; 70% does not", {
            f"macha_filesystem_size_bytes{{{fs.format('/dev/sda2', '/var')}}}": "1000x30",
            f"macha_filesystem_avail_bytes{{{fs.format('/dev/sda2', '/var')}}}": "200x30",
            f"macha_filesystem_size_bytes{{{fs.format('/dev/sda1', '/')}}}": "1000x30",
            f"macha_filesystem_avail_bytes{{{fs.format('/dev/sda1', '/')}}}": "300x30",
        }, [("15m", "MachaDiskFilling", [(var, "/var is filling up on web1",
             "/var (/dev/sda2) is 80% full on web1 (threshold 75%).")])]),
        case("inodes at 96% fire over 95%; 94% do not", {
            f"macha_filesystem_files{{{fs.format('/dev/sdb1', '/srv')}}}": "1000x30",
            f"macha_filesystem_files_free{{{fs.format('/dev/sdb1', '/srv')}}}": "40x30",
            f"macha_filesystem_files{{{fs.format('/dev/sda1', '/')}}}": "1000x30",
            f"macha_filesystem_files_free{{{fs.format('/dev/sda1', '/')}}}": "60x30",
        }, [("15m", "MachaInodesLow", [(srv, "/srv is running out of inodes on web1",
             "96% of the inodes of /srv are used on web1 (threshold 95%).")])]),
        case("50 journal errors in one cycle fire; 49 do not", {
            f'macha_journal_errors_total{{{W1},unit="app.service"}}': "0x4 50x20",
            f'macha_journal_errors_total{{{W1},unit="quiet.service"}}': "0x4 49x20",
        }, [("7m", "MachaJournalErrorBurst", [({**web1, "unit": "app.service"},
             "Burst of journal errors from app.service on web1",
             "app.service logged 50 error entries in 5m on web1 (threshold 50).")])]),
        case("5 restarts in 15m flap; 4 do not", {
            f'macha_systemd_unit_restarts_total{{{W1},unit="app.service"}}': "0 1 2 3 4 5 5 5",
            f'macha_systemd_unit_restarts_total{{{W1},unit="calm.service"}}': "0 1 2 3 4 4 4 4",
        }, [("7m", "MachaUnitFlapping", [({**web1, "unit": "app.service"},
             "app.service keeps restarting on web1",
             "app.service restarted 5 times in 15 minutes on web1 (threshold 5).")])]),
        case("a snapshot is stale after three 10-minute collect_intervals, not before", {
            f"macha_snapshot_timestamp_seconds{{{W1}}}": "0x60",
        }, [("33m", "MachaSnapshotStale", []),
            ("40m", "MachaSnapshotStale", [({**web1, "audience": "human"},
             "macha-obs snapshot is stale on web1",
             "The latest snapshot on web1 is 40m 0s old (threshold 30 minutes):"
             " the collection loop is stuck.")])]),
    ]  # fmt: skip


def sidecar_cases() -> list[dict]:
    human = {"job": "macha", "instance": "web1", "severity": "warning", "audience": "human"}
    return [
        case("approvals pending 5m fire when they live 10m; 4m do not", {
            f"macha_approvals_pending{{{W1}}}": "0 2x20",
        }, [("4m", "MachaApprovalsPending", []),
            ("8m", "MachaApprovalsPending", [(human, "Actions wait for approval on web1",
             "macha-obs on web1 has had actions waiting for a human for over 5 minutes (2 now)."
             " Review them with `macha-approve list` and `macha-approve show ID`, then"
             " `macha-approve approve ID` or `macha-approve reject ID`; unanswered, they"
             " expire and nothing is done.",
             {"approvals_url": "http://127.0.0.1:9999/approvals"})])]),
        case("a loop stalled past 60 s + 10 x 40 s fires; one not yet past it does not", {
            f"macha_last_cycle_timestamp_seconds{{{W1}}}": "0+60x5 300x30",
        }, [("16m", "MachaLoopStalled", []),
            ("20m", "MachaLoopStalled", [(human,
             "macha-obs has stopped its check cycles on web1",
             "The last check cycle of macha-obs on web1 started 15m 0s ago (threshold 460"
             " seconds): nothing is analysed or fixed. See `macha-logs service` and"
             " `macha-obs status`; restart the service (macha-autonomous) if it is stuck.")])]),
        case("not ready names the configured port", {
            f'macha_health_problem{{{W1},problem="store"}}': "1x10",
        }, [("8m", "MachaNotReady", [({**human, "severity": "critical", "problem": "store"},
             "macha-obs on web1 cannot do its job (store)",
             "macha-obs on web1 has not been ready for 5 minutes: store. `macha-obs status`"
             " or `curl -s http://127.0.0.1:9999/readyz` says why, `macha-logs service` shows"
             " the errors. A lost state.db is not replaced silently: restore it and restart,"
             " or restart with `macha-obs serve --start-fresh`; a dead thread needs a"
             " restart; a failing collector clears when its source answers again.")])]),
    ]  # fmt: skip


def promtool_tests(rules: Path, cases: list[dict]) -> str:
    """A `promtool test rules` file; JSON is YAML, so no quoting of our own."""
    return json.dumps({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": cases})


@pytest.mark.stack
@pytest.mark.parametrize(
    ("rules", "cases"), [("macha.yml", host_cases), ("macha-sidecar.yml", sidecar_cases)]
)
def test_rules_fire_at_the_configured_thresholds_and_not_below(
    promtool: str, tmp_path: Path, rules: str, cases: Any
) -> None:
    custom = write_rules(Config(**CUSTOM), tmp_path / "custom")
    default = write_rules(Config(), tmp_path / "default")
    for written, should_pass in ((custom, True), (default, False)):
        (path,) = [p for p in written if p.name == rules]
        spec = tmp_path / f"{path.parent.name}-{rules}.test.yml"
        spec.write_text(promtool_tests(path, cases()))
        done = run(promtool, "test", "rules", str(spec))
        out = done.stdout + done.stderr
        assert (done.returncode == 0) == should_pass, out
        if not should_pass:  # every case depends on the configured threshold
            for c in cases():
                assert f"alertname: {c['alert_rule_test'][-1]['alertname']}," in out, c["name"]


# ------------------------------------------------------------------ `macha-obs rules render`

RENDER_ONLY = (
    "import sys, macha_obs.cli.rules; from macha_obs.cli import main;"
    " main(args=sys.argv[1:], prog_name='macha-obs')"
)


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_render_writes_both_files_for_the_configs_thresholds(tmp_path: Path) -> None:
    state = tmp_path / "state"
    conf = config_file(tmp_path, f'disk_fill_threshold = 0.8\nstate_dir = "{state}"\n')
    out = tmp_path / "build" / "rules"  # created, parents and all
    args = ["--config", str(conf), "rules", "render", str(out)]
    result = CliRunner().invoke(main, args, env={"MACHA_CONFIG": ""})
    assert result.exit_code == 0, result.output
    expected = render(Config(disk_fill_threshold=0.8))
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)  # no temporary left
    for name, text in expected.items():
        assert (out / name).read_text() == text
        assert (out / name).stat().st_mode & 0o777 == 0o644  # Prometheus' user reads them
    assert f"wrote {out / 'macha.yml'}" in result.output
    assert not state.exists()  # a build needs no state dir, and gets none
    # rendering again replaces the files in place
    config_file(tmp_path, f'disk_fill_threshold = 0.7\nstate_dir = "{state}"\n')
    assert CliRunner().invoke(main, args, env={"MACHA_CONFIG": ""}).exit_code == 0
    assert (out / "macha.yml").read_text() == render(Config(disk_fill_threshold=0.7))["macha.yml"]


def test_render_runs_as_a_nix_build_does(tmp_path: Path) -> None:
    """No HOME, no PATH to speak of, a state dir it cannot use: a build sandbox. Run as
    root beside a state dir owned by someone else, it stays root (and can write $out)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(state, 65534, 65534)  # becoming its owner would lose tmp_path (0700)
    conf = config_file(tmp_path, f'flapping_restarts = 7\nstate_dir = "{state}"\n')
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", RENDER_ONLY, "--config", str(conf), "rules", "render", str(out)],
        env={"PATH": "/var/empty"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "macha.yml").read_text() == render(Config(flapping_restarts=7))["macha.yml"]
    assert os.listdir(state) == []


def test_render_with_a_broken_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    conf = config_file(tmp_path, "disk_fill_threshold = 1.5\n")
    out = tmp_path / "out"
    args = ["--config", str(conf), "rules", "render", str(out)]
    result = CliRunner().invoke(main, args, env={"MACHA_CONFIG": ""})
    assert result.exit_code == 2
    assert "disk_fill_threshold" in result.output
    assert "1.5" in result.output
    assert not out.exists()


def test_render_where_it_cannot_write_exits_1_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    args = ["--config", str(config_file(tmp_path, "")), "rules", "render", str(blocker / "d")]
    result = CliRunner().invoke(main, args, env={"MACHA_CONFIG": ""})
    assert result.exit_code == 1
    assert f"{blocker / 'd'}: cannot write the rules" in result.output


def test_show_prints_one_rendered_file(tmp_path: Path) -> None:
    conf = config_file(tmp_path, "approval_ttl = 600\n")
    args = ["--config", str(conf), "rules", "show", "macha-sidecar.yml"]
    result = CliRunner().invoke(main, args, env={"MACHA_CONFIG": ""})
    assert result.exit_code == 0, result.output
    assert result.output == render(Config(approval_ttl=600))["macha-sidecar.yml"]
