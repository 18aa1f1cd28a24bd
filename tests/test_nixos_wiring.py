"""The NixOS module's wiring into the services beside it — Prometheus (scrape job, the
rule files rendered from the module's own thresholds, the local Alertmanager), Grafana,
Ollama, the firewall — and the CLI wrappers it puts on PATH."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from macha_obs import config as config_mod
from tests.harness.nix_support import (
    PROMETHEUS_ON,
    REPO,
    SEED_EXAMPLE,
    SERVICE,
    WITH_ALERTMANAGER,
    eval_module,
    need,
    rule_blocks,
    run_tool,
    to_toml,
)

PKG = "/stub/macha-obs"
SETTINGS_FILE = "/stub/macha-obs.toml"  # what the stub pkgs.formats.toml generates


def _prometheus(result: dict[str, Any]) -> dict[str, Any]:
    prometheus: dict[str, Any] = result["config"].get("services", {}).get("prometheus", {})
    return prometheus


def test_a_wide_listener_needs_no_token_file_and_wires_nothing_unasked() -> None:
    result = eval_module({"enable": True, "listenAddress": "0.0.0.0"})
    assert result["warnings"] == []
    assert result["failedAssertions"] == []
    services = result["config"].get("services", {})
    prometheus = _prometheus(result)
    assert not prometheus.get("scrapeConfigs")
    assert not prometheus.get("ruleFiles")
    assert not prometheus.get("alertmanagers")
    assert not prometheus.get("alertmanager", {}).get("configuration")
    assert not services.get("ollama", {}).get("enable")
    assert not services.get("grafana", {}).get("provision", {}).get("enable")
    assert not result["config"].get("networking", {}).get("firewall", {}).get("allowedTCPPorts")


@pytest.mark.parametrize("service", ["prometheus", "alertmanager", "grafana"])
def test_wiring_into_a_service_that_is_off_warns(service: str) -> None:
    result = eval_module({"enable": True, service: {"enable": True}})
    assert any(f"{service} is not enabled" in w for w in result["warnings"]), result["warnings"]
    if service == "alertmanager":  # and gives no credential to a unit that does not exist
        result = eval_module({"enable": True, "webhookTokenFile": "/t", service: {"enable": True}})
        assert "alertmanager" not in result["config"]["systemd"]["services"]


def test_prometheus_gets_the_scrape_job_the_rendered_rules_and_the_alertmanager() -> None:
    settings = {"enable": True, "listenAddress": "0.0.0.0", "port": 9850,
                "prometheus": {"enable": True}, **WITH_ALERTMANAGER}  # fmt: skip
    result = eval_module(settings, other=PROMETHEUS_ON)
    assert result["failedAssertions"] == result["warnings"] == []
    prometheus = _prometheus(result)
    (job,) = prometheus["scrapeConfigs"]
    assert job["job_name"] == "macha"
    assert job["static_configs"] == [
        {"targets": ["127.0.0.1:9850"], "labels": {"instance": "testhost"}}
    ]
    # the rule files are rendered from the very file the daemon reads (its thresholds)
    rules = result["values"]["prometheus"]["rules"]
    assert rules["buildCommand"].strip() == (
        f"{PKG}/bin/macha-obs --config {SETTINGS_FILE} rules render $out"
    )
    etc = result["config"]["environment"]["etc"]["macha-obs/config.toml"]["source"]
    assert etc["storePath"] == SETTINGS_FILE
    assert prometheus["ruleFiles"] == [
        f"{rules['storePath']}/macha.yml",
        f"{rules['storePath']}/macha-sidecar.yml",
    ]
    assert sorted(Path(p).name for p in prometheus["ruleFiles"]) == sorted(
        p.name for p in (REPO / "alert_rules").glob("*.yml")
    )
    # Prometheus sends to the Alertmanager beside it (NixOS' default port 9093, on all
    # addresses: loopback reaches it)
    assert prometheus["alertmanagers"] == [{"static_configs": [{"targets": ["127.0.0.1:9093"]}]}]


def test_grafana_and_ollama_wiring() -> None:
    settings = {"enable": True, "grafana": {"enable": True}, "ollama": {"enable": True},
                "model": "qwen2.5:7b"}  # fmt: skip
    result = eval_module(settings)
    services = result["config"]["services"]
    assert services["grafana"]["provision"]["enable"] is True
    (provider,) = services["grafana"]["provision"]["dashboards"]["settings"]["providers"]
    provisioned = {p.name for p in Path(provider["options"]["path"]).glob("*.json")}
    assert provisioned == {"macha-fleet.json", "macha-host.json", "macha-sidecar.json"}
    ollama = services["ollama"]
    assert (ollama["enable"], ollama["host"], ollama["loadModels"]) == (
        True,
        "127.0.0.1",
        ["qwen2.5:7b"],
    )
    assert not [w for w in result["warnings"] if "ollama" in w.lower()]
    unit = result["config"]["systemd"]["services"][SERVICE]
    assert "ollama.service" in unit["after"]
    assert "ollama.service" in unit["wants"]
    moved = eval_module(
        {"enable": True, "ollama": {"enable": True}, "model": "qwen2.5:7b"},
        other={"services": {"ollama": {"port": 11500}}},
    )
    assert any("ollamaUrl" in w for w in moved["warnings"])


def test_ollama_pulls_no_model_the_user_did_not_name() -> None:
    """The default model is about 40 GB: enabling Ollama must not download it."""
    result = eval_module({"enable": True, "ollama": {"enable": True}})
    assert not result["config"]["services"]["ollama"].get("loadModels")
    assert any("no model is pulled" in w for w in result["warnings"]), result["warnings"]
    # the seed's example names the default model itself: that is a choice, pulled
    named = eval_module({**SEED_EXAMPLE, "ollama": {"enable": True}})
    assert named["config"]["services"]["ollama"]["loadModels"] == ["llama3.1:70b"]
    assert not [w for w in named["warnings"] if "model" in w]


def test_open_firewall_opens_the_listeners_port_only_when_asked() -> None:
    wide = {"enable": True, "listenAddress": "0.0.0.0", "port": 9850}
    opened = eval_module({**wide, "openFirewall": True})
    assert opened["config"]["networking"]["firewall"]["allowedTCPPorts"] == [9850]
    assert opened["warnings"] == []
    closed = eval_module(wide)
    assert not closed["config"].get("networking", {}).get("firewall", {}).get("allowedTCPPorts")
    # a port opened for a loopback listener reaches nothing: said, not refused
    loopback = eval_module({"enable": True, "openFirewall": True})
    assert any("openFirewall" in w for w in loopback["warnings"])


# ------------------------------------------------------------------ real checkers


def _render_rules(result: dict[str, Any], outdir: Path) -> None:
    """Run what the module's derivation runs, on the same rendered config file."""
    etc = result["config"]["environment"]["etc"]["macha-obs/config.toml"]["source"]
    config = outdir.parent / "macha-obs.toml"
    config.write_text(to_toml(etc["toml"]))
    command = result["values"]["prometheus"]["rules"]["buildCommand"].split()
    assert command[1:] == ["--config", SETTINGS_FILE, "rules", "render", "$out"]
    # `rules` may not be registered on the CLI yet: importing it registers it
    script = "import sys, macha_obs.cli.rules, macha_obs.cli as c; c.main(sys.argv[1:])"
    argv = [sys.executable, "-c", script, "--config", str(config), "rules", "render", str(outdir)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def _threshold(rule_file: Path, alertname: str) -> float:
    """The first number an alert's expression compares with (`… >= 0.80`)."""
    match = re.search(r">=\s*([0-9.]+)", rule_blocks(rule_file.read_text())[alertname])
    assert match, f"{alertname} in {rule_file} compares with no number"
    return float(match[1])


@pytest.mark.stack
def test_the_rendered_prometheus_configuration_passes_promtool(tmp_path: Path) -> None:
    """The module's Prometheus side, with the rule files its derivation renders from a
    changed threshold: `promtool check config` accepts it, and the rule has the value."""
    promtool = need("promtool")
    settings = {"enable": True, "prometheus": {"enable": True}, **WITH_ALERTMANAGER,
                "settings": {"disk_fill_threshold": 0.8}}  # fmt: skip
    result = eval_module(settings, other=PROMETHEUS_ON)
    prom = _prometheus(result)
    rules_dir = tmp_path / "rules"
    _render_rules(result, rules_dir)
    store_path = result["values"]["prometheus"]["rules"]["storePath"]
    rule_files = [p.replace(store_path, str(rules_dir)) for p in prom["ruleFiles"]]
    assert all(Path(p).is_file() for p in rule_files)
    assert _threshold(Path(rule_files[0]), "MachaDiskFilling") == 0.8
    config = {
        "scrape_configs": prom["scrapeConfigs"],
        "rule_files": rule_files,
        "alerting": {"alertmanagers": prom["alertmanagers"]},
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    run_tool(promtool, "check", "config", str(path))


# ------------------------------------------------------------------ the CLI tools


def test_cli_tools_call_their_own_console_script_on_the_services_config() -> None:
    seed = eval_module(SEED_EXAMPLE)
    tools = {t["name"]: t["text"] for t in seed["config"]["environment"]["systemPackages"]}
    assert set(tools) == {"macha-obs", "macha-approve", "macha-logs", "macha-check"}
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(tools) <= set(scripts)
    for name, text in tools.items():
        # each wrapper runs the console script of its name, so its options are its own
        # (`macha-check --autonomy-level observe`), and passes the arguments on
        assert set(re.findall(rf"{PKG}/bin/([\w-]+)", text)) == {name}, name
        assert re.search(rf'{PKG}/bin/{name} "\$@"$', text, re.M), name
        # as root, they drop to the service user (never root-owned files in the state dir)
        assert "--reuid=macha-autonomous --regid=macha-autonomous" in text
        assert "--config" not in text  # /etc/macha-obs/config.toml is the CLI default
    assert Path("/etc/macha-obs/config.toml") == config_mod.DEFAULT_CONFIG_PATH
    assert "macha-obs/config.toml" in seed["config"]["environment"]["etc"]


def test_the_python_side_provides_what_the_units_run() -> None:
    """The units run `macha-obs … serve`, `macha-obs privileged %i`, `macha-check`."""
    from macha_obs import cli

    missing = {"serve", "privileged", "check"} - set(cli.main.commands)
    assert not missing, f"macha-obs lacks the subcommands the module runs: {sorted(missing)}"
