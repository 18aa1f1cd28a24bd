"""The NixOS module and flake: syntax, the flake's outputs, and the module's options
against the config model (one source of truth), evaluated by the real NixOS module
system (nixpkgs' lib from ../shared/nixpkgs-lib; tests/harness/nix_support.py says when a clone
without it falls back to the stand-in). The wiring, units, polkit rule and the lab are in
the other tests/test_nixos_*.py files; docs/nixos.md lists what cannot be checked here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import annotated_types
import pytest

import macha_obs
from macha_obs import config as config_mod
from macha_obs.config import AnalysisMode, AutonomyLevel, Config
from macha_obs.protected import BUILTIN_PROTECTED_UNITS
from tests.harness.nix_support import (
    DOCS,
    FIXTURES,
    PRIVILEGED,
    REPO,
    SEED_EXAMPLE,
    SERVICE,
    NixError,
    eval_lib,
    eval_module,
    need,
    nix_blocks,
    nix_eval_json,
    nix_instantiate,
    rendered_config,
)

# Options that are not config fields: wiring, packaging and the unit's resources.
WIRING_OPTIONS = {
    "enable",
    "package",
    "memoryMax",
    "settings",
    "prometheus.enable",
    "alertmanager.enable",
    "alertmanager.receiver",
    "alertmanager.route",
    "grafana.enable",
    "ollama.enable",
    "openFirewall",
    "alertmanager.humanReceiver",
    "alertmanager.fleetHosts",
    "alertmanager.fleetReceivers",
    "alertmanager.fleetRoutes",
    "prometheus.rules",
}
# listenAddress and port render together to one field.
LISTEN_OPTIONS = {"listenAddress": "listen_address", "port": "listen_address"}
# Options whose name is not the field's camelCase.
NAMED_OPTIONS = {"mcp.enable": "mcp_enabled"}
# Fields the module sets itself (the unit, polkit rule and CLI tools depend on them).
MODULE_FIELDS = {"listen_address", "state_dir", "privileged_unit"}
# Fields with no option of their own: set them through `settings`. A field added to
# config.py must appear here or get an option (and a row in docs/nixos.md).
SETTINGS_ONLY = {
    "exposure_interval",
    "exposure_threshold",
    "exposure_max_units",
    # posture: backups (the module adds the user's restic/borg jobs to backup_units)
    "backup_units",
    "backup_grace",
    "backup_intervals",
    "auth_failure_burst",
    "auth_failure_window",
    "posture_interval",
    "posture_setid_dirs",
    "inbox_retention",
    "inbox_max_rows",
    "incident_retention",
    "incident_max_resolved",
    "inbox_max_bytes",
    "incident_max_open",
    "incident_max_alerts",
    "incident_alerts_max_bytes",
    "log_max_bytes",
    "log_keep",
    "openai_api_key_file",
    "llm_endpoint_user",
    "auto_reset_start_limit",
    "llm_enabled",
    "llm_backend",
    "openai_url",
    "openai_response_format",
    "collect_interval",
    "llm_timeout",
    "llm_keep_alive",
    "llm_max_steps",
    "webhook_max_body_bytes",
    "webhook_auth",
    "hostname",
    "host_labels",
    "host_aliases",
    "journal_dir",
    "nixos_flake",
    "breaker_threshold",
    "breaker_window",
    "approval_ttl",
    "verify_timeout",
    "verify_settle",
    "alert_verify_window",
    "event_debounce",
    "dbus_events",
    "dbus_timeout",
    "systemd_bus_address",
    "snapshot_retention",
    "dns_names",
    "tcp_targets",
    "network_timeout",
    "disk_fill_threshold",
    "inode_threshold",
    "memory_pressure_threshold",
    "cpu_busy_threshold",
    "load_per_cpu_threshold",
    "swap_used_threshold",
    "journal_error_burst",
    "flapping_restarts",
    # the NixOS remediation (rebuild sequence, rollback proposals, gc, config changes)
    "nix_gc_keep_generations",
    "nix_rollback_window",
    "nix_root",
    "nixos_config_dir",
    "rebuild_check_units",
    "rebuild_health_window",
    # Prometheus-native and the fleet (docs/fleet.md)
    "node_exporter",
    "disk_predict_warning_hours",
    "disk_predict_critical_hours",
    "runbook_url_base",
    "alertmanager_urls",
    "alertmanager_pull_interval",
    "alertmanager_pull_timeout",
    "alertmanager_pull_max_bytes",
    "alertmanager_pull_max_groups",
    "alertmanager_pull_max_alerts",
    "fleet_prometheus_url",
    "fleet_max_hosts",
    "fleet_window",
    # the approvals page
    "external_url",
    "approval_alert_per_item",
    # learning from the operator: trust is granted in settings, by a person
    "trusted_actions",
    "suppress_after_rejections",
    "suppress_after_failures",
    "suppress_window",
    "learn_metrics_unit_label",
    # the MCP server (docs/mcp.md): its own token file, and the loopback-only opt-out
    "mcp_token_file",
    "mcp_auth",
}


def snake(option: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", option).lower()


@pytest.fixture(scope="module")
def seed() -> dict[str, Any]:
    return eval_module(SEED_EXAMPLE)


@pytest.fixture(scope="module")
def options(seed: dict[str, Any]) -> dict[str, Any]:
    opts: dict[str, Any] = seed["options"]
    return opts


@pytest.fixture(scope="module")
def docs() -> str:
    return DOCS.read_text()


# ------------------------------------------------------------------ syntax and flake


def nix_files() -> list[Path]:
    return sorted([REPO / "flake.nix", *(REPO / "nixos").rglob("*.nix"), *FIXTURES.rglob("*.nix")])


@pytest.mark.parametrize("path", nix_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_nix_file_parses(path: Path) -> None:
    nix_instantiate("--parse", str(path))


def test_flake_check_against_a_stand_in_nixpkgs(tmp_path: Path) -> None:
    """`nix flake check --no-build` with nixpkgs overridden by a stub (no network here)."""
    nix = need("nix")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("flake.nix", "pyproject.toml", "nixos", "alert_rules", "grafana"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "macha_obs", source / "macha_obs", ignore=shutil.ignore_patterns("__pycache__")
    )
    base = [
        nix,
        "--extra-experimental-features",
        "nix-command flakes",
        "--store",
        str(tmp_path / "store"),  # never /nix
        "--option",
        "build-users-group",
        "",
    ]
    flake = ["--no-write-lock-file", "--override-input", "nixpkgs", f"path:{FIXTURES}/stub-nixpkgs"]

    def run(*args: str) -> str:
        done = subprocess.run(
            [*base, *args], capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    run("flake", "check", "--no-build", *flake, f"path:{source}")
    show = json.loads(run("flake", "show", "--json", *flake, f"path:{source}"))
    assert {"packages", "overlays", "nixosModules", "devShells", "checks"} <= set(show)
    assert set(show["checks"]["x86_64-linux"]) == {"package", "vm"}

    def attr(path: str) -> Any:
        return json.loads(run("eval", "--json", *flake, f"path:{source}#{path}"))

    # the package really is read from pyproject.toml, its version from the one source
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert attr("packages.x86_64-linux.default.pname") == project["name"]
    assert attr("packages.x86_64-linux.default.version") == macha_obs.__version__
    names = attr("packages.x86_64-linux.default.dependencyNames")
    wanted = [re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]]
    assert names == [n.replace("_", "-") for n in wanted]
    # overlays.default adds pkgs.macha-obs, built by nixos/package.nix
    overlay = "o: builtins.mapAttrs (_: toString) (o { callPackage = f: _: f; } { })"
    added = json.loads(
        run("eval", "--json", *flake, f"path:{source}#overlays.default", "--apply", overlay)
    )
    assert list(added) == ["macha-obs"]
    assert Path(added["macha-obs"]).relative_to(Path(added["macha-obs"]).parents[1]) == Path(
        "nixos/package.nix"
    )
    # the VM test imports the module and its script is valid Python
    modules = attr("checks.x86_64-linux.vm.modules")
    assert [Path(m).relative_to(Path(m).parents[1]) for m in modules] == [Path("nixos/module.nix")]
    compile(attr("checks.x86_64-linux.vm.testScript"), "testScript", "exec")


# ------------------------------------------------------------------ one source of truth


def test_builtin_protected_units_are_read_from_config_py() -> None:
    assert eval_lib("builtinProtectedUnits") == list(BUILTIN_PROTECTED_UNITS)


def test_every_option_maps_to_a_config_field_and_back(options: dict[str, Any]) -> None:
    fields = set(Config.model_fields)
    mapped = {
        name: {**LISTEN_OPTIONS, **NAMED_OPTIONS}.get(name, snake(name))
        for name in options
        if name not in WIRING_OPTIONS
    }
    not_fields = {o: f for o, f in mapped.items() if f not in fields}
    assert not not_fields, f"options without a config field: {not_fields}"

    assert set(eval_lib("moduleFields")) == MODULE_FIELDS
    lib_map = eval_lib("optionFields")
    assert lib_map == {o: f for o, f in mapped.items() if o not in LISTEN_OPTIONS}

    covered = set(mapped.values()) | MODULE_FIELDS | SETTINGS_ONLY
    assert not (set(mapped.values()) - {"listen_address"}) & SETTINGS_ONLY
    missing = fields - covered
    assert not missing, (
        f"config fields with neither an option nor a place in SETTINGS_ONLY: {sorted(missing)}"
    )
    stale = SETTINGS_ONLY - fields
    assert not stale, f"SETTINGS_ONLY names fields config.py no longer has: {sorted(stale)}"


def test_every_option_value_lands_in_its_field() -> None:
    settings_values = config_mod.to_toml_dict(config_mod.validate({"hostname": "h"}))
    settings = {k: v for k, v in settings_values.items() if k in SETTINGS_ONLY}
    settings["nixos_flake"] = "/etc/nixos#h"
    result = eval_module(
        {
            "enable": True,
            "autonomyLevel": "auto-full",
            "checkInterval": 60.5,
            "model": "qwen2.5:7b",
            "ollamaUrl": "http://10.0.0.2:11434",
            "analysis": "llm-first",
            "protectedUnits": ["postgresql.service", "k3s*.service"],
            "listenAddress": "::1",
            "port": 9999,
            "webhookTokenFile": "/run/secrets/macha-token",
            "maxActionsPerHour": 5,
            "maxActionsPerTargetPerHour": 1,
            "mcp": {"enable": False},
            "settings": settings,
        }
    )
    assert result["failedAssertions"] == []
    cfg = rendered_config(result)
    assert cfg.autonomy_level is AutonomyLevel.AUTO_FULL
    assert cfg.check_interval == 60.5
    assert cfg.model == "qwen2.5:7b"
    assert cfg.ollama_url == "http://10.0.0.2:11434"
    assert cfg.analysis is AnalysisMode.LLM_FIRST
    assert cfg.protected_units == (*BUILTIN_PROTECTED_UNITS, "postgresql.service", "k3s*.service")
    assert cfg.listen_address == "[::1]:9999"
    assert (cfg.listen_host, cfg.listen_port) == ("::1", 9999)
    assert str(cfg.webhook_token_file) == f"/run/credentials/{SERVICE}.service/webhook-token"
    assert cfg.max_actions_per_hour == 5
    assert cfg.max_actions_per_target_per_hour == 1
    assert cfg.mcp_enabled is False
    assert str(cfg.state_dir) == "/var/lib/macha-autonomous"
    assert cfg.privileged_unit == PRIVILEGED
    assert cfg.nixos_flake == "/etc/nixos#h"
    for name, value in settings.items():
        assert config_mod.to_toml_dict(cfg)[name] == value, name


def test_option_defaults_are_the_config_models_defaults(options: dict[str, Any]) -> None:
    cfg = rendered_config(eval_module({"enable": True}))
    defaults = Config(hostname="h")
    for option, field in eval_lib("optionFields").items():
        assert getattr(cfg, field) == getattr(defaults, field), option
        if field != "protected_units":  # the option holds additions to the built-ins
            model_default = Config.model_fields[field].default
            option_default = options[option]["default"]
            assert option_default == (
                model_default.value if hasattr(model_default, "value") else model_default
            ), option
    assert cfg.listen_address == defaults.listen_address
    assert cfg.state_dir == defaults.state_dir


def test_option_types_have_the_config_models_bounds(options: dict[str, Any]) -> None:
    assert options["autonomyLevel"]["type"]["values"] == [a.value for a in AutonomyLevel]
    assert options["analysis"]["type"]["values"] == [a.value for a in AnalysisMode]
    for option, field in eval_lib("optionFields").items():
        kind = options[option]["type"]
        if kind["name"] not in ("intBetween", "numberBetween"):
            continue
        meta = Config.model_fields[field].metadata
        ge = next(m.ge for m in meta if isinstance(m, annotated_types.Ge))
        le = next(m.le for m in meta if isinstance(m, annotated_types.Le))
        assert (kind["lo"], kind["hi"]) == (ge, le), option


def test_the_seed_example_still_works(seed: dict[str, Any]) -> None:
    assert seed["failedAssertions"] == []
    assert seed["warnings"] == []
    cfg = rendered_config(seed)
    assert cfg.autonomy_level is AutonomyLevel.AUTO_SAFE
    assert cfg.check_interval == 300
    assert cfg.model == "llama3.1:70b"
    assert cfg.privileged_unit == PRIVILEGED


def test_the_docs_list_every_option(options: dict[str, Any], docs: str) -> None:
    listed = set(re.findall(r"^\| `([\w.]+)` \|", docs, flags=re.M))
    assert listed >= set(options), sorted(set(options) - listed)


def test_the_readme_example_renders_a_valid_config(docs: str, tmp_path: Path) -> None:
    blocks = [b for b in nix_blocks(docs) if "services.macha-autonomous" in b]
    assert blocks, "docs/nixos.md has no ```nix example with services.macha-autonomous"
    for block in blocks:
        example = tmp_path / "example.nix"
        example.write_text(block)
        value = nix_eval_json(str(example))
        settings = value["services"]["macha-autonomous"]
        result = eval_module(settings)
        assert result["failedAssertions"] == []
        rendered_config(result)


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"enable": True, "autonomyLevel": "yolo"}, "autonomyLevel"),
        ({"enable": True, "checkInterval": 0}, "checkInterval"),
        ({"enable": True, "maxActionsPerHour": -1}, "maxActionsPerHour"),
        ({"enable": True, "webhookTokenFile": "token"}, "webhookTokenFile"),
        ({"enable": True, "protectedUnits": ["my unit.service"]}, "protectedUnits"),
        ({"enable": True, "alertmanager": {"receiver": {}}}, "read-only"),
        ({"enable": True, "prometheus": {"rules": "/x"}}, "read-only"),
        ({"enable": True, "openFirewall": "yes"}, "openFirewall"),
        ({"enable": True, "alertmanager": {"humanReceiver": "admin"}}, "humanReceiver"),
        ({"enable": True, "autonomy": "auto-safe"}, "unknown option|does not exist"),
    ],
)
def test_invalid_option_values_are_refused(settings: dict[str, Any], error: str) -> None:
    with pytest.raises(NixError, match=error):
        eval_module(settings)


@pytest.mark.parametrize(
    "settings",
    [
        {"settings": {"listen_address": "0.0.0.0:1"}},
        {"settings": {"state_dir": "/tmp/x"}},
        {"settings": {"privileged_unit": ""}},
        {"settings": {"autonomy_level": "auto-full"}},
        {"webhookTokenFile": "/nix/store/abc-token"},
    ],
)
def test_assertions_guard_what_the_module_owns(settings: dict[str, Any]) -> None:
    assert eval_module({"enable": True, **settings})["failedAssertions"]


def test_disabled_module_defines_nothing() -> None:
    """Whatever else is set, enable = false leaves the system as it is without it."""
    untouched = eval_module({})
    disabled = eval_module(
        {
            "enable": False,
            "openFirewall": True,
            "prometheus": {"enable": True},
            "grafana": {"enable": True},
            "ollama": {"enable": True},
            "model": "qwen2.5:7b",
        }
    )
    for result in (untouched, disabled):  # only the module's own option values differ
        result["config"].get("services", {}).pop("macha-autonomous", None)
    assert disabled["config"] == untouched["config"]
    assert SERVICE not in disabled["config"].get("systemd", {}).get("services", {})
    assert disabled["failedAssertions"] == disabled["warnings"] == []
