"""The entry points as a person uses them: messages, exit codes, and --json output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from macha_obs.cli import approve_main, logs_main, main
from macha_obs.models import JournalVacuum, Risk
from macha_obs.store import Store


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"MACHA_STATE_DIR": str(tmp_path / "state"), "MACHA_CONFIG": ""}


def test_config_validate_bad_file_exits_2_naming_the_field(tmp_path: Path, env) -> None:
    bad = tmp_path / "c.toml"
    bad.write_text('autonomy_level = "auto-yolo"\n')
    result = CliRunner().invoke(main, ["config", "validate", str(bad)], env=env)
    assert result.exit_code == 2
    assert "autonomy_level" in result.output
    assert "auto-yolo" in result.output


def test_config_validate_corrupt_toml_exits_2(tmp_path: Path, env) -> None:
    bad = tmp_path / "c.toml"
    bad.write_bytes(b"\xff\xfe[[[")
    result = CliRunner().invoke(main, ["--config", str(bad), "config", "show"], env=env)
    assert result.exit_code == 2
    assert "not valid TOML" in result.output


def test_bad_environment_value_exits_2(env) -> None:
    result = CliRunner().invoke(
        main, ["config", "show"], env={**env, "MACHA_CHECK_INTERVAL": "soon"}
    )
    assert result.exit_code == 2
    assert "check_interval" in result.output


def test_config_show_reflects_flags(env) -> None:
    result = CliRunner().invoke(
        main, ["--autonomy-level", "observe", "config", "show", "--json"], env=env
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["autonomy_level"] == "observe"


def test_approve_list_table_and_json(tmp_path: Path, env) -> None:
    with Store(tmp_path / "state") as store:
        store.approvals.enqueue(
            "inc-7", JournalVacuum(), risk=Risk.LOW, reason="disk full", ttl=600
        )
    table = CliRunner().invoke(approve_main, ["list"], env=env)
    assert table.exit_code == 0
    assert "journal_vacuum" in table.output
    assert "inc-7" in table.output
    listed = CliRunner().invoke(approve_main, ["list", "--json"], env=env)
    [item] = json.loads(listed.output)
    assert item["id"] == 0
    assert item["reason"] == "disk full"


def test_approve_reject_and_unknown_id(tmp_path: Path, env) -> None:
    with Store(tmp_path / "state") as store:
        store.approvals.enqueue("inc", JournalVacuum(), risk=Risk.LOW, reason="r", ttl=600)
    rejected = CliRunner().invoke(approve_main, ["reject", "0", "--reason", "not now"], env=env)
    assert rejected.exit_code == 0
    again = CliRunner().invoke(approve_main, ["approve", "0"], env=env)
    assert again.exit_code == 1
    assert "rejected, not pending" in again.output
    missing = CliRunner().invoke(approve_main, ["show", "42"], env=env)
    assert missing.exit_code == 1
    assert "no approval with id 42" in missing.output


def test_privileged_refuses_anything_but_the_grammar(env) -> None:
    result = CliRunner().invoke(main, ["privileged", "nix-gc; reboot"], env=env)
    assert result.exit_code == 2
    assert "not a privileged action instance" in result.output


def test_logs_render_audit_lines(tmp_path: Path, env) -> None:
    with Store(tmp_path / "state") as store:
        store.audit.audit_decision(
            {
                "event": "verdict",
                "incident_id": "inc-1",
                "outcome": "queue",
                "label": "restart_unit a.service",
                "reason": "suggest",
            }
        )
    human = CliRunner().invoke(logs_main, ["decisions"], env=env)
    assert human.exit_code == 0
    assert "verdict" in human.output
    assert "incident=inc-1" in human.output
    assert "outcome=queue" in human.output
    raw = CliRunner().invoke(logs_main, ["decisions", "--json"], env=env)
    assert json.loads(raw.output)["outcome"] == "queue"
    # a log not written yet is an empty log, not an error
    missing = CliRunner().invoke(logs_main, ["actions"], env=env)
    assert missing.exit_code == 0
    assert missing.stdout == ""
    assert "nothing logged yet" in missing.stderr
