"""The NixOS module's Alertmanager side: the webhook's token, and the default stack's
routing (what is for people reaches the receiver the user names, what the sidecar acts on
reaches the sidecar), checked by the real amtool on the rendered configuration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from macha_obs.config import Config
from macha_obs.intake.token import token_path
from tests.harness.nix_support import (
    ALERTMANAGER_ON,
    DOCS,
    HUMAN_RECEIVER,
    PROMETHEUS_ON,
    REPO,
    SERVICE,
    WITH_ALERTMANAGER,
    alertmanager_configuration,
    eval_lib,
    eval_module,
    need,
    need_real_lib,
    nix_blocks,
    nix_eval_json,
    receiver,
    rendered_config,
    rule_blocks,
    rule_label,
    run_tool,
)

SIDECAR = "macha-autonomous"
GENERATED_TOKEN = "/var/lib/macha-autonomous/webhook.token"
CREDENTIAL = "/run/credentials/alertmanager.service/macha-webhook-token"
ALERTING = {"enable": True, **WITH_ALERTMANAGER}


def test_the_token_never_enters_the_config_or_the_store() -> None:
    token = "/run/secrets/macha-token"
    result = eval_module({**ALERTING, "webhookTokenFile": token}, other=ALERTMANAGER_ON)
    services = result["config"]["systemd"]["services"]
    assert services[SERVICE]["serviceConfig"]["LoadCredential"] == [f"webhook-token:{token}"]
    assert services["alertmanager"]["serviceConfig"]["LoadCredential"] == [
        f"macha-webhook-token:{token}"
    ]
    assert token not in json.dumps(result["config"]["environment"]["etc"])
    # the operator's file exists before boot: no ordering on the daemon needed
    assert not services["alertmanager"].get("wants")
    assert not services["alertmanager"].get("after")
    sidecar = receiver(alertmanager_configuration(result), SIDECAR)
    auth = sidecar["webhook_configs"][0]["http_config"]["authorization"]
    assert auth == {"type": "Bearer", "credentials_file": CREDENTIAL}


def test_the_generated_token_path_is_the_daemons() -> None:
    """nixos/lib.nix names the file macha_obs/intake/token.py creates in the state dir."""
    assert eval_lib("names")["generatedToken"] == GENERATED_TOKEN
    assert str(token_path(Config(hostname="h").state_dir)) == GENERATED_TOKEN


def test_without_a_token_file_alertmanager_gets_the_generated_token() -> None:
    """DESIGN.md invariant 13: the default is authenticated. The daemon writes its token
    before READY=1; Alertmanager is ordered after it and gets a copy (LoadCredential=)."""
    result = eval_module(ALERTING, other=ALERTMANAGER_ON)
    assert result["failedAssertions"] == []
    assert result["warnings"] == []
    services = result["config"]["systemd"]["services"]
    added = services["alertmanager"]
    assert added["serviceConfig"]["LoadCredential"] == [f"macha-webhook-token:{GENERATED_TOKEN}"]
    assert added["wants"] == added["after"] == [f"{SERVICE}.service"]
    assert "LoadCredential" not in services[SERVICE]["serviceConfig"]
    cfg = rendered_config(result)
    assert cfg.webhook_token_file is None
    assert cfg.webhook_auth
    sidecar = receiver(alertmanager_configuration(result), SIDECAR)
    auth = sidecar["webhook_configs"][0]["http_config"]["authorization"]
    assert auth["credentials_file"] == CREDENTIAL
    # the read-only receiver, for a configuration of one's own, sends it too
    assert result["values"]["alertmanager"]["receiver"] == sidecar


def test_opting_out_of_webhook_auth_is_loopback_only() -> None:
    off = {**ALERTING, "settings": {"webhook_auth": False}}
    result = eval_module(off, other=ALERTMANAGER_ON)
    assert result["failedAssertions"] == []
    assert rendered_config(result).webhook_auth is False
    assert "alertmanager" not in result["config"]["systemd"]["services"]
    sidecar = receiver(alertmanager_configuration(result), SIDECAR)
    assert "http_config" not in sidecar["webhook_configs"][0]
    wide = eval_module({**off, "listenAddress": "0.0.0.0"}, other=ALERTMANAGER_ON)
    assert any("webhook_auth = false" in m for m in wide["failedAssertions"])


# ------------------------------------------------------------------ a human receiver


def test_alertmanager_without_a_human_receiver_is_refused_with_what_to_add() -> None:
    result = eval_module({"enable": True, "alertmanager": {"enable": True}}, other=ALERTMANAGER_ON)
    (message,) = result["failedAssertions"]
    assert "MachaApprovalsPending" in message
    assert "services.macha-autonomous.alertmanager.humanReceiver = {" in message
    assert "email_configs" in message


def test_the_human_receiver_may_not_take_the_sidecars_name() -> None:
    clash = {"enable": True, "alertmanager": {"enable": True, "humanReceiver": {"name": SIDECAR}}}
    result = eval_module(clash, other=ALERTMANAGER_ON)
    assert any("must not be" in m for m in result["failedAssertions"])


def test_a_users_own_alertmanager_configuration_needs_no_human_receiver() -> None:
    """Who routes Alertmanager themselves routes their people too: only the sidecar's
    receiver and route are required then. (Priorities: the real module system only.)"""
    need_real_lib()
    first = eval_module(ALERTING)["values"]["alertmanager"]
    own = {
        "route": {"receiver": "ops", "routes": [first["route"]]},
        "receivers": [{"name": "ops"}, first["receiver"]],
    }
    other = {"services": {"prometheus": {"alertmanager": {"enable": True, "configuration": own}}}}
    result = eval_module({"enable": True, "alertmanager": {"enable": True}}, other=other)
    assert result["failedAssertions"] == []
    assert alertmanager_configuration(result) == own


def test_a_users_own_alertmanager_configuration_without_the_receiver_is_refused() -> None:
    own = {"route": {"receiver": "ops"}, "receivers": [{"name": "ops"}]}
    other = {"services": {"prometheus": {"alertmanager": {"configuration": own}}}}
    result = eval_module(ALERTING, other=other)
    assert any('no "macha-autonomous" receiver' in m for m in result["failedAssertions"])


# ------------------------------------------------------------------ amtool


def _audiences() -> dict[str, str | None]:
    """alertname → its audience label, as the shipped rule files (the defaults) set it."""
    audiences: dict[str, str | None] = {}
    for path in sorted((REPO / "alert_rules").glob("*.yml")):
        for alertname, block in rule_blocks(path.read_text()).items():
            audiences[alertname] = rule_label(block, "audience")
    return audiences


def _routes(amtool: str, config: Path, alertname: str, **labels: str) -> str:
    pairs = [f"{k}={v}" for k, v in {"alertname": alertname, **labels}.items()]
    done = run_tool(amtool, "config", "routes", "test", f"--config.file={config}", *pairs)
    return done.stdout.strip()


@pytest.mark.stack
def test_the_default_stack_routes_people_to_people_and_faults_to_the_sidecar(
    tmp_path: Path,
) -> None:
    """alertmanager.enable with the required humanReceiver: amtool on the rendered
    configuration sends every audience="human" alert (MachaApprovalsPending, MachaDown, …)
    and another host's alerts to the human, this host's faults to the sidecar."""
    amtool = need("amtool")
    result = eval_module(ALERTING, other=ALERTMANAGER_ON)
    assert result["failedAssertions"] == []
    path = tmp_path / "alertmanager.yml"
    path.write_text(json.dumps(alertmanager_configuration(result)))
    run_tool(amtool, "check-config", str(path))

    human = HUMAN_RECEIVER["name"]
    audiences = _audiences()
    assert audiences["MachaApprovalsPending"] == audiences["MachaDown"] == "human"
    assert audiences["MachaUnitFailed"] is None
    for alertname, audience in audiences.items():
        labels = {"audience": audience} if audience else {}
        want = human if audience == "human" else SIDECAR
        got = _routes(amtool, path, alertname, instance="testhost", **labels)
        assert got == want, (alertname, got)
        other_host = _routes(amtool, path, alertname, instance="elsewhere", **labels)
        assert other_host == human, (alertname, other_host)


@pytest.mark.stack
@pytest.mark.parametrize("token_file", [None, "/run/secrets/t"], ids=["generated", "own-token"])
@pytest.mark.parametrize("own_config", [False, True], ids=["default", "own-configuration"])
def test_alertmanager_wiring_passes_amtool(
    tmp_path: Path, own_config: bool, token_file: str | None
) -> None:
    amtool = need("amtool")
    base: dict[str, Any] = dict(ALERTING)
    if token_file is not None:
        base["webhookTokenFile"] = token_file
    if not own_config:
        result = eval_module(base)
        configuration = alertmanager_configuration(result)
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
             f"--verify.receivers={SIDECAR}", "instance=testhost", "alertname=X")  # fmt: skip


@pytest.mark.stack
def test_the_docs_example_gives_alertmanager_a_valid_configuration(tmp_path: Path) -> None:
    """The example a NixOS user copies: its human receiver is one amtool accepts, and
    approvals waiting reach it."""
    amtool = need("amtool")
    (block,) = [b for b in nix_blocks(DOCS.read_text()) if "humanReceiver" in b]
    example = tmp_path / "example.nix"
    example.write_text(block)
    settings = nix_eval_json(str(example))["services"]["macha-autonomous"]
    result = eval_module(settings, other=PROMETHEUS_ON)
    assert result["failedAssertions"] == []
    path = tmp_path / "alertmanager.yml"
    path.write_text(json.dumps(alertmanager_configuration(result)))
    run_tool(amtool, "check-config", str(path))
    human = settings["alertmanager"]["humanReceiver"]["name"]
    pending = _routes(amtool, path, "MachaApprovalsPending", instance="testhost", audience="human")
    assert pending == human


# ------------------------------------------------------------------ a fleet, by push

FLEET = [
    {"name": "host1", "url": "http://host1.example.org:9847", "tokenFile": "/run/secrets/m1"},
    {"name": "host2", "url": "https://host2.example.org:9847/", "tokenFile": "/run/secrets/m2"},
    {"name": "host3", "url": "http://10.0.0.3:9847"},
]


def _fleet(hosts: list[dict[str, Any]] = FLEET) -> dict[str, Any]:
    alerting = {**WITH_ALERTMANAGER["alertmanager"], "fleetHosts": hosts}
    return {"enable": True, "alertmanager": alerting}


def test_fleet_hosts_get_a_receiver_and_a_route_each() -> None:
    """alertmanager.fleetHosts: one webhook receiver per host, its token as a credential
    of Alertmanager's (never in its world-readable configuration), none for a host
    without a token file."""
    need_real_lib()
    result = eval_module(_fleet(), other=ALERTMANAGER_ON)
    assert result["failedAssertions"] == []
    configuration = alertmanager_configuration(result)
    one = receiver(configuration, "macha-host1")["webhook_configs"][0]
    assert one["url"] == "http://host1.example.org:9847/alerts"
    assert one["send_resolved"] is True
    auth = one["http_config"]["authorization"]
    assert auth == {
        "type": "Bearer",
        "credentials_file": "/run/credentials/alertmanager.service/macha-fleet-host1",
    }
    two = receiver(configuration, "macha-host2")["webhook_configs"][0]
    assert two["url"] == "https://host2.example.org:9847/alerts"
    assert "http_config" not in receiver(configuration, "macha-host3")["webhook_configs"][0]
    credentials = result["config"]["systemd"]["services"]["alertmanager"]["serviceConfig"]
    assert sorted(credentials["LoadCredential"]) == [
        "macha-fleet-host1:/run/secrets/m1",
        "macha-fleet-host2:/run/secrets/m2",
        f"macha-webhook-token:{GENERATED_TOKEN}",
    ]
    assert "/run/secrets/m1" not in json.dumps(configuration)
    # the same, read-only, for a configuration of one's own
    values = result["values"]["alertmanager"]
    assert [r["name"] for r in values["fleetReceivers"]] == ["macha-host1", "macha-host2",
                                                             "macha-host3"]  # fmt: skip
    assert [r["matchers"][0] for r in values["fleetRoutes"]] == [
        'instance="host1"',
        'instance="host2"',
        'instance="host3"',
    ]


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        ([FLEET[0], FLEET[0]], "each host once"),
        ([{"name": "testhost", "url": "http://t:9847"}], "not this host (testhost)"),
        ([{**FLEET[0], "tokenFile": "/nix/store/abc-token"}], "must not be in the Nix store"),
    ],
)
def test_fleet_hosts_refused(hosts: list[dict[str, Any]], message: str) -> None:
    need_real_lib()
    result = eval_module(_fleet(hosts), other=ALERTMANAGER_ON)
    assert any(message in m for m in result["failedAssertions"]), result["failedAssertions"]


@pytest.mark.stack
def test_fleet_routes_pass_amtool(tmp_path: Path) -> None:
    """The rendered configuration through the real amtool: each host's faults reach its own
    sidecar only; the sidecars' health, and hosts not in the list, reach the human."""
    amtool = need("amtool")
    need_real_lib()
    result = eval_module(_fleet(), other=ALERTMANAGER_ON)
    path = tmp_path / "alertmanager.yml"
    path.write_text(json.dumps(alertmanager_configuration(result)))
    run_tool(amtool, "check-config", str(path))
    human = HUMAN_RECEIVER["name"]
    for host in ("host1", "host2", "host3"):
        got = _routes(amtool, path, "MachaUnitFailed", instance=host, unit="nginx.service")
        assert got == f"macha-{host}", (host, got)
        health = _routes(amtool, path, "MachaDown", instance=host, audience="human")
        assert health == human
    assert _routes(amtool, path, "MachaUnitFailed", instance="testhost") == SIDECAR
    assert _routes(amtool, path, "MachaUnitFailed", instance="host4") == human
    assert _routes(amtool, path, "MachaUnitFailed", instance="host10") == human
