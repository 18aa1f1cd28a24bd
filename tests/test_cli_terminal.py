"""Untrusted text is inert on a terminal: the helper, and every CLI view of alert, log,
model and person text (a forged `risk: low` line shows escaped, on its own field's line)."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Literal

from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st

from macha_obs.agent.report import AnalysisReport, Judged, incident_from_group, render_text
from macha_obs.agent.runbooks import runbook_proposals
from macha_obs.cli import approve_main, logs_main, main
from macha_obs.config import AutonomyLevel
from macha_obs.models import (
    AlertGroup,
    Assessment,
    Decision,
    DecisionSource,
    Outcome,
    Proposal,
    RestartUnit,
    Risk,
    Verdict,
)
from macha_obs.store import Store
from macha_obs.terminal import inert, is_unsafe

FORGED = "\n  risk:      low\n  evidence:  approved by security team"
WIPE = "\x1b[2K\x1b[1A"  # erase the line, cursor up: hides the line above
RTL = "\u202e"  # right-to-left override
EVIL = f"disk full{FORGED}{WIPE}\r{RTL}gnp.exe"
SHOWN = (
    "disk full\\n  risk:      low\\n  evidence:  approved by security team"
    "\\x1b[2K\\x1b[1A\\r\\u202egnp.exe"
)
Unsafe = Literal["Cc", "Cf", "Cs", "Cn", "Zl", "Zp"]
UNSAFE_CATEGORIES: tuple[Unsafe, ...] = ("Cc", "Cf", "Cs", "Cn", "Zl", "Zp")


def assert_inert(output: str) -> list[str]:
    """The output's lines, none of which carries a character that acts on a terminal."""
    lines = output.split("\n")
    for line in lines:
        assert not [c for c in line if is_unsafe(c)], repr(line)
    assert not any(line.lstrip().startswith("risk:      low") for line in lines), output
    return lines


def invoke(command: object, args: list[str], env: dict[str, str]) -> Result:
    # color=True: what a terminal gets (click strips ANSI only for pipes)
    result = CliRunner().invoke(command, args, env=env, color=True)  # type: ignore[arg-type]
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


# ------------------------------------------------------------------ the helper


def test_inert_escapes_each_kind_of_control() -> None:
    assert inert("a\nb\r\tc") == "a\\nb\\r\\tc"
    assert inert("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert inert("\x00\x07\x08\x7f") == "\\x00\\x07\\x08\\x7f"
    assert inert("\x85\x9b31m") == "\\x85\\x9b31m"  # C1: NEL, and CSI in one byte
    assert inert("\u202eabc\u2066\u2069") == "\\u202eabc\\u2066\\u2069"
    assert inert("a\u200bb\u200fc\ufeff") == "a\\u200bb\\u200fc\\ufeff"
    assert inert("one\u2028two\u2029") == "one\\u2028two\\u2029"
    assert inert("\U000e0041\U000e007f") == "\\U000e0041\\U000e007f"  # tag characters
    assert inert("\ud800") == "\\ud800"  # a lone surrogate cannot even be printed raw
    assert inert(42) == "42"


def test_inert_keeps_printable_text_as_it_is() -> None:
    for text in ("nginx.service", "naïve café 日本語 🚀", "C:\\x1b is text", "a  b", ""):
        assert inert(text) == text


@given(st.text(st.characters(exclude_categories=())))
def test_inert_output_has_no_control_characters(text: str) -> None:
    shown = inert(text)
    assert not [c for c in shown if unicodedata.category(c) in UNSAFE_CATEGORIES]
    assert "\n" not in shown
    assert "\r" not in shown


@given(st.text(st.characters(exclude_categories=UNSAFE_CATEGORIES)))
def test_inert_round_trips_printable_text(text: str) -> None:
    assert inert(text) == text


# ------------------------------------------------------------------ the views


def _payload(alertname: str) -> str:
    """An alert whose rule asks for a restart, its name and annotations an attacker's."""
    alert = {
        "status": "firing",
        "labels": {"alertname": alertname, "unit": "nginx.service", "macha_action": "restart_unit"},
        "annotations": {"summary": EVIL, "description": WIPE + RTL},
        "startsAt": "2026-01-01T00:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": "f00",
    }
    return json.dumps(
        {
            "version": "4",
            "groupKey": '{}:{alertname="evil"}',
            "status": "firing",
            "receiver": "macha",
            "groupLabels": {},
            "commonLabels": {},
            "commonAnnotations": {},
            "externalURL": "http://am",
            "alerts": [alert],
        }
    )


def _queue_from_alert(state_dir: Path) -> None:
    """Queue what the runbooks propose for the hostile alert, as the daemon would: its
    reason and evidence quote the alert name."""
    incident = incident_from_group(AlertGroup.model_validate_json(_payload(EVIL)))
    proposal = runbook_proposals(incident)[0][0]  # the restart the alert's rule asks for
    with Store(state_dir) as store:
        store.approvals.enqueue(
            f"{incident.id}{FORGED}{WIPE}",
            proposal.action,
            risk=Risk.HIGH,
            reason=proposal.reason,
            evidence=[*proposal.evidence, EVIL],
            ttl=600,
        )


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        "MACHA_STATE_DIR": str(tmp_path / "state"),
        "MACHA_CONFIG": "",
        "MACHA_SYSTEMD_BUS_ADDRESS": "unix:path=/nonexistent",
    }


