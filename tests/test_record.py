"""Truth in the record (issue 21, points 3 to 7), against the lab's real systemd and the
real `macha-approve` / `macha-check` processes:

- a decision and its audit line are one step: a reject the audit log refuses is not taken;
- SIGINT (or SIGKILL) at each step of `approve`: the item ends pending or interrupted,
  listed and decidable at once; the running daemon's cycle recovers a dead CLI's claim;
- suggest + llm-first with a model that never answers: the runbooks' item is queued at once;
- a repeat failure after an approved, verified fix, with `macha-check` only: a new item;
- a person stopping the unit during verification: "changed by a person", breaker unchanged;
- a unit that crashed into its start limit on systemd 252: no automatic reset, it is queued.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from macha_obs.cli.wiring import Parts
from macha_obs.intake.incidents import IncidentStore
from macha_obs.models import (
    ActionStatus,
    ApprovalStatus,
    Finding,
    FindingKind,
    JournalVacuum,
    ResetFailed,
    RestartUnit,
    Risk,
    UnitState,
)
from macha_obs.store import Store
from tests.harness.daemon_support import MACHA_APPROVE
from tests.harness.labsd import LabSystemd
from tests.harness.sidecar_support import broken
from tests.harness.stack import poll

MACHA_CHECK = str(Path(sys.executable).parent / "macha-check")
UnitFactory = Callable[[str, str], str]


def _env(state: Path, lab: LabSystemd | None = None, **extra: str) -> dict[str, str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "MACHA_CONFIG": "",
        "MACHA_STATE_DIR": str(state),
        "MACHA_HOSTNAME": "testhost",
        "MACHA_ANALYSIS": "runbooks-only",
        "MACHA_LLM_ENABLED": "false",
        "MACHA_DBUS_EVENTS": "false",
    }
    if lab is not None:
        env["MACHA_SYSTEMD_BUS_ADDRESS"] = lab.bus_address
        env["MACHA_JOURNAL_DIR"] = str(lab.journal_dir)
    return env | extra


def _cli(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)


def _listed(state: Path, env: dict[str, str]) -> list[dict[str, object]]:
    done = _cli([MACHA_APPROVE, "list", "--json"], env)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


# ---------------------------------------------------------------- 3: audited, or not taken


def test_invariant_10_a_reject_the_audit_log_refuses_is_not_taken(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Store(state) as store:
        store.approvals.enqueue("inc", JournalVacuum(), risk=Risk.LOW, reason="r", ttl=600)
    env = _env(state)
    log = state / "decisions.jsonl"
    log.symlink_to(tmp_path / "elsewhere")  # the audit log cannot be written (refused)
    done = _cli([MACHA_APPROVE, "reject", "0", "--reason", "no"], env)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    with Store(state) as store:
        item = store.approvals.get_approval(0)
        assert item is not None
        assert item.status is ApprovalStatus.PENDING  # nothing half-recorded
    assert not (tmp_path / "elsewhere").exists()
    log.unlink()
    done = _cli([MACHA_APPROVE, "reject", "0", "--reason", "no"], env)
    assert done.returncode == 0, done.stderr
    [line] = [json.loads(x) for x in log.read_text().splitlines()]
    assert (line["event"], line["approval_id"], line["reason"]) == ("rejected", 0, "no")


# ---------------------------------------------------------------- 3: SIGINT in approve


def _holds_db_open(pid: int, db: Path) -> bool:
    try:
        return any(
            os.readlink(f"/proc/{pid}/fd/{fd}") == str(db) for fd in os.listdir(f"/proc/{pid}/fd")
        )
    except OSError:
        return False


def _intent_row(state: Path) -> bool:
    with Store(state) as store:
        return any(a.status is ActionStatus.INTENT for a in store.ledger.list_actions())


def _intent_audited(state: Path) -> bool:
    log = state / "actions.jsonl"
    return log.exists() and '"intent"' in log.read_text()


@pytest.mark.systemd
@pytest.mark.parametrize(
    ("step", "signum"),
    [
        ("opened", signal.SIGINT),
        ("intent-row", signal.SIGINT),
        ("intent-audited", signal.SIGINT),
        ("intent-row", signal.SIGKILL),
    ],
)
def test_invariant_6_a_signal_at_each_step_of_approve_leaves_the_item_listed_and_decidable(
    systemd_container: LabSystemd,
    unit_factory: UnitFactory,
    tmp_path: Path,
    step: str,
    signum: signal.Signals,
) -> None:
    lab = systemd_container
    name = f"rec-sig-{step}-{signum.value}"
    unit = broken(lab, unit_factory, name)
    lab.write_unit(f"{name}.service.d/slow.conf", "[Service]\nExecStartPre=/bin/sleep 30\n")
    state = tmp_path / "state"
    with Store(state) as store:
        incident_id, _ = IncidentStore(store).open_for_findings(
            unit, [Finding(kind=FindingKind.UNIT_FAILED, subject=unit, unit=unit, summary="x")]
        )
        store.approvals.enqueue(
            incident_id, RestartUnit(unit=unit), risk=Risk.LOW, reason="r", ttl=600
        )
    env = _env(state, lab, MACHA_VERIFY_TIMEOUT="60")
    proc = subprocess.Popen(
        [MACHA_APPROVE, "approve", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    reached = {
        "opened": lambda: _holds_db_open(proc.pid, state / "state.db"),
        "intent-row": lambda: _intent_row(state),
        "intent-audited": lambda: _intent_audited(state),
    }[step]
    assert poll(reached, 30)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert b"Traceback" not in err, err
    # listed at once (macha-approve recovers a dead process's claim), never stranded
    [item] = _listed(state, env)
    assert item["id"] == 0
    assert item["status"] in ("pending", "interrupted")
    with Store(state) as store:
        assert not store.approvals.list_approvals({ApprovalStatus.APPROVED})
        assert all(a.status is not ActionStatus.INTENT for a in store.ledger.list_actions())
    # ... and decidable, without any restart
    done = _cli([MACHA_APPROVE, "reject", "0", "--reason", "looked"], env)
    assert done.returncode == 0, done.stderr
    with Store(state) as store:
        assert store.approvals.get_approval(0).status is ApprovalStatus.REJECTED  # type: ignore[union-attr]
    lab.run("systemctl", "stop", unit, check=False)


def test_invariant_6_the_running_daemon_recovers_a_claim_stranded_by_a_dead_cli(
    sidecar: Callable[..., Parts], tmp_path: Path
) -> None:
    side = sidecar(autonomy_level="suggest")
    store = side.store
    store.approvals.enqueue(
        "inc", RestartUnit(unit="gone.service"), risk=Risk.LOW, reason="r", ttl=600
    )
    action_id = store.ledger.record_intent(
        "inc", RestartUnit(unit="gone.service"), approval_id=0, by="p"
    )
    with store.transaction() as cur:  # its writer, a macha-approve, died (no such pid)
        cur.execute("UPDATE actions SET owner = '999999999:0.000' WHERE id = ?", (action_id,))
    side.orchestrator.run_cycle("timer")  # the daemon's next cycle, no restart
    action = store.ledger.get_action(action_id)
    assert action is not None
    assert action.status is ActionStatus.INTERRUPTED
    item = store.approvals.get_approval(0)
    assert item is not None
    assert item.status is ApprovalStatus.INTERRUPTED


# ---------------------------------------------------------------- 4: the queue, at once


@pytest.fixture
def silent_model() -> Iterator[str]:
    """A loopback server that accepts and never answers: a model call that never ends."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def _verdicts(state: Path) -> list[str]:
    log = state / "decisions.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return [json.loads(x)["outcome"] for x in lines if '"verdict"' in x]


