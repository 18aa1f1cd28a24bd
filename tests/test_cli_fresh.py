"""Every command of macha-obs, macha-approve and macha-logs against a brand-new state dir:
exit 0 with an empty result, or the documented code (README "Command line": 0 done, 1 could
not be done, 2 bad configuration or usage) with a message, never a traceback.

systemd is a bus address that does not exist and the model a port nobody listens on: the
commands must say so and carry on, or stop cleanly. Not here: `serve` (the daemon; its
startup refusals are tested with it), and `privileged` with a valid instance, which would
run journalctl or nix on this host as root.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from macha_obs.cli import approve_main, logs_main, main
from macha_obs.models import JournalVacuum, Risk
from macha_obs.store import Store

BIN = Path(sys.executable).parent
TOOLS = {"macha-obs": main, "macha-approve": approve_main, "macha-logs": logs_main}
HUGE = "9" * 24  # beyond SQLite's 64-bit INTEGER
ARABIC_ONE = "\u0661"  # int() reads it as 1

PAYLOAD = {
    "version": "4",
    "groupKey": '{}:{alertname="UnitFailed"}',
    "status": "firing",
    "receiver": "macha",
    "groupLabels": {},
    "commonLabels": {},
    "commonAnnotations": {},
    "externalURL": "http://am",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "UnitFailed", "unit": "nginx.service"},
            "annotations": {"summary": "nginx failed"},
            "startsAt": "2026-01-01T00:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": "a1",
        }
    ],
}


@dataclass(frozen=True)
class Case:
    tool: str
    args: tuple[str, ...]
    code: int | frozenset[int]
    shows: str = ""  # in stdout or stderr
    empty: bool = False  # nothing on stdout
    stdin: str | None = None


def case(tool: str, line: str, code: int | frozenset[int], shows: str = "", **kw: object) -> object:
    return pytest.param(Case(tool, tuple(line.split()), code, shows, **kw), id=f"{tool} {line}")  # type: ignore[arg-type]


RUN_OUT = frozenset({0, 1})  # journalctl: present (0) or not installed here (1)
CASES = [
    case("macha-obs", "--help", 0, "Usage"),
    case("macha-obs", "--version", 0, "macha-obs"),
    case("macha-obs", "config show", 0, "autonomy_level"),
    case("macha-obs", "config show --json", 0, '"autonomy_level"'),
    case("macha-obs", "config validate", 0, "ok: autonomy suggest"),
    case("macha-obs", "config validate {config}", 0, "ok: autonomy observe"),
    case("macha-obs", "config validate {missing}", 2, "error"),
    case("macha-obs", "autonomy show", 0, "breaker:    closed"),
    case("macha-obs", "autonomy reset", 0, "breaker reset"),
    case("macha-obs", "status", 0, "queue:     0 pending"),
    case("macha-obs", "status --json", 0, '"approvals_pending": []'),
    case("macha-obs", "analyze {payload} --analysis runbooks-only", 0, "nothing was executed"),
    case("macha-obs", "analyze {payload} --json", 0, '"executed": []'),
    case("macha-obs", "analyze {payload} --analysis llm-first", 0, "not reachable"),
    case("macha-obs", "analyze - --analysis runbooks-only", 0, "restart_unit", stdin="payload"),
    case("macha-obs", "analyze {payload} --journal nginx={journal}", 0, "nothing was executed"),
    case("macha-obs", "analyze {payload} --journal nginx", 2, "UNIT=PATH"),
    case("macha-obs", "analyze {config}", 2, "not an Alertmanager v4 payload"),
    case("macha-obs", "analyze {missing}", 2, "No such file or directory"),
    case("macha-obs", "analyze {binary}", 2, "not UTF-8"),
    case("macha-obs", "analyze {big}", 2, "larger than webhook_max_body_bytes"),
    case("macha-obs", "pause", 0, "paused by"),
    case("macha-obs", "pause --for 30m --reason maintenance", 0, "maintenance"),
    case("macha-obs", "pause --for 0", 2, "no time at all"),
    case("macha-obs", "resume", 0, "not paused"),
    case("macha-obs", "webhook-token", 1, "no token yet"),  # README: exits 1 until created
    case("macha-obs", "webhook-token --create", 0, "webhook.token"),
    case("macha-obs", "check", 0, "findings: 0"),
    case("macha-obs", "privileged nix-gc;reboot", 2, "not a privileged action instance"),
    case("macha-obs", "no-such-command", 2, "No such command"),
    case("macha-approve", "--help", 0, "Usage"),
    case("macha-approve", "list", 0, "no approvals"),
    case("macha-approve", "list --json", 0, "[]"),
    case("macha-approve", "list --all", 0, "no approvals"),
    case("macha-approve", "list --all --json", 0, "[]"),
    case("macha-approve", "show 0", 1, "no approval with id 0"),
    case("macha-approve", "show 0 --json", 1, "no approval with id 0"),
    case("macha-approve", "approve 0", 1, "no approval with id 0"),
    case("macha-approve", "reject 0 --reason no", 1, "no approval with id 0"),
    case("macha-approve", f"show {HUGE}", 1, f"no approval with id {HUGE}"),
    case("macha-approve", "export 0", 1, "no approval with id 0"),
    case("macha-approve", f"export {HUGE}", 1, f"no approval with id {HUGE}"),
    case("macha-approve", "export 0x10", 2, "'0x10' is not an approval id"),
    case("macha-approve", f"approve {HUGE}", 1, f"no approval with id {HUGE}"),
    case("macha-approve", f"reject {HUGE}", 1, f"no approval with id {HUGE}"),
    # issue 20: past Python's 4,300-digit int() limit, still the ordinary message
    case("macha-approve", "approve {long_id}", 1, "no approval with id 10000"),
    case("macha-approve", "show {long_id}", 1, "(5001 digits)"),
    case("macha-approve", "reject {long_id} --reason no", 1, "no approval with id 1"),
    case("macha-approve", "export {long_id}", 1, "no approval with id 1"),
    case("macha-approve", "show -1", 2, "No such option"),
    case("macha-approve", "approve -- -1", 2, "'-1' is not an approval id"),
    case("macha-approve", "show 0x10", 2, "'0x10' is not an approval id"),
    case("macha-approve", f"approve {ARABIC_ONE}", 2, "is not an approval id"),
    case("macha-approve", f"reject {ARABIC_ONE}", 2, "is not an approval id"),
    case("macha-approve", "show", 2, "Missing argument"),
    case("macha-logs", "--help", 0, "Usage"),
    case("macha-logs", "decisions", 0, "nothing logged yet", empty=True),
    case("macha-logs", "decisions --json", 0, empty=True),
    case("macha-logs", "actions", 0, empty=True),
    case("macha-logs", "actions --json -n 5", 0, empty=True),
    case("macha-logs", "orchestrator", 0, empty=True),
    case("macha-logs", "orchestrator --json", 0, empty=True),
    case("macha-logs", "decisions -n 0", 2, "-n"),
    case("macha-logs", "everything", 2, "Invalid value"),
    case("macha-logs", "service", RUN_OUT),
    case("macha-logs", "service --json", RUN_OUT),
]


@pytest.fixture
def fresh(tmp_path: Path) -> dict[str, str]:
    """The environment of a brand-new host: no config, no state dir yet, no systemd."""
    (tmp_path / "config.toml").write_text('autonomy_level = "observe"\n')
    (tmp_path / "journal.txt").write_text("nginx: bind() failed\n")
    (tmp_path / "payload.json").write_text(json.dumps(PAYLOAD))
    (tmp_path / "binary").write_bytes(b"\x7fELF\x02\x01\xd0\xff" * 8)
    (tmp_path / "big.json").write_text(json.dumps(PAYLOAD | {"pad": "x" * 1_100_000}))
    return {
        "MACHA_CONFIG": "",
        "MACHA_STATE_DIR": str(tmp_path / "state"),
        "MACHA_SYSTEMD_BUS_ADDRESS": "unix:path=/nonexistent",
        "MACHA_OLLAMA_URL": "http://127.0.0.1:9",
        "MACHA_OPENAI_URL": "http://127.0.0.1:9",
    }


def _argv(c: Case, tmp_path: Path) -> list[str]:
    files = {
        "{config}": tmp_path / "config.toml",
        "{payload}": tmp_path / "payload.json",
        "{missing}": tmp_path / "missing.toml",
        "{binary}": tmp_path / "binary",
        "{big}": tmp_path / "big.json",
    }
    files["{journal}"] = tmp_path / "journal.txt"
    out = []
    for arg in c.args:
        text = arg.replace("{long_id}", "1" + "0" * 5000)
        for key, path in files.items():
            text = text.replace(key, str(path))
        out.append(text)
    return out


def _check(c: Case, code: int, stdout: str, stderr: str) -> None:
    said = f"exit {code}\nstdout: {stdout}\nstderr: {stderr}"
    assert "Traceback" not in stdout + stderr, said
    assert code in (c.code if isinstance(c.code, frozenset) else {c.code}), said
    assert c.shows in stdout + stderr, said
    if c.empty:
        assert stdout == "", said


@pytest.mark.parametrize("c", CASES)
def test_entry_point_on_a_fresh_state_dir(c: Case, fresh: dict[str, str], tmp_path: Path) -> None:
    """The installed entry point, as a person runs it: its real exit code and stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MACHA_")} | fresh
    stdin = (tmp_path / "payload.json").read_text() if c.stdin else None
    done = subprocess.run(
        [str(BIN / c.tool), *_argv(c, tmp_path)],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    _check(c, done.returncode, done.stdout, done.stderr)


@pytest.mark.parametrize("c", [p for p in CASES if "service" not in p.values[0].args])  # type: ignore[attr-defined]
def test_command_on_an_empty_state_dir(c: Case, fresh: dict[str, str], tmp_path: Path) -> None:
    """The same table in process, on a state dir that exists and is empty."""
    (tmp_path / "state").mkdir(mode=0o700)
    stdin = (tmp_path / "payload.json").read_text() if c.stdin else None
    result = CliRunner().invoke(TOOLS[c.tool], _argv(c, tmp_path), env=fresh, input=stdin)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    _check(c, result.exit_code, result.stdout, result.stderr)


def test_macha_check_on_an_empty_state_dir(fresh: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "state").mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MACHA_")} | fresh
    done = subprocess.run(
        [str(BIN / "macha-check")], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    _check(Case("macha-check", (), 0, "findings: 0"), done.returncode, done.stdout, done.stderr)


def test_odd_ids_never_reach_another_approval(fresh: dict[str, str], tmp_path: Path) -> None:
    """`reject` of an Arabic-Indic one must not reject approval 1: nothing odd touches
    the queue."""
    with Store(tmp_path / "state") as store:
        store.approvals.enqueue("inc-a", JournalVacuum(), risk=Risk.LOW, reason="a", ttl=600)
        store.approvals.enqueue(
            "inc-b", JournalVacuum(max_size_mb=100), risk=Risk.LOW, reason="b", ttl=600
        )
    for args in (
        ["reject", ARABIC_ONE],
        ["approve", ARABIC_ONE],
        ["reject", "0x1"],
        ["reject", "1.0"],
        ["reject", "+1"],
        ["reject", " 1"],
        ["reject", "--", "-0"],
    ):
        result = CliRunner().invoke(approve_main, args, env=fresh)
        assert result.exit_code == 2, (args, result.output)
        assert "is not an approval id" in result.output
    for args in (["show", HUGE], ["approve", HUGE], ["reject", str(2**63)]):
        result = CliRunner().invoke(approve_main, args, env=fresh)
        assert result.exit_code == 1, (args, result.output)
        assert "no approval with id" in result.output
    shown = CliRunner().invoke(approve_main, ["show", str(2**63 - 1)], env=fresh)
    assert (shown.exit_code, shown.output.strip()) == (1, f"error: no approval with id {2**63 - 1}")
    listed = CliRunner().invoke(approve_main, ["list", "--json"], env=fresh)
    assert [item["status"] for item in json.loads(listed.output)] == ["pending", "pending"]
    assert CliRunner().invoke(approve_main, ["show", "0001"], env=fresh).exit_code == 0


def test_logs_follow_waits_for_a_new_log_and_stops_on_ctrl_c(
    fresh: dict[str, str], tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MACHA_")} | fresh
    follower = subprocess.Popen(
        [str(BIN / "macha-logs"), "decisions", "-f"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stderr is not None
        # it says when it starts waiting for decisions.jsonl to exist: that line is the event
        ready, _, _ = select.select([follower.stderr], [], [], 30)
        assert ready, "macha-logs -f never said it was waiting"
        assert "waiting for" in follower.stderr.readline()
        assert follower.poll() is None
        with Store(tmp_path / "state") as store:
            store.audit.audit_decision({"event": "verdict", "incident_id": "inc-9", "reason": "r"})
        assert follower.stdout is not None
        line = follower.stdout.readline()
        assert "verdict" in line
        assert "incident=inc-9" in line
    finally:
        follower.send_signal(signal.SIGINT)
        _, stderr = follower.communicate(timeout=10)
    assert follower.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_logs_refuse_a_planted_symlink_or_fifo(fresh: dict[str, str], tmp_path: Path) -> None:
    """Root's `macha-logs` reads no file the state dir's owner points it at, nor blocks."""
    state = tmp_path / "state"
    state.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("root's secret\n")
    (state / "decisions.jsonl").symlink_to(secret)
    os.mkfifo(state / "actions.jsonl")
    linked = CliRunner().invoke(logs_main, ["decisions"], env=fresh)
    assert linked.exit_code == 1
    assert "a symlink, refused" in linked.stderr
    assert "secret" not in linked.stdout
    fifo = CliRunner().invoke(logs_main, ["actions"], env=fresh)
    assert fifo.exit_code == 1
    assert "not a regular file" in fifo.stderr
