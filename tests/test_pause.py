"""A human's pause: the book on a real store, the duration parser, and the two commands."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from macha_obs.cli import main
from macha_obs.cli.common import who
from macha_obs.cli.pause import MAX_PAUSE, parse_duration
from macha_obs.config import Config
from macha_obs.intake.incidents import IncidentStore
from macha_obs.models import FailedUnits, Finding, FindingKind, Investigate, Outcome
from macha_obs.policy.judge import judge
from macha_obs.remediate.pause import PauseBook
from macha_obs.remediate.remediator import context_of
from macha_obs.store import Store
from tests.harness.daemon_support import MACHA_OBS

T0 = 1_764_000_000.0


def audit(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / "actions.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def pause_events(state_dir: Path) -> list[dict[str, Any]]:
    return [r for r in audit(state_dir) if r.get("event") in ("paused", "resumed")]


# ------------------------------------------------------------------ the duration parser


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30m", 1800),
        ("2h", 7200),
        ("1h30m", 5400),
        ("90s", 90),
        ("1d", 86400),
        ("90", 90),
        ("1d2h3m4s", 93784),
        (" 2H ", 7200),
        ("366d", MAX_PAUSE),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "0",
        "0s",
        "0h0m",
        "-5m",
        "-5",
        "abc",
        "1x",
        "h",
        "1.5h",
        "30m1h",
        "1h1h",
        "5 m",
        "²",
        "٣h",
    ],
)
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|no time"):
        parse_duration(text)


def test_parse_duration_refuses_more_than_a_year() -> None:
    with pytest.raises(ValueError, match="leave out --for"):
        parse_duration("367d")


# ------------------------------------------------------------------ the book


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[tuple[Store, list[float]]]:
    """A real store whose clock the test moves."""
    now = [T0]
    with Store(tmp_path / "state", clock=lambda: now[0]) as store:
        yield store, now


def test_a_timed_pause_holds_then_runs_out(clocked: tuple[Store, list[float]]) -> None:
    store, now = clocked
    book = PauseBook(store)
    assert (book.get(), book.current(T0)) == (None, None)
    paused = book.pause(until=T0 + 3600, reason="maintenance", by="alice")
    assert paused.since == datetime.fromtimestamp(T0, UTC)
    assert paused.until == datetime.fromtimestamp(T0 + 3600, UTC)
    assert book.current(T0 + 3599) == paused
    assert book.current(T0 + 3600) is None  # the end is exclusive
    assert book.expire() is None  # not yet, by the store's clock
    assert book.get() == paused
    now[0] = T0 + 3600
    assert book.expire() == paused
    assert (book.get(), book.expire()) == (None, None)  # once
    [on, off] = pause_events(store.state_dir)
    assert on["event"] == "paused"
    assert (on["by"], on["reason"]) == ("alice", "maintenance")
    assert on["until"] == datetime.fromtimestamp(T0 + 3600, UTC).isoformat()
    assert (off["event"], off["by"]) == ("resumed", "timer")


def test_an_open_pause_holds_until_resumed(clocked: tuple[Store, list[float]]) -> None:
    store, now = clocked
    book = PauseBook(store)
    book.pause(until=None, reason="", by="alice")
    now[0] = T0 + 10 * 365 * 86400
    assert book.expire() is None
    assert book.current(now[0]) is not None
    ended = book.resume(by="bob")
    assert ended is not None
    assert ended.by == "alice"
    assert (book.resume(by="bob"), book.get()) == (None, None)
    assert [(r["event"], r["by"]) for r in pause_events(store.state_dir)] == [
        ("paused", "alice"),
        ("resumed", "bob"),
    ]


def test_a_new_pause_replaces_the_last(clocked: tuple[Store, list[float]]) -> None:
    store, now = clocked
    book = PauseBook(store)
    book.pause(until=T0 + 60, reason="short", by="alice")
    now[0] = T0 + 30
    longer = book.pause(until=None, reason="longer", by="bob")
    now[0] = T0 + 120
    assert book.expire() is None  # the first end no longer applies
    assert book.current(now[0]) == longer


# ------------------------------------------------------------------ the commands


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def run(state_dir: Path, *args: str) -> Any:
    # the config file path empty: nothing from /etc on this machine
    return CliRunner().invoke(
        main, ["--state-dir", str(state_dir), *args], env={"MACHA_CONFIG": ""}
    )


def test_pause_for_and_resume_audit_who_and_why(state_dir: Path) -> None:
    before = time.time()
    paused = run(state_dir, "pause", "--for", "1h", "--reason", "maintenance")
    assert paused.exit_code == 0, paused.output
    assert f"paused by {who()} until " in paused.output
    assert " UTC: maintenance" in paused.output
    with Store(state_dir) as store:
        pause = PauseBook(store).current(time.time())
    assert pause is not None
    assert pause.until is not None
    assert before + 3600 <= pause.until.timestamp() <= time.time() + 3600

    resumed = run(state_dir, "resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resumed; 0 open incident(s) will be looked at again" in resumed.output
    with Store(state_dir) as store:
        assert PauseBook(store).get() is None
    [on, off] = pause_events(state_dir)
    assert (on["event"], on["by"], on["reason"]) == ("paused", who(), "maintenance")
    assert on["until"] == pause.until.isoformat()
    assert (off["event"], off["by"]) == ("resumed", who())
    assert off["reason"]


def test_pause_without_for_lasts_until_resumed(state_dir: Path) -> None:
    result = run(state_dir, "pause")
    assert result.exit_code == 0, result.output
    assert "until resumed" in result.output
    [on] = pause_events(state_dir)
    assert (on["until"], on["reason"]) == (None, "")
    again = run(state_dir, "pause", "--for", "30m", "--reason", "reboot window")
    assert again.exit_code == 0, again.output
    assert "replaces the earlier pause" in again.output


def test_resume_when_not_paused_says_so(state_dir: Path) -> None:
    result = run(state_dir, "resume")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "not paused"
    assert pause_events(state_dir) == []


@pytest.mark.parametrize("duration", ["0", "0m", "-1h", "soon", "1.5h", "400d"])
def test_pause_refuses_a_bad_duration_with_exit_2(state_dir: Path, duration: str) -> None:
    result = run(state_dir, "pause", "--for", duration)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--for'" in result.output
    assert pause_events(state_dir) == []


def test_resume_has_open_incidents_analysed_again(state_dir: Path) -> None:
    """A unit that failed while paused was only recorded: after resume it is decided anew."""
    failed = Finding(
        kind=FindingKind.UNIT_FAILED, subject="web.service", unit="web.service", summary="failed"
    )
    with Store(state_dir) as store:
        incidents = IncidentStore(store)
        incident_id, _ = incidents.open_for_findings("web.service", [failed])
        state = incidents.get(incident_id)
        assert state is not None
        incidents.mark_analyzed(incident_id, state.revision)
        assert incidents.pending_analysis() == []
    assert run(state_dir, "pause", "--reason", "deploy").exit_code == 0

    resumed = run(state_dir, "resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resumed; 1 open incident(s) will be looked at again" in resumed.output
    with Store(state_dir) as store:
        assert IncidentStore(store).pending_analysis() == [incident_id]


def test_a_paused_store_reaches_the_policy(state_dir: Path, make_config: Any) -> None:
    """What the command writes is what the remediator's context reads: nothing executes."""
    cfg: Config = make_config(state_dir=str(state_dir), autonomy_level="auto-safe")
    action = Investigate(diagnostic=FailedUnits())
    with Store(state_dir) as store:
        now = datetime.now(UTC)
        assert judge(action, context_of(cfg, store, now)).outcome is Outcome.EXECUTE
    assert run(state_dir, "pause", "--for", "10m", "--reason", "hands off").exit_code == 0
    with Store(state_dir) as store:
        verdict = judge(action, context_of(cfg, store, datetime.now(UTC)))
    assert verdict.outcome is Outcome.RECORD
    assert "hands off" in verdict.reason


def test_the_installed_command(state_dir: Path) -> None:
    env = {"MACHA_CONFIG": "", "MACHA_STATE_DIR": str(state_dir), "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [MACHA_OBS, *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    paused = cli("pause", "--for", "1h30m", "--reason", "maintenance")
    assert paused.returncode == 0, paused.stderr
    assert "UTC: maintenance" in paused.stdout
    bad = cli("pause", "--for", "never")
    assert bad.returncode == 2
    assert "'never' is not a duration" in bad.stderr
    resumed = cli("resume")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith("resumed;")
    assert [r["event"] for r in pause_events(state_dir)] == ["paused", "resumed"]
