"""A simulated operator over a scripted run of incidents in the lab systemd (issue 13).

The sidecar runs in `suggest` on real units; a scripted person approves, rejects or
fixes things by hand. What they did is recorded per problem and fix, scored against what
auto-safe would have done (the agreement rate is checked against a hand count and
printed), a fix rejected three times is not proposed a fourth time, `macha-obs learn`
matches the ledger, and a per-action allowance runs that one action in suggest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from macha_obs.cli.wiring import Parts
from macha_obs.config import Config, ConfigError
from macha_obs.models import (
    ApprovalStatus,
    Investigate,
    JournalTail,
    Outcome,
    describe_action,
)
from tests.harness.labsd import LabSystemd
from tests.harness.operator import Operator
from tests.harness.sidecar_support import CRASH_ONCE

pytestmark = pytest.mark.systemd

UnitFactory = Callable[[str, str], str]
# systemd gives up after one failed start: the second start hits the start limit
# the scripted run restarts one unit more often than the default hourly limit allows
LIMITS: dict[str, Any] = {"max_actions_per_target_per_hour": 20, "max_actions_per_hour": 50}
START_LIMITED = (
    "[Unit]\nStartLimitIntervalSec=600\nStartLimitBurst=1\n"
    "[Service]\nExecStart=/bin/sleep infinity\n"
)


def test_a_simulated_operator_is_recorded_scored_and_listened_to(
    systemd_container: LabSystemd,
    unit_factory: UnitFactory,
    sidecar: Callable[..., Parts],
    lab_config: Callable[..., Config],
) -> None:
    lab = systemd_container
    web = unit_factory("learn-web.service", CRASH_ONCE.format(name="learn-web"))
    worker = unit_factory("learn-worker.service", CRASH_ONCE.format(name="learn-worker"))
    limited = unit_factory("learn-limited.service", START_LIMITED)
    side = sidecar(autonomy_level="suggest", **LIMITS)
    op = Operator(lab, side)

    # web fails three times; the person approves the restart each time (auto-safe would
    # have run it: agreed x3), and once fixes it by hand while the item waits
    for _ in range(3):
        op.incident(web)
        op.approve("restart_unit", web)
        op.resolve(web)
    op.incident(web)
    op.fix_by_hand(web)
    assert len(op.resolve(web)) == 1  # cancelled: fixed elsewhere, not scored
    # worker fails three times; the person rejects the restart each time (auto-safe would
    # have run it: disagreed x3) - a fix rejected three times is suppressed
    for n in range(3):
        op.incident(worker)
        op.reject("restart_unit", worker, f"worker is being migrated ({n + 1})")
        op.resolve(worker)
    # the fourth time it is not proposed: recorded with why, and never queued
    handled = op.incident(worker)
    verdicts = [h.verdict for _, p, h in handled if p.action.kind == "restart_unit"]
    assert [v.outcome for v in verdicts] == [Outcome.RECORD]
    assert verdicts[0].reason.startswith(
        f"suppressed: restart_unit {worker} for MachaUnitFailed:{worker}: rejected 3 times "
        "within 7 days (threshold 3); not proposed as an action until "
    )
    assert f"investigate instead (journal_tail {worker})" in verdicts[0].reason
    assert op.pending("restart_unit", worker) is None
    # ... it becomes an investigation of the same unit, judged like any proposal (in
    # suggest: queued for a person, who sees why)
    looks = [(p, h) for _, p, h in handled if p.action.kind == "investigate"]
    assert [p.action for p, _ in looks] == [Investigate(diagnostic=JournalTail(unit=worker))]
    assert looks[0][0].reason.startswith("instead of a suppressed fix: suppressed: restart_unit")
    assert looks[0][1].verdict.outcome is Outcome.QUEUE
    op.resolve(worker)
    # limited hit its start limit twice: auto-safe would hold the reset for a human; the
    # person rejects it once (agreed) and approves it once (disagreed)
    op.incident(limited, start_limit=True)
    op.reject("reset_failed", limited, "look at it first")
    op.resolve(limited)
    op.incident(limited, start_limit=True)
    op.approve("reset_failed", limited)
    op.resolve(limited)

    # the hand count: 3 + 1 agreed, 3 + 1 disagreed
    records = {str(r.fix): r for r in side.store.outcomes.fix_records()}
    learned_json = learn_cli(lab, lab_config(autonomy_level="suggest", **LIMITS), "--json")
    agreement = learned_json["agreement"]
    print(
        f"\nsimulated operator: agreement with auto-safe {agreement['agreed']}/"
        f"{agreement['total']} = {agreement['rate']:.0%}; by kind "
        + ", ".join(f"{k} {a['agreed']}/{a['total']}" for k, a in agreement["by_kind"].items())
    )
    assert (agreement["agreed"], agreement["disagreed"]) == (4, 4)
    assert agreement["rate"] == 0.5
    assert {k: (a["agreed"], a["total"]) for k, a in agreement["by_kind"].items()} == {
        "reset_failed": (1, 2),
        "restart_unit": (3, 6),
    }
    web_record = records[f"restart_unit {web}"]
    assert (web_record.proposed, web_record.approved, web_record.verified) == (4, 3, 3)
    assert (web_record.fixed_elsewhere, web_record.rejected) == (1, 0)
    worker_record = records[f"restart_unit {worker}"]
    assert (worker_record.proposed, worker_record.rejected) == (3, 3)
    assert worker_record.rejection_reasons[-1] == "worker is being migrated (3)"

    # `macha-obs learn` matches the ledger, counted independently from the queue itself
    for entry in learned_json["records"]:
        items = [
            a for a in side.store.approvals.list_approvals()
            if describe_action(a.action) == entry["fix"]
        ]  # fmt: skip
        statuses = Counter(a.status for a in items)
        assert entry["proposed"] == len(items), entry
        assert entry["rejected"] == statuses[ApprovalStatus.REJECTED]
        assert entry["approved"] == statuses[ApprovalStatus.EXECUTED]
        assert entry["verified"] == statuses[ApprovalStatus.EXECUTED]
        assert entry["fixed_elsewhere"] == statuses[ApprovalStatus.CANCELLED]
    [candidate] = learned_json["candidates"]
    assert candidate["text"] == (
        f"restart_unit {web}: approved 3/3, verified 3/3 - to allow it, add "
        f'`trusted_actions = ["restart_unit:{web}"]` to your config, or in NixOS '
        f'`services.macha-autonomous.settings.trusted_actions = [ "restart_unit:{web}" ];`'
    )
    [suppressed] = learned_json["suppressed"]
    assert suppressed["fix"] == f"restart_unit {worker}"
    text = learn_cli(lab, lab_config(autonomy_level="suggest", **LIMITS))
    print(text)
    assert "Agreement with auto-safe (suggest/observe): 4/8 agreed (50%)" in text

    # macha-approve shows the history beside the item
    op.incident(web)
    listed = approve_cli(lab, lab_config(autonomy_level="suggest", **LIMITS), "list")
    assert (
        f"history: MachaUnitFailed:{web}: approved 3 times before, verified 3/3, "
        "fixed without the sidecar once"
    ) in listed
    op.approve("restart_unit", web)
    op.resolve(web)

    # a person clears the suppression (audited): the worker's restart is proposed again
    cleared = learn_cli(
        lab, lab_config(autonomy_level="suggest", **LIMITS), "clear", f"MachaUnitFailed:{worker}"
    )
    assert "cleared MachaUnitFailed:learn-worker.service: 3 rejection(s)" in cleared
    op.incident(worker)
    assert op.pending("restart_unit", worker) is not None
    op.resolve(worker)


def test_a_per_action_allowance_runs_that_action_in_suggest_and_nothing_else(
    systemd_container: LabSystemd, unit_factory: UnitFactory, sidecar: Callable[..., Parts]
) -> None:
    lab = systemd_container
    web = unit_factory("trust-web.service", CRASH_ONCE.format(name="trust-web"))
    other = unit_factory("trust-other.service", CRASH_ONCE.format(name="trust-other"))
    limited = unit_factory("trust-limited.service", START_LIMITED)
    trusted = [f"restart_unit:{web}", f"reset_failed:{limited}"]
    side = sidecar(autonomy_level="suggest", trusted_actions=trusted)
    op = Operator(lab, side)
    [(_, _, handled)] = op.incident(web)
    assert handled.verdict.outcome is Outcome.EXECUTE
    assert f"trusted by a person (trusted_actions 'restart_unit:{web}'" in handled.verdict.reason
    assert handled.result is not None
    assert handled.result.verified
    assert lab.unit_state(web) == ("active", "running")
    op.resolve(web)
    # another unit's restart is not trusted: queued, nothing ran
    op.incident(other)
    assert op.pending("restart_unit", other) is not None
    assert lab.unit_state(other)[0] == "failed"
    op.resolve(other)
    # a trusted reset of a unit at its start limit still waits for a human (the hold)
    op.incident(limited, start_limit=True)
    assert op.pending("reset_failed", limited) is not None
    assert lab.unit_state(limited)[0] == "failed"
    op.resolve(limited)
    automatic = [r for r in side.store.ledger.list_actions() if r.approval_id is None]
    assert [describe_action(r.action) for r in automatic] == [f"restart_unit {web}"]


def test_a_protected_unit_in_an_allowance_is_refused_with_a_clear_config_error(
    lab_config: Callable[..., Config], systemd_container: LabSystemd
) -> None:
    with pytest.raises(ConfigError) as refused:
        lab_config(trusted_actions=["restart_unit:sshd.service"])
    message = str(refused.value)
    assert "trusted_actions" in message
    assert "sshd.service names protected units (remote-access:" in message
    # and the command line says so before doing anything
    cfg = lab_config()
    env = cli_env(systemd_container, cfg) | {"MACHA_TRUSTED_ACTIONS": "restart_unit:dbus.service"}
    run = subprocess.run([cli("macha-obs"), "learn"], env=env, capture_output=True, text=True,
                         check=False)  # fmt: skip
    assert run.returncode == 2, run.stdout + run.stderr
    assert "dbus.service names protected units (systemd-special:" in run.stderr


# ---------------------------------------------------------------- the command lines


def cli(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def cli_env(lab: LabSystemd, cfg: Config) -> dict[str, str]:
    return {
        **os.environ,
        "MACHA_STATE_DIR": str(cfg.state_dir),
        "MACHA_SYSTEMD_BUS_ADDRESS": lab.bus_address,
        "MACHA_AUTONOMY_LEVEL": cfg.autonomy_level.value,
    }


def learn_cli(lab: LabSystemd, cfg: Config, *args: str) -> Any:
    run = subprocess.run([cli("macha-obs"), "learn", *args], env=cli_env(lab, cfg),
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout) if "--json" in args else run.stdout


def approve_cli(lab: LabSystemd, cfg: Config, *args: str) -> str:
    run = subprocess.run([cli("macha-approve"), *args], env=cli_env(lab, cfg),
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout
