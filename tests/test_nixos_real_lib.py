"""The NixOS module under the real module system (nixpkgs' lib.evalModules from
../shared/nixpkgs-lib, beside tests/fixtures/nixos/nixos-options.nix, which declares the
NixOS options the module touches with NixOS' own types): what a user's configuration does
to it — priorities (mkDefault, mkForce), merging with the user's own definitions, type
errors, the default service path, the overlay, and assertions that fail the build.

The stand-in evaluator cannot show any of this: without ../shared these tests skip
(outside CI) and fail (in CI), like every real component."""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness.nix_support import (
    ALERTMANAGER_ON,
    PRIVILEGED,
    PROMETHEUS_ON,
    SERVICE,
    WITH_ALERTMANAGER,
    NixError,
    alertmanager_configuration,
    eval_module,
    need_real_lib,
)

ENABLED = {"enable": True}
OLLAMA = {"enable": True, "ollama": {"enable": True}, "model": "qwen2.5:7b"}


@pytest.fixture(autouse=True)
def real_lib() -> None:
    need_real_lib()


def user(body: str) -> str:
    """A module of the user's own, as they would write it in configuration.nix."""
    return f"{{ lib, ... }}: {{ {body} }}"


def daemon(result: dict[str, Any]) -> dict[str, Any]:
    unit: dict[str, Any] = result["config"]["systemd"]["services"][SERVICE]
    return unit


def test_the_real_evaluator_is_in_use() -> None:
    assert eval_module(ENABLED)["evaluator"] == "nixpkgs lib"


# ------------------------------------------------------------------ priorities


def test_a_users_ollama_settings_win_without_a_conflict() -> None:
    """The module's settings on services.ollama are defaults: a user's host, or their own
    models, are no conflicting definitions."""
    result = eval_module(
        OLLAMA,
        user_module=user('services.ollama.host = "0.0.0.0"; services.ollama.loadModels = [ "x" ];'),
    )
    ollama = result["config"]["services"]["ollama"]
    assert ollama["host"] == "0.0.0.0"
    assert sorted(ollama["loadModels"]) == ["qwen2.5:7b", "x"]
    assert ollama["enable"] is True
    off = eval_module(OLLAMA, user_module=user("services.ollama.enable = false;"))
    assert off["config"]["services"]["ollama"]["enable"] is False


def test_a_users_own_grafana_and_alertmanager_choices_win() -> None:
    own_targets = '[ { static_configs = [ { targets = [ "am.example.org:9093" ]; } ]; } ]'
    wired = {"grafana": {"enable": True}, "prometheus": {"enable": True}, **WITH_ALERTMANAGER}
    result = eval_module(
        {"enable": True, **wired},
        other=PROMETHEUS_ON,
        user_module=user(
            "services.grafana.provision.enable = false; "
            f"services.prometheus.alertmanagers = {own_targets};"
        ),
    )
    services = result["config"]["services"]
    assert services["grafana"]["provision"]["enable"] is False
    assert services["prometheus"]["alertmanagers"] == [
        {"static_configs": [{"targets": ["am.example.org:9093"]}]}
    ]


def test_mkforce_overrides_what_the_module_sets() -> None:
    result = eval_module(
        ENABLED,
        user_module=user(
            f'systemd.services.{SERVICE}.serviceConfig.MemoryMax = lib.mkForce "1G"; '
            f"systemd.services.{SERVICE}.wantedBy = lib.mkForce [ ];"
        ),
    )
    assert daemon(result)["serviceConfig"]["MemoryMax"] == "1G"
    assert daemon(result)["wantedBy"] == []
    # the rest of the hardening stays
    assert daemon(result)["serviceConfig"]["ProtectSystem"] == "strict"


def test_a_scalar_the_module_sets_cannot_be_changed_silently() -> None:
    """Two different values for one systemd setting are a conflict, as on NixOS: running
    the daemon as root takes an explicit mkForce."""
    with pytest.raises(NixError, match=r"serviceConfig\.User' has conflicting definition values"):
        eval_module(
            ENABLED, user_module=user(f'systemd.services.{SERVICE}.serviceConfig.User = "root";')
        )


# ------------------------------------------------------------------ merging


def test_a_users_additions_to_the_daemons_unit_merge() -> None:
    result = eval_module(
        ENABLED,
        user_module=user(
            f"systemd.services.{SERVICE} = {{ "
            'serviceConfig.Environment = [ "HTTPS_PROXY=http://proxy.example.org:3128" ]; '
            'serviceConfig.SupplementaryGroups = [ "adm" ]; '
            'serviceConfig.ReadOnlyPaths = [ "/srv/backup" ]; '
            'after = [ "postgresql.service" ]; }; '
            "environment.systemPackages = [ ];"
        ),
    )
    config = daemon(result)["serviceConfig"]
    assert config["Environment"] == ["HTTPS_PROXY=http://proxy.example.org:3128"]
    assert sorted(config["SupplementaryGroups"]) == ["adm", "systemd-journal"]
    assert config["ReadOnlyPaths"] == ["/srv/backup"]
    assert set(daemon(result)["after"]) == {
        "network-online.target",
        "dbus.service",
        "postgresql.service",
    }
    assert config["User"] == SERVICE


