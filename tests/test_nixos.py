"""The NixOS module and flake, checked as far as this machine can without nixpkgs.

What runs here: every .nix file parses; the module evaluates through a stub `lib`
(tests/fixtures/nixos/eval.nix), and its option ↔ config-field mapping, rendered TOML,
units (systemd-analyze verify and security), polkit rule (node, then real polkitd) and
Prometheus/Alertmanager wiring (promtool, amtool) are checked against the real tools and
the real config model; the rendered units run the real daemon and `macha-obs privileged`
in a throw-away real systemd; the flake passes `nix flake check --no-build` against a
stand-in nixpkgs. What cannot: the NixOS VM test (needs nixpkgs and KVM), see
docs/nixos.md.
"""

from __future__ import annotations

import fnmatch
import json
import random
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import annotated_types
import pytest

from macha_obs import config as config_mod
from macha_obs.config import BUILTIN_PROTECTED_UNITS, AnalysisMode, AutonomyLevel, Config
from macha_obs.execute.privileged import parse_instance
from macha_obs.webhook_token import token_path
from tests.labsd import LabSystemd, wait_until
from tests.nix_support import (
    BUSCTL,
    FIXTURES,
    PRIVILEGED,
    REPO,
    SERVICE,
    ModuleLab,
    NixError,
    eval_lib,
    eval_module,
    exposure,
    need,
    nix_blocks,
    nix_eval_json,
    nix_instantiate,
    polkit,
    render_unit,
    run_tool,
    systemd_analyze,
    to_toml,
)

DOCS = REPO / "docs" / "nixos.md"

# The seed's users wrote this; it must keep working.
SEED_EXAMPLE = {
    "enable": True,
    "autonomyLevel": "auto-safe",
    "checkInterval": 300,
    "model": "llama3.1:70b",
}

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
}
# listenAddress and port render together to one field.
LISTEN_OPTIONS = {"listenAddress": "listen_address", "port": "listen_address"}
# Fields the module sets itself (the unit, polkit rule and CLI tools depend on them).
MODULE_FIELDS = {"listen_address", "state_dir", "privileged_unit"}
# Fields with no option of their own: set them through `settings`. A field added to
# config.py must appear here or get an option (and a row in docs/nixos.md).
SETTINGS_ONLY = {
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
    "journal_error_burst",
    "flapping_restarts",
}


def snake(option: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", option).lower()


def rendered_config(result: dict[str, Any]) -> Config:
    """The TOML the module writes to /etc/macha-obs/config.toml, loaded by the model."""
    etc = result["config"]["environment"]["etc"]["macha-obs/config.toml"]["source"]
    text = to_toml(etc["toml"])
    return config_mod.validate(tomllib.loads(text), source="rendered config.toml")


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
    (source / "macha_obs").mkdir()
    shutil.copy(REPO / "macha_obs" / "config.py", source / "macha_obs" / "config.py")
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
    assert {"packages", "nixosModules", "devShells", "checks"} <= set(show)
    assert set(show["checks"]["x86_64-linux"]) == {"package", "vm"}

    def attr(path: str) -> Any:
        return json.loads(run("eval", "--json", *flake, f"path:{source}#{path}"))

    # the package really is read from pyproject.toml
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert attr("packages.x86_64-linux.default.pname") == project["name"]
    assert attr("packages.x86_64-linux.default.version") == project["version"]
    names = attr("packages.x86_64-linux.default.dependencyNames")
    wanted = [re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]]
    assert names == [n.replace("_", "-") for n in wanted]
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
        name: LISTEN_OPTIONS.get(name, snake(name))
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
        ({"enable": True, "autonomy": "auto-safe"}, "unknown option"),
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
    assert eval_module({"enable": False})["config"] == {}


# ------------------------------------------------------------------ secrets and wiring


ALERTMANAGER_ON = {"services": {"prometheus": {"alertmanager": {"enable": True}}}}


def test_the_token_never_enters_the_config_or_the_store() -> None:
    token = "/run/secrets/macha-token"
    result = eval_module(
        {"enable": True, "webhookTokenFile": token, "alertmanager": {"enable": True}},
        other=ALERTMANAGER_ON,
    )
    services = result["config"]["systemd"]["services"]
    assert services[SERVICE]["serviceConfig"]["LoadCredential"] == [f"webhook-token:{token}"]
    assert services["alertmanager"]["serviceConfig"]["LoadCredential"] == [
        f"macha-webhook-token:{token}"
    ]
    toml_text = json.dumps(result["config"]["environment"]["etc"])
    assert token not in toml_text
    # the operator's file exists before boot: no ordering on the daemon needed
    assert set(services["alertmanager"]) == {"serviceConfig"}
    receiver = result["config"]["services"]["prometheus"]["alertmanager"]["configuration"]
    auth = receiver["receivers"][0]["webhook_configs"][0]["http_config"]["authorization"]
    assert auth == {
        "type": "Bearer",
        "credentials_file": "/run/credentials/alertmanager.service/macha-webhook-token",
    }