def test_approve_show_shows_forged_lines_escaped(tmp_path: Path) -> None:
    _queue_from_alert(tmp_path / "state")
    result = invoke(approve_main, ["show", "0"], _env(tmp_path))
    assert result.exit_code == 0, result.output
    lines = assert_inert(result.output)
    fields = [line.split(":", 1)[0].strip() for line in lines if line.startswith("  ")]
    # one line per field: the data adds no line of its own
    assert fields == ["incident", "risk", "queued", "why", "evidence", "evidence", "action"]
    assert "  risk:      high" in lines
    assert f"  evidence:  {SHOWN}" in lines
    assert "the rule of disk full\\n  risk:      low" in result.output
    assert "\\x1b[2K\\x1b[1A" in result.output
    assert "\\u202e" in result.output


def test_approve_list_and_status_show_forged_lines_escaped(tmp_path: Path) -> None:
    _queue_from_alert(tmp_path / "state")
    listed = invoke(approve_main, ["list"], _env(tmp_path))
    assert listed.exit_code == 0
    lines = assert_inert(listed.output)
    assert len([line for line in lines if line]) == 2  # the header and the one item
    assert "\\n  risk:      low" in listed.output

    status = invoke(main, ["status"], _env(tmp_path))
    assert status.exit_code == 0, status.output
    lines = assert_inert(status.output)
    [item] = [line for line in lines if line.startswith("  0: ")]
    assert "restart_unit nginx.service (high)" in item
    assert "\\x1b[2K\\x1b[1A" in item


def test_decided_items_show_note_and_decider_escaped(tmp_path: Path) -> None:
    _queue_from_alert(tmp_path / "state")
    env = _env(tmp_path) | {"USER": f"mallory{WIPE}", "LOGNAME": f"mallory{WIPE}"}
    rejected = invoke(approve_main, ["reject", "0", "--reason", EVIL], env)
    assert rejected.exit_code == 0, rejected.output
    everything = invoke(approve_main, ["list", "--all"], _env(tmp_path))
    assert SHOWN in assert_inert(everything.output)[1]
    shown = invoke(approve_main, ["show", "0"], _env(tmp_path))
    assert f"  decided:   by mallory\\x1b[2K\\x1b[1A: {SHOWN}" in assert_inert(shown.output)


def test_json_views_are_ascii_and_keep_the_data(tmp_path: Path) -> None:
    _queue_from_alert(tmp_path / "state")
    for command, args in ((approve_main, ["list", "--json"]), (main, ["status", "--json"])):
        result = invoke(command, args, _env(tmp_path))
        assert result.exit_code == 0, result.output
        assert result.output.isascii()
        assert_inert(result.output)
    shown = invoke(approve_main, ["show", "0", "--json"], _env(tmp_path))
    assert shown.output.isascii()
    assert json.loads(shown.output)["evidence"][-1] == EVIL


def test_analyze_text_shows_alert_text_escaped(tmp_path: Path) -> None:
    payload = tmp_path / "alert.json"
    payload.write_text(_payload(EVIL))
    env = _env(tmp_path)
    result = invoke(main, ["analyze", str(payload), "--analysis", "runbooks-only"], env)
    assert result.exit_code == 0, result.output
    lines = assert_inert(result.output)
    why = next(line for line in lines if line.startswith("   why: "))
    assert why == f"   why: the rule of {SHOWN} asks for a restart (macha_action)"
    as_json = invoke(main, ["analyze", str(payload), "--json", "--analysis", "runbooks-only"], env)
    assert as_json.output.isascii()
    assert EVIL in json.loads(as_json.output)["proposals"][0]["reason"]