@pytest.mark.systemd
@pytest.mark.parametrize("level", ["suggest", "observe"])
def test_llm_first_queues_or_records_the_runbooks_fix_before_the_model_answers(
    systemd_container: LabSystemd,
    unit_factory: UnitFactory,
    sidecar: Callable[..., Parts],
    silent_model: str,
    level: str,
) -> None:
    unit = broken(systemd_container, unit_factory, f"rec-llm-{level}")
    side = sidecar(
        autonomy_level=level,
        analysis="llm-first",
        llm_enabled=True,
        ollama_url=silent_model,
        llm_timeout=600,
    )
    state = side.cfg.state_dir
    env = _env(state, systemd_container)
    side.orchestrator.analysis.start()
    try:
        side.loop.run_once()
        side.orchestrator.run_cycle("event")
        if level == "suggest":
            assert poll(lambda: bool(_listed(state, env)), 30)  # on the queue, not a clock
            [item] = _listed(state, env)
            assert item["action"] == {"kind": "restart_unit", "unit": unit}
            assert _verdicts(state) == ["queue"]  # the log and the queue agree
        else:
            assert poll(lambda: _verdicts(state) == ["record"], 30)
            assert _listed(state, env) == []  # observe queues nothing, and says so
        assert side.orchestrator.analysis.busy()  # the model has still not answered
    finally:
        side.orchestrator.stop()
    systemd_container.run("systemctl", "stop", unit, check=False)


# ---------------------------------------------------------------- 5: a repeat failure