GENERATED_TOKEN = "/var/lib/macha-autonomous/webhook.token"


def test_the_generated_token_path_is_the_daemons() -> None:
    """nixos/lib.nix names the file macha_obs/webhook_token.py creates in the state dir."""
    assert eval_lib("names")["generatedToken"] == GENERATED_TOKEN
    assert str(token_path(Config(hostname="h").state_dir)) == GENERATED_TOKEN


def test_without_a_token_file_alertmanager_gets_the_generated_token() -> None:
    """DESIGN.md invariant 13: the default is authenticated. The daemon writes its token
    before READY=1; Alertmanager is ordered after it and gets a copy (LoadCredential=)."""
    result = eval_module({"enable": True, "alertmanager": {"enable": True}}, other=ALERTMANAGER_ON)
    assert result["failedAssertions"] == []
    assert result["warnings"] == []
    services = result["config"]["systemd"]["services"]
    assert services["alertmanager"] == {
        "serviceConfig": {"LoadCredential": [f"macha-webhook-token:{GENERATED_TOKEN}"]},
        "wants": [f"{SERVICE}.service"],
        "after": [f"{SERVICE}.service"],
    }
    assert "LoadCredential" not in services[SERVICE]["serviceConfig"]
    cfg = rendered_config(result)
    assert cfg.webhook_token_file is None
    assert cfg.webhook_auth
    receiver = result["config"]["services"]["prometheus"]["alertmanager"]["configuration"]
    auth = receiver["receivers"][0]["webhook_configs"][0]["http_config"]["authorization"]
    assert auth["credentials_file"] == "/run/credentials/alertmanager.service/macha-webhook-token"
    # the read-only receiver, for a configuration of one's own, sends it too
    assert result["values"]["alertmanager"]["receiver"] == receiver["receivers"][0]


def test_a_wide_listener_needs_no_token_file() -> None:
    result = eval_module({"enable": True, "listenAddress": "0.0.0.0"})
    assert result["warnings"] == []
    assert result["failedAssertions"] == []
    scrape = result["config"].get("services", {})
    assert scrape == {}  # no wiring unless asked


def test_opting_out_of_webhook_auth_is_loopback_only() -> None:
    off = {"enable": True, "settings": {"webhook_auth": False}, "alertmanager": {"enable": True}}
    result = eval_module(off, other=ALERTMANAGER_ON)
    assert result["failedAssertions"] == []
    assert rendered_config(result).webhook_auth is False
    assert "alertmanager" not in result["config"]["systemd"]["services"]
    receiver = result["config"]["services"]["prometheus"]["alertmanager"]["configuration"]
    assert "http_config" not in receiver["receivers"][0]["webhook_configs"][0]
    wide = eval_module({**off, "listenAddress": "0.0.0.0"}, other=ALERTMANAGER_ON)
    assert any("webhook_auth = false" in m for m in wide["failedAssertions"])


@pytest.mark.parametrize("service", ["prometheus", "alertmanager", "grafana"])
def test_wiring_into_a_service_that_is_off_warns(service: str) -> None:
    result = eval_module({"enable": True, service: {"enable": True}})
    assert any(f"{service} is not enabled" in w for w in result["warnings"]), result["warnings"]
    if service == "alertmanager":  # and gives no credential to a unit that does not exist
        result = eval_module({"enable": True, "webhookTokenFile": "/t", service: {"enable": True}})
        assert "alertmanager" not in result["config"]["systemd"]["services"]


