"""A sidecar that is killed at random instants (tests/test_hardening.py).

`python -m tests.harness.crash_worker STATE_DIR SEED` recovers the state dir as `serve` does,
then loops forever over the three things the daemon and the CLI do to the ledger:
ingest an alert (printing `ack FINGERPRINT` once `ingest` returned, as the webhook
answers 2xx), run a cycle (analysis, queueing, the incident marked analysed), and
approve a pending item (the executor appends to `ran` with fsync, the side effect).
Suggest mode with runbooks only, so what each incident must queue is known. It prints
`step N` before each of them and inside each side effect (after its intent): the killer
picks an N, so the kill lands at any of those points, and then anywhere in the work that
follows it.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from pathlib import Path

from macha_obs import config as config_mod
from macha_obs.agent.analyze import Analyzer
from macha_obs.config import AnalysisMode
from macha_obs.intake.incidents import IncidentStore
from macha_obs.models import (
    Action,
    AlertGroup,
    ApprovalStatus,
    ExecutionResult,
    UnitState,
)
from macha_obs.orchestrator import Orchestrator
from macha_obs.remediate.remediator import ApprovalError, Remediator
from macha_obs.store import Store
from tests.harness.receiver_support import alert, payload

UNITS = 40


_steps = [0]


def announce() -> None:
    _steps[0] += 1
    print(f"step {_steps[0]}", flush=True)


class RecordingExecutor:
    """Every unit is failed until restarted; a restart is a fsynced line in `ran`."""

    def __init__(self, ran: Path) -> None:
        self.ran = ran

    def run(self, action: Action) -> ExecutionResult:
        announce()  # between the intent and the side effect
        fd = os.open(self.ran, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{action.target}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return ExecutionResult(ok=True, verified=True, detail="restarted")

    def unit_state(self, unit: str) -> UnitState:
        return UnitState(name=unit, load_state="loaded", active_state="failed", sub_state="failed")


def main(state_dir: Path, seed: int) -> None:
    cfg = config_mod.validate(
        {
            "state_dir": str(state_dir),
            "autonomy_level": "suggest",
            "hostname": "testhost",
            "max_actions_per_target_per_hour": 1000,
            "max_actions_per_hour": 10000,
        }
    )
    store = Store(state_dir)
    incidents = IncidentStore(store)
    rem = Remediator(cfg, store, RecordingExecutor(state_dir / "ran"), scope_of=incidents.scope_of)
    analyzer = Analyzer(mode=AnalysisMode.RUNBOOKS_ONLY, client=None, hostname="testhost")
    orch = Orchestrator(cfg, store, incidents, analyzer, rem, snapshot=lambda: None)
    interrupted = store.ledger.recover_interrupted()  # as `serve` does on start
    incidents.reopen_all(keep={r.incident_id for r in interrupted})
    rng = random.Random(seed)
    print("ready", flush=True)
    while True:
        announce()
        op = rng.random()
        if op < 0.5:
            unit = f"crash-{rng.randrange(UNITS)}.service"
            body = alert(
                "UnitFailed", unit=unit, starts=f"2026-11-25T10:{rng.randrange(60):02d}:00Z"
            )
            group = AlertGroup.model_validate(payload(body, group_key=f"g:{unit}"))
            incidents.ingest(group, group.model_dump_json(by_alias=True), group.alerts)
            print(f"ack {body['fingerprint']} {body['startsAt']}", flush=True)
        elif op < 0.8:
            orch.run_cycle("timer")
        else:
            pending = store.approvals.list_approvals({ApprovalStatus.PENDING})
            if pending:
                with contextlib.suppress(ApprovalError):
                    rem.approve(rng.choice(pending).id, "worker")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
