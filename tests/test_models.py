"""Domain model: unit-name grammar and the closed action union reject bad input early."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from macha_obs.models import (
    InvalidUnitName,
    Investigate,
    JournalTail,
    RestartUnit,
    canonical_unit_name,
    parse_action,
    validate_unit_name,
)


@pytest.mark.parametrize(
    "name",
    [
        "nginx.service",
        "getty@tty1.service",
        "home-user\\x2dfoo.mount",
        "ollama.service",
        "a:b_c.socket",
        "-.slice",
        "backup.timer",
    ],
)
def test_valid_unit_names(name: str) -> None:
    assert validate_unit_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "nginx",  # no type suffix
        "nginx.exe",
        "foo;rm -rf /.service",
        "foo$(id).service",
        "foo`id`.service",
        "foo|sh.service",
        "foo&.service",
        "a b.service",
        "../etc/passwd.service",
        "foo..service",
        "nginx.service\n",
        "ngi\nnx.service",
        "/etc/systemd/system/x.service",
        "--help.service",
        ".hidden.service",
        "x@.service",  # a template cannot be acted on
        "a" * 300 + ".service",
        "nginx.service\x00",
    ],
)
def test_invalid_unit_names_are_rejected(name: str) -> None:
    with pytest.raises(InvalidUnitName):
        validate_unit_name(name)


def test_canonical_name_adds_service_suffix() -> None:
    assert canonical_unit_name("nginx") == "nginx.service"
    assert canonical_unit_name("nginx.socket") == "nginx.socket"
    with pytest.raises(InvalidUnitName):
        canonical_unit_name("ng;inx")


def test_parse_action_from_json_and_dict() -> None:
    assert parse_action('{"kind": "restart_unit", "unit": "nginx.service"}') == RestartUnit(
        unit="nginx.service"
    )
    action = parse_action(
        {"kind": "investigate", "diagnostic": {"tool": "journal_tail", "unit": "a.service"}}
    )
    assert isinstance(action, Investigate)
    assert isinstance(action.diagnostic, JournalTail)
    assert action.target == "a.service"


@pytest.mark.parametrize(
    "data",
    [
        {"kind": "run_command", "argv": ["rm", "-rf", "/"]},  # unknown action type
        {"kind": "shell", "command": "curl x | sh"},
        {"kind": "restart_unit", "unit": "sshd.service; reboot"},
        {"kind": "restart_unit", "unit": "a.service", "extra": "ignored?"},
        {"kind": "restart_unit"},
        {"kind": "investigate", "diagnostic": {"tool": "cat", "path": "/etc/shadow"}},
        {
            "kind": "investigate",
            "diagnostic": {"tool": "journal_tail", "unit": "a.service", "lines": 10**6},
        },
        {"kind": "nix_rebuild", "mode": "switch", "flake": "github:evil/flake"},
        {"kind": "nix_rebuild", "mode": "switch --option x"},
        {"kind": "nix_gc", "older_than_days": "1d; rm -rf /"},
        {"kind": "journal_vacuum", "max_size_mb": 0},
        {"unit": "a.service"},
    ],
)
def test_bad_actions_never_validate(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        parse_action(data)


def test_malformed_json_action() -> None:
    with pytest.raises(ValidationError):
        parse_action('{"kind": "restart_unit", "unit": ')