def test_wiring_into_prometheus_grafana_and_ollama() -> None:
    result = eval_module(
        {
            "enable": True,
            "listenAddress": "0.0.0.0",
            "port": 9850,
            "webhookTokenFile": "/run/secrets/t",
            "prometheus": {"enable": True},
            "grafana": {"enable": True},
            "ollama": {"enable": True},
            "model": "qwen2.5:7b",
        }
    )
    services = result["config"]["services"]
    (job,) = services["prometheus"]["scrapeConfigs"]
    assert job["static_configs"] == [
        {"targets": ["127.0.0.1:9850"], "labels": {"instance": "testhost"}}
    ]
    rule_files = [Path(p) for p in services["prometheus"]["ruleFiles"]]
    assert all(p.is_file() for p in rule_files)
    # every shipped rule file, the host's and the sidecar's own
    assert sorted(p.name for p in rule_files) == sorted(
        p.name for p in (REPO / "alert_rules").glob("*.yml")
    )
    (provider,) = services["grafana"]["provision"]["dashboards"]["settings"]["providers"]
    provisioned = {p.name for p in Path(provider["options"]["path"]).glob("*.json")}
    assert provisioned == {"macha-host.json", "macha-sidecar.json"}
    assert services["ollama"] == {
        "enable": True,
        "host": "127.0.0.1",
        "loadModels": ["qwen2.5:7b"],
    }
    assert not [w for w in result["warnings"] if "ollama" in w.lower()]
    moved = eval_module(
        {"enable": True, "ollama": {"enable": True}},
        other={"services": {"ollama": {"port": 11500}}},
    )
    assert any("ollamaUrl" in w for w in moved["warnings"])
    unit = result["config"]["systemd"]["services"][SERVICE]
    assert "ollama.service" in unit["after"]
    assert "ollama.service" in unit["wants"]


@pytest.mark.stack
def test_prometheus_wiring_passes_promtool(tmp_path: Path) -> None:
    promtool = need("promtool")
    result = eval_module({"enable": True, "prometheus": {"enable": True}})
    prom = result["config"]["services"]["prometheus"]
    config = {"scrape_configs": prom["scrapeConfigs"], "rule_files": prom["ruleFiles"]}
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    run_tool(promtool, "check", "config", str(path))


@pytest.mark.stack
@pytest.mark.parametrize("token_file", [None, "/run/secrets/t"], ids=["generated", "own-token"])
@pytest.mark.parametrize("own_config", [False, True], ids=["default", "own-configuration"])
def test_alertmanager_wiring_passes_amtool(
    tmp_path: Path, own_config: bool, token_file: str | None
) -> None:
    amtool = need("amtool")
    base: dict[str, Any] = {"enable": True, "alertmanager": {"enable": True}}
    if token_file is not None:
        base["webhookTokenFile"] = token_file
    if not own_config:
        result = eval_module(base)
        configuration = result["config"]["services"]["prometheus"]["alertmanager"]["configuration"]
    else:
        # a configuration of the user's own, with the read-only receiver and route added
        first = eval_module(base)["values"]["alertmanager"]
        configuration = {
            "route": {"receiver": "ops", "routes": [first["route"]]},
            "receivers": [{"name": "ops"}, first["receiver"]],
        }
        result = eval_module(
            base,
            other={"services": {"prometheus": {"alertmanager": {"configuration": configuration}}}},
        )
    assert result["failedAssertions"] == []
    path = tmp_path / "alertmanager.yml"
    path.write_text(json.dumps(configuration))
    run_tool(amtool, "check-config", str(path))
    run_tool(amtool, "config", "routes", "test", f"--config.file={path}",
             "--verify.receivers=macha-autonomous", "instance=testhost", "alertname=X")  # fmt: skip


def test_a_users_own_alertmanager_configuration_without_the_receiver_is_refused() -> None:
    other = {
        "services": {
            "prometheus": {
                "alertmanager": {
                    "configuration": {"route": {"receiver": "ops"}, "receivers": [{"name": "ops"}]}
                }
            }
        }
    }
    result = eval_module({"enable": True, "alertmanager": {"enable": True}}, other=other)
    assert any('no "macha-autonomous" receiver' in m for m in result["failedAssertions"])


def test_cli_tools_use_the_services_config_and_state(seed: dict[str, Any]) -> None:
    tools = {t["name"]: t["text"] for t in _packages(seed)}
    assert set(tools) == {"macha-obs", "macha-approve", "macha-logs", "macha-check"}
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for name, text in tools.items():
        binaries = re.findall(r"/stub/macha-obs/bin/([\w-]+)", text)
        assert binaries, name
        assert set(binaries) <= set(scripts), f"{name} runs {binaries}, not in pyproject"
        # as root, they drop to the service user (never root-owned files in the state dir)
        assert "--reuid=macha-autonomous --regid=macha-autonomous" in text
        assert "--config" not in text  # /etc/macha-obs/config.toml is the CLI default
    assert Path("/etc/macha-obs/config.toml") == config_mod.DEFAULT_CONFIG_PATH
    etc = seed["config"]["environment"]["etc"]
    assert "macha-obs/config.toml" in etc