def test_every_service_gets_nixos_default_path() -> None:
    """NixOS puts coreutils, findutils, gnugrep, gnused and systemd on every service's
    PATH (after the service's own `path`): the daemon gets that after nix (whose
    nix-instantiate checks a config_change), the privileged unit after what
    nixos-rebuild needs."""
    result = eval_module(ENABLED)
    default = ["coreutils", "findutils", "gnugrep", "gnused", "systemd"]
    assert [p["name"] for p in daemon(result)["path"]] == ["nix", *default]
    path = daemon(result)["environment"]["PATH"].split(":")
    assert path[:6] == [f"/stub/{name}/bin" for name in ["nix", *default]]
    privileged = result["config"]["systemd"]["services"][f"{PRIVILEGED}@"]
    names = [p["name"] for p in privileged["path"]]
    assert names[-5:] == default
    assert "nixos-rebuild" in names[:-5]
    assert "/stub/nixos-rebuild/bin" in privileged["environment"]["PATH"].split(":")


def test_a_users_firewall_ports_and_the_modules_merge() -> None:
    result = eval_module(
        {"enable": True, "listenAddress": "0.0.0.0", "openFirewall": True},
        user_module=user("networking.firewall.allowedTCPPorts = [ 22 ];"),
    )
    assert sorted(result["config"]["networking"]["firewall"]["allowedTCPPorts"]) == [22, 9847]


def test_a_users_alertmanager_configuration_replaces_the_default_whole() -> None:
    """types.attrs merges shallowly: with mkForce (or any definition of one's own), the
    module's default configuration is gone, and the assertion asks for the receiver."""
    own = '{ route.receiver = "ops"; receivers = [ { name = "ops"; } ]; }'
    result = eval_module(
        {"enable": True, **WITH_ALERTMANAGER},
        other=ALERTMANAGER_ON,
        user_module=user(f"services.prometheus.alertmanager.configuration = lib.mkForce {own};"),
    )
    assert alertmanager_configuration(result) == {
        "route": {"receiver": "ops"},
        "receivers": [{"name": "ops"}],
    }
    assert any('no "macha-autonomous" receiver' in m for m in result["failedAssertions"])


# ------------------------------------------------------------------ types and assertions


UNIT = f"systemd.services.{SERVICE}"
TYPE_ERRORS = [
    ('services.macha-autonomous.port = "9847";', r"port.*is not of type `16 bit unsigned"),
    (f'{UNIT}.wantedBy = "multi-user.target";', r"wantedBy.*is not of type `list of"),
    (f'{UNIT}.serviceConfig.Type = "forever";', r"serviceConfig.*is not of type"),
    ("services.macha-autonomous.alertmanager.humanReceiver = [ ];", r"humanReceiver.*not of type"),
    ("services.ollama.port = 70000;", r"services\.ollama\.port.*is not of type"),
]


@pytest.mark.parametrize(("body", "error"), TYPE_ERRORS)
def test_type_errors_are_reported_by_the_real_types(body: str, error: str) -> None:
    with pytest.raises(NixError, match=f"(?s){error}"):
        eval_module(ENABLED, user_module=user(body))


def test_failed_assertions_fail_the_build_with_their_messages() -> None:
    """As nixos/modules/system/activation/top-level.nix does: "Failed assertions:"."""
    settings = {"enable": True, "alertmanager": {"enable": True}}
    with pytest.raises(NixError, match=r"(?s)Failed assertions:\s+- .*humanReceiver = \{"):
        eval_module(settings, other=ALERTMANAGER_ON, fatal_assertions=True)
    fine = eval_module(
        {**settings, **WITH_ALERTMANAGER}, other=ALERTMANAGER_ON, fatal_assertions=True
    )
    assert fine["toplevel"] == "toplevel"


# ------------------------------------------------------------------ the package


def test_the_package_defaults_to_the_overlays_and_falls_back_to_callpackage() -> None:
    plain = eval_module(ENABLED)["values"]["package"]
    assert plain["calledWith"].endswith("/nixos/package.nix")
    assert "viaOverlay" not in plain
    overlaid = eval_module(ENABLED, with_overlay=True)["values"]["package"]
    assert overlaid["viaOverlay"] is True
    assert overlaid["calledWith"].endswith("/nixos/package.nix")
    # a package of the user's choosing is what the units run
    own = eval_module(
        ENABLED,
        user_module=user(
            'services.macha-autonomous.package = { type = "derivation"; name = "mine"; '
            'outPath = "/stub/mine"; };'
        ),
    )
    assert daemon(own)["serviceConfig"]["ExecStart"].startswith("/stub/mine/bin/macha-obs ")
