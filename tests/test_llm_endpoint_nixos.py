"""The NixOS module's share of the endpoint check: with `ollama.enable`, prompts go only
to a socket Ollama's service user owns (settings.llm_endpoint_user, a default the user can
override). Evaluated through the stub lib of tests/fixtures/nixos/eval.nix, which resolves
priorities away: the override itself is the real module system's (the flake's VM test)."""

from __future__ import annotations

import re
from typing import Any

from macha_obs.config import Config
from tests.harness.nix_support import REPO, eval_module


def _defined(result: dict[str, Any]) -> dict[str, Any]:
    """What the module itself defines under services.macha-autonomous.settings."""
    mine = result["config"].get("services", {}).get("macha-autonomous", {})
    settings: dict[str, Any] = mine.get("settings", {})
    return settings


def test_ollama_enable_expects_ollamas_user() -> None:
    result = eval_module({"enable": True, "ollama": {"enable": True}})
    assert result["failedAssertions"] == []
    assert _defined(result) == {"llm_endpoint_user": "ollama"}  # DynamicUser=ollama
    static = eval_module(
        {"enable": True, "ollama": {"enable": True}},
        other={"services": {"ollama": {"user": "llm"}}},
    )
    assert _defined(static) == {"llm_endpoint_user": "llm"}
    Config(hostname="h", llm_endpoint_user="ollama")  # a value the config model takes


def test_without_ollama_enable_the_check_stays_off() -> None:
    assert "llm_endpoint_user" not in _defined(eval_module({"enable": True}))
    assert Config(hostname="h").llm_endpoint_user == ""


def test_the_default_is_one_the_user_can_override() -> None:
    module = (REPO / "nixos" / "module.nix").read_text()
    assert re.search(r"settings\.llm_endpoint_user = mkDefault\b", module)