def test_the_python_side_provides_what_the_units_run() -> None:
    """The units run `macha-obs … serve`, `macha-obs privileged %i`, `macha-obs check`."""
    from macha_obs import cli

    missing = {"serve", "privileged", "check"} - set(cli.main.commands)
    assert not missing, f"macha-obs lacks the subcommands the module runs: {sorted(missing)}"


def _packages(result: dict[str, Any]) -> list[dict[str, Any]]:
    packages: list[dict[str, Any]] = result["config"]["environment"]["systemPackages"]
    return packages


# ------------------------------------------------------------------ systemd units


@pytest.fixture(scope="module")
def units(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The daemon's unit and an instance of the privileged template, as NixOS writes them."""
    root = tmp_path_factory.mktemp("units")
    exe = root / "pkg" / "bin" / "macha-obs"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    result = eval_module(
        {**SEED_EXAMPLE, "webhookTokenFile": "/run/secrets/t"}, pkg_path=str(root / "pkg")
    )
    services = result["config"]["systemd"]["services"]
    paths = {
        SERVICE: root / f"{SERVICE}.service",
        PRIVILEGED: root / f"{PRIVILEGED}@nix-gc-older-than-14d.service",
    }
    paths[SERVICE].write_text(render_unit(services[SERVICE]))
    paths[PRIVILEGED].write_text(render_unit(services[f"{PRIVILEGED}@"]))
    # the default, no webhookTokenFile: the daemon without LoadCredential=, and what the
    # module adds to Alertmanager's unit (ordering, the generated token's credential)
    # over a stand-in for the unit NixOS renders for it
    default = eval_module(
        {**SEED_EXAMPLE, "alertmanager": {"enable": True}},
        other=ALERTMANAGER_ON,
        pkg_path=str(root / "pkg"),
    )["config"]["systemd"]["services"]
    generated = root / "generated"
    generated.mkdir()
    paths["default"] = generated / f"{SERVICE}.service"
    paths["default"].write_text(render_unit(default[SERVICE]))
    paths["alertmanager"] = generated / "alertmanager.service"
    paths["alertmanager"].write_text(render_unit(alertmanager_unit(default["alertmanager"], exe)))
    return paths


def alertmanager_unit(added: dict[str, Any], exe: Path) -> dict[str, Any]:
    """What the module adds to Alertmanager, over a stand-in for NixOS's own unit."""
    return {
        **added,
        "description": "Alertmanager (a stand-in for the unit NixOS renders)",
        "serviceConfig": {"ExecStart": str(exe), **added["serviceConfig"]},
    }


@pytest.mark.parametrize("unit", [SERVICE, PRIVILEGED, "default", "alertmanager"])
def test_units_pass_systemd_analyze_verify(units: dict[str, Path], unit: str) -> None:
    done = systemd_analyze("verify", "--man=no", str(units[unit]))
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # unknown keys are only warned about


def test_daemon_unit_hardening(units: dict[str, Path], docs: str) -> None:
    text = units[SERVICE].read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=60s",
        "User=macha-autonomous",
        "StateDirectory=macha-autonomous",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=true",
        "NoNewPrivileges=true",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
        "RestrictAddressFamilies=AF_UNIX",
        "MemoryMax=512M",
        "ExecStart="
        + str(units[SERVICE].parent / "pkg/bin/macha-obs")
        + " --config /etc/macha-obs/config.toml serve",
    ):
        assert line in text.splitlines(), line
    assert not re.search(r"^(User=root|AmbientCapabilities=.+)", text, re.M)
    score, verdict = exposure(units[SERVICE])
    assert score <= 2.0, f"{SERVICE}: exposure {score} {verdict}"
    # the README reports the measured figure
    assert f"| `{SERVICE}.service` | {score} {verdict} |" in docs


def test_privileged_unit_is_a_typed_oneshot(units: dict[str, Path], docs: str) -> None:
    text = units[PRIVILEGED].read_text().splitlines()
    assert "Type=oneshot" in text
    exec_start = next(line for line in text if line.startswith("ExecStart="))
    assert exec_start.endswith("/bin/macha-obs privileged %i")
    assert "X-RestartIfChanged=false" in text
    assert 'Environment="NIX_REMOTE=daemon"' in text  # builds and gc happen in nix-daemon
    path = next(line for line in text if line.startswith('Environment="PATH='))
    assert "/stub/nixos-rebuild/bin" in path
    assert not any(line.startswith("User=") for line in text)  # root, deliberately
    score, verdict = exposure(units[PRIVILEGED])
    assert score < 9.0
    assert f"| `{PRIVILEGED}@….service` | {score} {verdict} |" in docs