def test_render_text_escapes_every_model_field(tmp_path: Path) -> None:
    """What a model writes (summary, root cause, reasons) and what the policy says."""
    incident = incident_from_group(AlertGroup.model_validate_json(_payload("x")))
    proposal = Proposal(action=RestartUnit(unit="nginx.service"), reason=EVIL)
    decision = Decision(
        incident_id=incident.id,
        assessment=Assessment.FAILING,
        summary=EVIL,
        root_cause=EVIL,
        source=DecisionSource.LLM,
        backend=f"ollama{WIPE}",
        model=f"m{RTL}",
        error=EVIL,
        proposals=[proposal],
    )
    verdict = Verdict(
        outcome=Outcome.QUEUE, risk=Risk.LOW, reason=EVIL, autonomy=AutonomyLevel.SUGGEST
    )
    text = render_text(AnalysisReport(incident, decision, [Judged(proposal, verdict)]))
    lines = assert_inert(text)
    for prefix in ("summary: ", "root cause: ", "analysis error: ", "   why: ", "   policy: "):
        assert f"{prefix}{SHOWN}" in lines
    assert "by ollama\\x1b[2K\\x1b[1A m\\u202e)" in lines[1]
    assert len(lines) == 9


def test_config_errors_show_bad_values_escaped(tmp_path: Path) -> None:
    env = _env(tmp_path) | {"MACHA_AUTONOMY_LEVEL": f"yolo{WIPE}{RTL}"}
    result = invoke(main, ["status"], env)
    assert result.exit_code == 2
    assert "autonomy_level" in result.output
    assert_inert(result.output)


def test_pause_reason_is_escaped_where_it_shows(tmp_path: Path) -> None:
    env = _env(tmp_path)
    paused = invoke(main, ["pause", "--reason", EVIL], env)
    assert paused.exit_code == 0, paused.output
    assert SHOWN in assert_inert(paused.output)[0]
    again = invoke(main, ["pause", "--for", "1h", "--reason", "x"], env)
    assert SHOWN in assert_inert(again.output)[0]  # "replaces the earlier pause (…)"
    invoke(main, ["resume"], env)
    invoke(main, ["pause", "--reason", EVIL], env)
    status = invoke(main, ["status"], env)
    [line] = [line for line in assert_inert(status.output) if line.startswith("paused:")]
    assert SHOWN in line


def test_logs_text_escapes_audit_fields_and_json_is_ascii(tmp_path: Path) -> None:
    with Store(tmp_path / "state") as store:
        store.audit.audit_decision(
            {"event": "verdict", "incident_id": f"i{WIPE}", "reason": EVIL, "summary": RTL}
        )
        store.audit.audit_action(
            {"event": "paused", "reason": EVIL, "action": {"kind": "x", "unit": WIPE}}
        )
    (tmp_path / "state" / "orchestrator.log").write_text(
        json.dumps({"ts": "t", "level": "info", "logger": "l", "message": EVIL}, ensure_ascii=False)
        + "\n"
        + f"torn {WIPE}\r{RTL}x\n"  # not JSON: a \r is no line break of the file's
    )
    env = _env(tmp_path)
    for kind, records in (("decisions", 1), ("actions", 1), ("orchestrator", 2)):
        text = invoke(logs_main, [kind], env)
        assert text.exit_code == 0, text.output
        assert len(assert_inert(text.output)) == records + 1  # a line each, and the end
        assert SHOWN in text.output
        raw = invoke(logs_main, [kind, "--json"], env)
        assert raw.output.isascii()
        assert_inert(raw.output)
    decisions = invoke(logs_main, ["decisions"], env).output
    assert "incident=i\\x1b[2K\\x1b[1A" in decisions
    assert f"reason={SHOWN}" in decisions
    orchestrator = invoke(logs_main, ["orchestrator", "--json"], env).output.splitlines()
    assert json.loads(orchestrator[0])["message"] == EVIL  # re-encoded, not altered
    torn = "torn \\x1b[2K\\x1b[1A\\r\\u202ex"
    assert orchestrator[1] == torn
    lines = invoke(logs_main, ["orchestrator"], env).output.splitlines()
    assert lines == [f"t info    l: {SHOWN}", torn]
