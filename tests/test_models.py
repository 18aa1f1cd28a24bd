"""Domain model: unit-name grammar and the closed action union reject bad input early."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from macha_obs import models
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


# ---------------------------------------------------------------- the package's public face

_ROOT = Path(__file__).resolve().parent.parent


def _imports_of_models() -> tuple[set[str], set[str]]:
    """Names the rest of the project imports from `macha_obs.models`, and the files that
    reach past it into one of its modules."""
    names: set[str] = set()
    past: set[str] = set()
    for folder in ("macha_obs", "tests", "bench"):
        for path in (_ROOT / folder).rglob("*.py"):
            if (_ROOT / "macha_obs" / "models") in path.parents:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.module == "macha_obs.models":
                    names |= {alias.name for alias in node.names}
                elif isinstance(node, ast.ImportFrom | ast.Import):
                    modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                    modules += [a.name for a in node.names] if isinstance(node, ast.Import) else []
                    if any(m.startswith("macha_obs.models.") for m in modules):
                        past.add(str(path.relative_to(_ROOT)))
    return names, past


def test_the_models_public_names_are_exactly_what_the_project_imports() -> None:
    imported, reaching_past = _imports_of_models()
    assert sorted(models.__all__) == sorted(imported)
    assert reaching_past == set()  # every import goes through the package's __init__


def _defined_at_top(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_every_public_name_has_one_home_in_a_models_module() -> None:
    """Each name is defined in exactly one module of the package; nothing of another
    room is re-exported here (AutonomyLevel lives in config)."""
    defined = {
        path.stem: _defined_at_top(path)
        for path in (_ROOT / "macha_obs" / "models").glob("*.py")
        if path.stem != "__init__"
    }
    homes = {name: [m for m, names in defined.items() if name in names] for name in models.__all__}
    assert {name: where for name, where in homes.items() if len(where) != 1} == {}