# ------------------------------------------------------------------ polkit


MANAGE = "org.freedesktop.systemd1.manage-units"


def _rule(protected: list[str] | None = None) -> str:
    result = eval_module({"enable": True, "protectedUnits": protected or []})
    text: str = result["config"]["environment"]["etc"][
        "polkit-1/rules.d/60-macha-autonomous.rules"
    ]["text"]
    return text


def _q(unit: str, verb: str, user: str = SERVICE, action: str = MANAGE) -> dict[str, Any]:
    return {"user": user, "id": action, "details": {"unit": unit, "verb": verb}}


POLKIT_CASES = [
    # the verbs it uses, on units that are not protected
    (_q("nginx.service", "start"), "YES"),
    (_q("nginx.service", "restart"), "YES"),
    (_q("nginx.service", "reset-failed"), "YES"),
    (_q("ollama.service", "restart"), "YES"),
    (_q("fussh.service", "restart"), "YES"),  # a glob, not a substring
    (_q("backup.timer", "start"), "YES"),
    # verbs it never uses
    (_q("nginx.service", "stop"), "NO"),
    (_q("nginx.service", "reload"), "NO"),
    (_q("nginx.service", "try-restart"), "NO"),
    (_q("nginx.service", "kill"), "NO"),
    (_q("nginx.service", "clean"), "NO"),
    (_q("nginx.service", ""), "NO"),
    # protected, built in
    (_q("sshd.service", "restart"), "NO"),
    (_q("sshd@22-10.0.0.1:22-10.0.0.2:5555.service", "restart"), "NO"),
    (_q("systemd-journald.service", "restart"), "NO"),
    (_q("systemd-logind.service", "start"), "NO"),
    (_q("dbus.service", "restart"), "NO"),
    (_q("nix-daemon.service", "restart"), "NO"),
    (_q("NetworkManager-wait-online.service", "start"), "NO"),
    (_q("network-online.target", "start"), "NO"),
    (_q("user@1000.service", "restart"), "NO"),
    (_q("-.mount", "start"), "NO"),
    (_q("macha-autonomous.service", "restart"), "NO"),
    (_q("", "start"), "NO"),
    # protected by the user (postgresql.service, k3s*.service)
    (_q("postgresql.service", "restart"), "NO"),
    (_q("k3s-agent.service", "start"), "NO"),
    (_q("k3.service", "start"), "YES"),
    # the privileged helper: start, with an instance from the grammar only
    (_q(f"{PRIVILEGED}@nix-gc.service", "start"), "YES"),
    (_q(f"{PRIVILEGED}@nix-gc-older-than-14d.service", "start"), "YES"),
    (_q(f"{PRIVILEGED}@journal-vacuum-500M.service", "start"), "YES"),
    (_q(f"{PRIVILEGED}@nixos-rebuild-switch.service", "start"), "YES"),
    (_q(f"{PRIVILEGED}@nixos-rollback.service", "start"), "YES"),
    (_q(f"{PRIVILEGED}@nix-gc.service", "restart"), "NO"),
    (_q(f"{PRIVILEGED}@nix-gc.service", "reset-failed"), "NO"),
    (_q(f"{PRIVILEGED}@nix-gc.socket", "start"), "NO"),
    (_q(f"{PRIVILEGED}@nix-gc-older-than-0d.service", "start"), "NO"),
    (_q(f"{PRIVILEGED}@nixos-rebuild-build-vm.service", "start"), "NO"),
    (_q(f"{PRIVILEGED}@rm\\x20-rf.service", "start"), "NO"),
    (_q(f"{PRIVILEGED}@.service", "start"), "NO"),
    (_q(f"{PRIVILEGED}.service", "start"), "NO"),
    # everything else systemd offers is refused to it
    (_q("nginx.service", "start", action="org.freedesktop.systemd1.manage-unit-files"), "NO"),
    (_q("", "", action="org.freedesktop.systemd1.reload-daemon"), "NO"),
    (_q("", "", action="org.freedesktop.systemd1.set-environment"), "NO"),
    # not its business: other users, other actions
    (_q("sshd.service", "restart", user="alice"), "NOT_HANDLED"),
    (_q("", "", action="org.freedesktop.login1.reboot"), "NOT_HANDLED"),
]


def test_polkit_rule_allows_only_what_the_daemon_does() -> None:
    rule = _rule(["postgresql.service", "k3s*.service"])
    decisions = polkit(rule, [q for q, _ in POLKIT_CASES])["decisions"]
    wrong = [
        (q["details"], q["id"], q["user"], want, got)
        for (q, want), got in zip(POLKIT_CASES, decisions, strict=True)
        if want != got
    ]
    assert not wrong