@pytest.mark.systemd
def test_a_repeat_failure_after_an_approved_verified_fix_is_proposed_again_by_macha_check(
    systemd_container: LabSystemd, unit_factory: UnitFactory, tmp_path: Path
) -> None:
    lab = systemd_container
    unit = broken(lab, unit_factory, "rec-again")
    state = tmp_path / "state"
    env = _env(state, lab, MACHA_AUTONOMY_LEVEL="suggest", MACHA_VERIFY_SETTLE="0.3")
    first = _cli([MACHA_CHECK], env)
    assert first.returncode == 0, first.stderr
    assert [i["id"] for i in _listed(state, env)] == [0]
    approved = _cli([MACHA_APPROVE, "approve", "0"], env)
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert "verified" in approved.stdout
    lab.run("systemctl", "kill", "--signal=KILL", unit)  # it fails again
    lab.wait_for_state(unit, "failed")
    again = _cli([MACHA_CHECK], env)
    assert again.returncode == 0, again.stderr
    assert "no incident needed analysis" not in again.stdout
    [item] = _listed(state, env)
    assert item["id"] == 1  # a new problem, a new item
    assert item["action"] == {"kind": "restart_unit", "unit": unit}
    lab.run("systemctl", "stop", unit, check=False)


# ---------------------------------------------------------------- 6: a person's hand


@pytest.mark.systemd
def test_a_person_stopping_the_unit_during_verification_is_not_a_failed_fix(
    systemd_container: LabSystemd, unit_factory: UnitFactory, tmp_path: Path
) -> None:
    lab = systemd_container
    unit = broken(lab, unit_factory, "rec-hand")
    state = tmp_path / "state"
    with Store(state) as store:
        incident_id, _ = IncidentStore(store).open_for_findings(
            unit, [Finding(kind=FindingKind.UNIT_FAILED, subject=unit, unit=unit, summary="x")]
        )
        store.approvals.enqueue(
            incident_id, RestartUnit(unit=unit), risk=Risk.LOW, reason="r", ttl=600
        )
    env = _env(state, lab, MACHA_VERIFY_TIMEOUT="8", MACHA_VERIFY_SETTLE="6")
    proc = subprocess.Popen(
        [MACHA_APPROVE, "approve", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert poll(lambda: lab.unit_state(unit)[0] == "active" and _intent_row(state), 30)
    lab.run("systemctl", "stop", unit)  # a person, while the sidecar watches its fix
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert b"changed by a person" in out
    with Store(state) as store:
        [action] = store.ledger.list_actions()
        assert action.status is ActionStatus.CHANGED
        assert action.result is not None
        assert "stop job" in action.result.changed_by_person
        assert store.verifications.failed_verifications() == []  # the breaker is not fed
        assert not store.approvals.list_approvals({ApprovalStatus.PENDING})  # nothing escalated
    events = [json.loads(x)["event"] for x in (state / "actions.jsonl").read_text().splitlines()]
    assert "changed_by_person" in events


# ---------------------------------------------------------------- 7: the start limit


def test_a_failed_unit_restarted_up_to_its_start_limit_reads_as_start_limit_hit() -> None:
    def state(restarts: int, burst: int, active: str = "failed") -> UnitState:
        return UnitState(
            name="a.service",
            active_state=active,
            result="exit-code",
            n_restarts=restarts,
            start_limit_burst=burst,
        )

    assert state(3, 3).result == "start-limit-hit"  # systemd 252's "exit-code"
    assert state(2, 3).result == "exit-code"  # restarts left: an ordinary failure
    assert state(5, 0).result == "exit-code"  # no limit known
    assert state(3, 3, active="active").result == "exit-code"


@pytest.mark.systemd
def test_a_unit_crashed_into_its_start_limit_is_not_reset_automatically(
    systemd_container: LabSystemd, unit_factory: UnitFactory, tmp_path: Path
) -> None:
    lab = systemd_container
    unit = unit_factory(
        "rec-limit.service",
        "[Unit]\nStartLimitBurst=3\nStartLimitIntervalSec=600\n"
        "[Service]\nExecStart=/bin/false\nRestart=always\nRestartSec=0.1\n",
    )
    lab.run("systemctl", "start", unit, check=False)

    def refused() -> bool:
        shown = lab.run("systemctl", "show", "-p", "ActiveState,NRestarts", unit).stdout
        return "ActiveState=failed" in shown and "NRestarts=3" in shown

    assert poll(refused, 30)
    assert "Start request repeated too quickly" in lab.journal(unit)
    state = tmp_path / "state"
    env = _env(state, lab, MACHA_AUTONOMY_LEVEL="auto-safe")
    done = _cli([MACHA_CHECK], env)
    assert done.returncode == 0, done.stderr
    with Store(state) as store:
        ran = [a.action for a in store.ledger.list_actions() if a.action.kind != "investigate"]
        assert ran == []  # no reset, no restart: the start limit is its author's
        queued = [a.action for a in store.approvals.list_approvals({ApprovalStatus.PENDING})]
        assert ResetFailed(unit=unit) in queued  # the reset waits for a person
    assert lab.unit_state(unit)[0] == "failed"