def test_polkit_rule_protects_exactly_what_the_daemon_protects() -> None:
    """Every unit the config model calls protected is refused, and only those."""
    rule = _rule(["postgresql.service", "k3s*.service"])
    cfg = config_mod.validate({"protected_units": ["postgresql.service", "k3s*.service"]})
    rnd = random.Random(6)
    stems = ["ssh", "sshd", "systemd-journald", "systemd-x", "dbus", "network", "nix-daemon",
             "NetworkManager", "user", "macha-autonomous", "macha-obs", "k3s", "postgresql",
             "nginx", "ollama", "wpa_supplicant", "init", "-", "system"]  # fmt: skip
    tails = ["", "-a", "@1", "@x-y", "-wait-online", "d", "s"]
    kinds = [".service", ".socket", ".target", ".timer", ".path", ".scope", ".slice", ".mount"]
    units = sorted(
        {f"{stem}{tail}{kind}" for stem in stems for tail in tails for kind in kinds}
        | {rnd.choice(stems) + rnd.choice(tails) + rnd.choice(kinds) for _ in range(200)}
    )
    units = [u for u in units if not u.startswith(f"{PRIVILEGED}@")]
    decisions = polkit(rule, [_q(u, "restart") for u in units])["decisions"]
    wrong = [
        u for u, got in zip(units, decisions, strict=True) if (got == "NO") != cfg.is_protected(u)
    ]
    assert not wrong


def test_polkit_globs_match_like_fnmatchcase() -> None:
    """The rule's glob → RegExp agrees with Python's fnmatchcase, edge cases included."""
    rnd = random.Random(20261125)
    pattern_chars = "ab-.@*?[]!\\^&~|z"
    name_chars = "ab-.@[]!\\^&z\n"
    cases = [
        ("*", ""),
        ("[]]", "]"),
        ("[!]]", "a"),
        ("[z-a]", "b"),
        ("[!z-a]", "b"),
        ("[a-]", "-"),
        ("[^a]", "^"),
        ("[", "["),
        ("a[", "a["),
        ("**.service", "x.service"),
        ("network*.target", "network-online.target"),
        ("sshd@*.service", "sshd@.service"),
    ]
    for _ in range(5000):
        pattern = "".join(rnd.choice(pattern_chars) for _ in range(rnd.randint(0, 7)))
        name = "".join(rnd.choice(name_chars) for _ in range(rnd.randint(0, 6)))
        cases.append((pattern, name))
    got = polkit(_rule(), globs=cases)["globs"]
    wrong = [
        (p, n, g) for (p, n), g in zip(cases, got, strict=True) if g != fnmatch.fnmatchcase(n, p)
    ]
    assert not wrong


def test_polkit_instance_grammar_is_the_python_grammar() -> None:
    """The rule accepts exactly the instances `macha-obs privileged` parses."""
    numbers = [str(n) for n in (0, 1, 7, 9, 10, 14, 99, 100, 999, 1000, 3650, 9999, 10000)]
    numbers += ["00", "01", "007", "1234567", "12345678", "-1", "1.5", "", "x"]
    instances = ["nix-gc", "nixos-rollback", "nixos-rebuild-build", "nix-gc-", "NIX-GC"]
    instances += [f"nixos-rebuild-{m}" for m in ("dry-build", "test", "switch", "boot", "")]
    instances += [f"nix-gc-older-than-{n}d" for n in numbers]
    instances += [f"journal-vacuum-{n}M" for n in numbers]
    instances += [f"journal-vacuum-{n}G" for n in ("1", "10")]
    instances += [i + suffix for i in ("nix-gc", "nixos-rollback") for suffix in ("\n", " ", "x")]

    def python_accepts(instance: str) -> bool:
        try:
            parse_instance(instance)
        except ValueError:
            return False
        return True

    decisions = polkit(_rule(), [_q(f"{PRIVILEGED}@{i}.service", "start") for i in instances])
    wrong = [
        i
        for i, got in zip(instances, decisions["decisions"], strict=True)
        if (got == "YES") != python_accepts(i)
    ]
    assert not wrong


# ------------------------------------------------------------------ real systemd and polkit


@pytest.fixture(scope="module")
def lab(systemd_available: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleLab]:
    """A container of its own (real systemd, dbus-daemon, polkitd) with what the module
    installs, rendered with this checkout's venv as the package."""
    need("busctl")
    if not Path("/usr/lib/polkit-1/polkitd").exists():
        need("polkitd")  # fails under CI, skips elsewhere: apt-get install polkitd
    settings = {
        **SEED_EXAMPLE,
        "checkInterval": 2,
        "protectedUnits": ["postgresql.service"],
        "settings": {"llm_enabled": False},
    }
    result = eval_module(settings, pkg_path=sys.prefix)
    systemd = LabSystemd(workdir=tmp_path_factory.mktemp("nixos-lab"))
    systemd.start()
    try:
        lab = ModuleLab.install(systemd, result, apps=("lab-app.service", "postgresql.service"))
        yield lab
    finally:
        leftovers = systemd.stop()
        assert not leftovers, leftovers


REAL_POLKIT_CASES = [
    ("StartUnit", "lab-app.service", "allowed"),
    ("RestartUnit", "lab-app.service", "allowed"),
    ("ResetFailedUnit", "lab-app.service", "allowed"),
    ("StopUnit", "lab-app.service", "denied"),
    ("ReloadOrRestartUnit", "lab-app.service", "denied"),
    ("TryRestartUnit", "lab-app.service", "denied"),
    ("RestartUnit", "postgresql.service", "denied"),  # protectedUnits
    ("StartUnit", f"{SERVICE}.service", "denied"),  # built in: the sidecar itself
    ("RestartUnit", "systemd-journald.service", "denied"),
    ("ResetFailedUnit", "dbus.service", "denied"),
    ("RestartUnit", f"{PRIVILEGED}@nix-gc.service", "denied"),
    ("StartUnit", f"{PRIVILEGED}@journal-vacuum-1M.service", "denied"),
    ("StartUnit", f"{PRIVILEGED}@nixos-rebuild-build-vm.service", "denied"),
]


@pytest.mark.systemd
def test_real_polkit_holds_the_daemons_user_to_its_verbs(lab: ModuleLab) -> None:
    """systemd asks polkitd, polkitd runs the rendered rule: as the daemon's user."""
    wrong = []
    for method, unit, want in REAL_POLKIT_CASES:
        args = (
            (method, "s", unit) if method == "ResetFailedUnit" else (method, "ss", unit, "replace")
        )
        done = lab.as_daemon_user(*args)
        got = "allowed" if done.returncode == 0 else "denied"
        # NO from the rule is "Access denied"; a request the rule did not handle would fall
        # through to polkit's default: "Interactive authentication required"
        if got != want or (got == "denied" and "Access denied" not in done.stderr):
            wrong.append((method, unit, want, done.returncode, done.stderr.strip()))
    # everything else systemd offers is refused outright
    others: list[tuple[str, ...]] = [
        ("Reload",),
        ("EnableUnitFiles", "asbb", "1", "lab-app.service", "false", "true"),
    ]
    for other in others:
        done = lab.as_daemon_user(*other)
        if done.returncode == 0 or "Access denied" not in done.stderr:
            wrong.append((other[0], "", "denied", done.returncode, done.stderr.strip()))
    assert not wrong
    # and root is not this rule's business
    root = lab.systemd.run(*BUSCTL, "RestartUnit", "ss", "postgresql.service", "replace")
    assert root.returncode == 0, root.stderr


@pytest.mark.systemd
def test_privileged_unit_runs_hardened_as_the_daemon_asks(lab: ModuleLab) -> None:
    """The daemon's user starts journal-vacuum-16M; root runs `macha-obs privileged` in
    the rendered sandbox, and it succeeds."""
    unit = f"{PRIVILEGED}@journal-vacuum-16M.service"
    done = lab.as_daemon_user("StartUnit", "ss", unit, "replace")
    assert done.returncode == 0, done.stderr
    state = lab.systemd.wait_for_state(unit, ("inactive", "failed"), timeout=60)
    log = lab.systemd.journal(unit)
    assert state[0] == "inactive", log
    assert lab.show(unit, "Result") == "success", log
    assert "journalctl --vacuum-size=16M" in log


@pytest.mark.systemd
def test_daemon_unit_runs_hardened(lab: ModuleLab) -> None:
    """The rendered daemon unit, with every hardening line, runs the real daemon: it gets
    ready (Type=notify), answers /healthz as its own user, and stops cleanly on SIGTERM."""
    with lab.running_daemon():
        health = lab.systemd.run(
            "/usr/bin/python3", "-c",
            "import urllib.request as u;"
            f"print(u.urlopen('http://127.0.0.1:{lab.port}/healthz', timeout=10).status)",
            check=False,
        )  # fmt: skip
        assert health.stdout.strip() == "200", health.stderr + lab.daemon_log()
        pid = lab.show(f"{SERVICE}.service", "MainPID")
        assert lab.systemd.run("stat", "-c", "%U", f"/proc/{pid}").stdout.strip() == SERVICE
    assert lab.systemd.unit_state(f"{SERVICE}.service")[0] == "inactive", lab.daemon_log()


@pytest.mark.systemd
def test_cli_tools_run_as_the_service_user_on_its_config_and_state(lab: ModuleLab) -> None:
    """Run as root with no flags, `macha-approve` and `macha-obs` drop to the daemon's user
    and read /etc/macha-obs/config.toml and its state directory; nothing root-owned stays."""
    assert json.loads(lab.tool("macha-approve", "list", "--json")) == []
    shown = json.loads(lab.tool("macha-obs", "config", "show", "--json"))
    assert shown["state_dir"] == f"/var/lib/{SERVICE}"
    assert shown["privileged_unit"] == PRIVILEGED
    strangers = lab.systemd.run("find", f"/var/lib/{SERVICE}", "-not", "-user", SERVICE)
    assert strangers.stdout.split() == []


@pytest.mark.systemd
def test_daemon_restarts_a_failed_unit_through_polkit(lab: ModuleLab) -> None:
    """auto-safe, unprivileged, hardened: a killed unit is restarted by the daemon."""
    app = "lab-app.service"
    lab.systemd.run("systemctl", "start", app)
    with lab.running_daemon():
        # the daemon may restart it before anyone sees it failed: a new MainPID says it did
        old = lab.show(app, "MainPID")

        def restarted() -> bool:
            return lab.systemd.unit_state(app)[0] == "active" and lab.show(app, "MainPID") != old

        lab.systemd.run("systemctl", "kill", "--signal=SIGKILL", app)
        assert wait_until(restarted, timeout=120), lab.daemon_log()
        actions = lab.systemd.run("cat", f"/var/lib/{SERVICE}/actions.jsonl", check=False)
        assert "lab-app.service" in actions.stdout, lab.daemon_log()


@pytest.mark.systemd
def test_alertmanager_gets_the_token_the_daemon_generated(lab: ModuleLab) -> None:
    """A first boot with no webhookTokenFile: starting Alertmanager pulls in the daemon
    (Wants=), waits for its READY=1 (After=), by which time the daemon, as its own user,
    has written a 0600 token; systemd copies that file into Alertmanager's credentials."""
    result = eval_module({**SEED_EXAMPLE, "alertmanager": {"enable": True}}, other=ALERTMANAGER_ON)
    units = result["config"]["systemd"]["services"]
    # a stand-in that keeps what Alertmanager would read as credentials_file
    saw = "/run/alertmanager-saw-token"
    shell = f'cat "$$CREDENTIALS_DIRECTORY/macha-webhook-token" > {saw}'  # $$: for sh
    stand_in = alertmanager_unit(units["alertmanager"], Path("/bin/sh"))
    stand_in["serviceConfig"] = {
        **stand_in["serviceConfig"],
        "Type": "oneshot",
        "RemainAfterExit": True,
        "ExecStart": f"/bin/sh -c '{shell}'",
    }
    lab.systemd.write_unit("alertmanager.service", render_unit(stand_in))
    # systemd hands credentials over by moving a mount out of the service's namespace: a
    # booted host's / is shared (systemd makes it so outside containers), the lab's is not
    lab.systemd.run("mount", "--make-rshared", "/")
    token = f"/var/lib/{SERVICE}/webhook.token"
    lab.systemd.run("rm", "-f", token, saw)
    daemon = f"{SERVICE}.service"
    try:
        done = lab.systemd.run(
            "systemctl", "start", "alertmanager.service", check=False, timeout=120
        )
        assert done.returncode == 0, done.stderr + lab.systemd.journal("alertmanager.service")
        assert lab.systemd.unit_state(daemon)[0] == "active", lab.daemon_log()
        owner_mode = lab.systemd.run("stat", "-c", "%U %a", token).stdout.split()
        assert owner_mode == [SERVICE, "600"]
        generated = lab.systemd.run("cat", token).stdout
        assert len(generated.strip()) >= 43
        assert lab.systemd.run("cat", saw).stdout == generated
        # the daemon says where its token is, never what it is
        assert token in lab.daemon_log()
        assert generated.strip() not in lab.daemon_log()
    finally:
        lab.systemd.run("systemctl", "stop", "alertmanager.service", daemon, check=False)
        lab.systemd.wait_for_state(daemon, ("inactive", "failed"), timeout=60)
        lab.systemd.run("rm", "-f", saw)
