"""Store: approvals, the ledger, crash recovery and concurrent approvers.

Concurrency and crash tests use real processes (spawned Python interpreters, SIGKILL);
the only stand-in is the runner seam, i.e. the process boundary of the executor.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from macha_obs.execute.runner import Completed
from macha_obs.models import (
    ActionStatus,
    ApprovalStatus,
    ExecutionResult,
    JournalVacuum,
    RestartUnit,
    Risk,
)
from macha_obs.store import (
    ApprovalError,
    Approvals,
    Audit,
    Ledger,
    Meta,
    Outcomes,
    Store,
    Verifications,
)
from macha_obs.store._db import Part


def enqueue(store: Store, unit: str = "nginx.service", incident: str = "inc-1", ttl: float = 60):
    return store.approvals.enqueue(
        incident, RestartUnit(unit=unit), risk=Risk.LOW, reason="why", evidence=["e"], ttl=ttl
    )


def test_wal_mode_and_files(store: Store) -> None:
    mode = sqlite3.connect(store.state_dir / "state.db").execute("PRAGMA journal_mode").fetchone()
    assert mode[0] == "wal"


def test_approval_ids_start_at_zero_and_are_stable(store: Store) -> None:
    first = enqueue(store, "a.service")
    second = enqueue(store, "b.service")
    assert (first.id, second.id) == (0, 1)
    store.approvals.reject_approval(0, "me", "no")
    third = enqueue(store, "c.service")
    assert third.id == 2  # ids are never reused
    assert store.approvals.get_approval(1) == second


def test_identical_pending_proposal_is_not_duplicated(store: Store) -> None:
    a = enqueue(store)
    b = enqueue(store)
    assert a.id == b.id
    assert store.approvals.pending_count() == 1


def test_queue_stability_another_incident_attaches_to_the_pending_item(store: Store) -> None:
    """The D-Bus event, then the alert, then cycles: one item, one id, all the evidence."""
    a = enqueue(store)
    later = store.approvals.enqueue(
        "inc-2",
        RestartUnit(unit="nginx.service"),
        risk=Risk.LOW,
        reason="again",
        evidence=["alert MachaUnitFailed"],
        ttl=60,
    )
    assert later.id == a.id
    assert later.incident_ids == ["inc-1", "inc-2"]
    assert later.evidence == ["e", "alert MachaUnitFailed"]
    assert later.reason == "why"  # what the person read first stays
    assert store.approvals.pending_count() == 1
    # another action is another item
    assert enqueue(store, unit="other.service").id != a.id


def test_attached_evidence_is_bounded(store: Store) -> None:
    for i in range(30):
        store.approvals.enqueue(
            f"inc-{i}",
            RestartUnit(unit="nginx.service"),
            risk=Risk.LOW,
            reason="r",
            evidence=[f"line {i}"],
            ttl=60,
        )
    [item] = store.approvals.list_approvals()
    assert len(item.evidence) == 10
    assert item.evidence[0] == "line 0"
    assert item.evidence[-1] == "line 29"


def test_older_databases_fold_duplicate_pending_items(tmp_path: Path) -> None:
    """A state.db from before: one pending item per (incident, action) and no
    incident_ids column. Opening it keeps the oldest item and cancels the copies."""
    db = sqlite3.connect(tmp_path / "state.db")
    db.executescript(
        "CREATE TABLE approvals (id INTEGER PRIMARY KEY, incident_id TEXT NOT NULL,"
        " action TEXT NOT NULL, kind TEXT NOT NULL, target TEXT NOT NULL, risk TEXT NOT NULL,"
        " reason TEXT NOT NULL, evidence TEXT NOT NULL DEFAULT '[]', status TEXT NOT NULL,"
        " created_at REAL NOT NULL, expires_at REAL NOT NULL, decided_at REAL,"
        " decided_by TEXT NOT NULL DEFAULT '', note TEXT NOT NULL DEFAULT '', action_id INTEGER);"
        "CREATE UNIQUE INDEX approvals_pending_once ON approvals(incident_id, action)"
        " WHERE status = 'pending';"
    )
    action = RestartUnit(unit="nginx.service").model_dump_json()
    for i, incident in enumerate(["fd-1", "am-1"]):
        db.execute(
            "INSERT INTO approvals(id, incident_id, action, kind, target, risk, reason, status,"
            " created_at, expires_at) VALUES (?,?,?,'restart_unit','nginx.service','low','r',"
            " 'pending', 0, 9e9)",
            (i, incident, action),
        )
    db.commit()
    db.close()
    with Store(tmp_path) as store:
        items = store.approvals.list_approvals()
        assert [(a.id, a.status) for a in items] == [
            (0, ApprovalStatus.PENDING),
            (1, ApprovalStatus.CANCELLED),
        ]
        assert items[0].incident_ids == ["fd-1"]
        assert items[1].note == "merged into approval 0"


def test_invariant_5_claim_once_with_its_intent(store: Store) -> None:
    """Claiming an item and writing its intent are one transaction; only one wins."""
    item = enqueue(store)
    store.ledger.record_intent("inc-1", item.action, approval_id=0, by="alice")
    assert store.approvals.get_approval(0).status is ApprovalStatus.APPROVED  # type: ignore[union-attr]
    with pytest.raises(ApprovalError, match="no longer pending"):
        store.ledger.record_intent("inc-1", item.action, approval_id=0, by="bob")
    with pytest.raises(ApprovalError, match="approved, not pending"):
        store.approvals.pending_approval(0)
    with pytest.raises(ApprovalError, match="no approval with id 7"):
        store.approvals.pending_approval(7)
    assert len(store.ledger.list_actions()) == 1


def test_expiry_after_ttl(tmp_path: Path) -> None:
    now = [1000.0]
    with Store(tmp_path, clock=lambda: now[0]) as store:
        enqueue(store, ttl=60)
        now[0] += 61
        with pytest.raises(ApprovalError, match="expired"):
            store.approvals.pending_approval(0)
        enqueue(store, "b.service", ttl=60)
        now[0] += 61
        assert store.approvals.expire_approvals() == [1]
        assert store.approvals.get_approval(1).status is ApprovalStatus.EXPIRED  # type: ignore[union-attr]


def test_cancel_only_a_pending_item_with_its_reason(store: Store) -> None:
    enqueue(store, "a.service", incident="x")
    enqueue(store, "b.service", incident="y")
    assert store.approvals.cancel_approval(0, "the problem is gone: a.service is active")
    assert not store.approvals.cancel_approval(0, "twice")
    first = store.approvals.get_approval(0)
    assert first is not None
    assert first.status is ApprovalStatus.CANCELLED
    assert first.note == "the problem is gone: a.service is active"
    assert store.approvals.get_approval(1).status is ApprovalStatus.PENDING  # type: ignore[union-attr]


def test_intent_then_outcome_in_ledger_and_audit(store: Store) -> None:
    action = RestartUnit(unit="nginx.service")
    action_id = store.ledger.record_intent("inc", action)
    assert store.ledger.get_action(action_id).status is ActionStatus.INTENT  # type: ignore[union-attr]
    store.ledger.record_outcome(
        action_id, ActionStatus.SUCCEEDED, ExecutionResult(ok=True, verified=True)
    )
    record = store.ledger.get_action(action_id)
    assert record is not None
    assert record.status is ActionStatus.SUCCEEDED
    lines = [json.loads(x) for x in store.audit.actions_log.read_text().splitlines()]
    assert [x["event"] for x in lines] == ["intent", "outcome"]
    assert all(x["incident_id"] == "inc" for x in lines)


def test_one_intent_per_approval(store: Store) -> None:
    enqueue(store)
    store.ledger.record_intent("inc-1", RestartUnit(unit="nginx.service"), approval_id=0)
    with pytest.raises(ApprovalError, match="already carried out"):
        store.ledger.record_intent("inc-1", RestartUnit(unit="nginx.service"), approval_id=0)


def test_breaker_persists_until_reset(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        store.verifications.record_verification(None, ok=False)
        store.verifications.open_breaker("3 failures")
    with Store(tmp_path) as store:  # a restart keeps it open
        assert store.verifications.breaker_opened()[1] == "3 failures"
        store.verifications.reset_breaker("alice")
        assert store.verifications.breaker_opened() == (None, "")
        assert store.verifications.failed_verifications() == []


def test_corrupt_state_db_is_a_clear_error(tmp_path: Path) -> None:
    from macha_obs.store import StoreError

    (tmp_path / "state.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"state\.db"):
        Store(tmp_path)


def test_audit_lines_are_whole_under_concurrency(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from macha_obs.store import Store\n"
        "s = Store(Path(sys.argv[1]))\n"
        "for i in range(200):\n"
        "    s.audit.audit_decision({'w': sys.argv[2], 'i': i, 'pad': 'x' * 3000})\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(w)]) for w in range(3)
    ]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    lines = (tmp_path / "decisions.jsonl").read_text().splitlines()
    assert len(lines) == 600
    assert all(json.loads(line)["pad"] == "x" * 3000 for line in lines)


# ---------------------------------------------------------------- real processes


class CountingRunner:
    """The executor's process boundary: append one line per execution to a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, argv: Sequence[str], *, timeout: float) -> Completed:
        with open(self.path, "a") as fh:
            fh.write(f"{os.getpid()} {' '.join(argv)}\n")
        return Completed(tuple(argv), 0, "")


class SleepingRunner:
    """A runner that blocks in a real child process, so the caller can be killed mid-action."""

    def __call__(self, argv: Sequence[str], *, timeout: float) -> Completed:
        from macha_obs.execute.runner import subprocess_runner

        return subprocess_runner(["sleep", "60"], timeout=timeout)


def _remediator(state_dir: str, runner: Callable[..., Completed]):
    from macha_obs import config as config_mod
    from macha_obs.execute.dispatch import HostExecutor
    from macha_obs.execute.journal import JournalExecutor
    from macha_obs.remediate.remediator import Remediator

    cfg = config_mod.validate(
        {
            "state_dir": state_dir,
            "autonomy_level": "suggest",
            "max_actions_per_target_per_hour": 1000,
            "max_actions_per_hour": 10000,
        }
    )
    executor = HostExecutor(None, None, JournalExecutor(runner), None)  # type: ignore[arg-type]
    from macha_obs.models import FindingKind
    from macha_obs.policy.scope import Scope

    store = Store(Path(state_dir))
    # the incidents these items came from were about a filling disk (the scope lock)
    disk = Scope(kinds=frozenset({FindingKind.DISK_FILLING}))
    return Remediator(cfg, store, executor, scope_of=lambda _ids: disk), store


def _approver(state_dir: str, counter: str, rounds: int, barrier, results) -> None:
    remediator, _ = _remediator(state_dir, CountingRunner(counter))
    for approval_id in range(rounds):
        barrier.wait(30)
        try:
            remediator.approve(approval_id, f"p{os.getpid()}")
            results.put((approval_id, "executed"))
        except ApprovalError:
            results.put((approval_id, "lost"))


def test_invariant_5_concurrent_approvals_execute_exactly_once(tmp_path: Path) -> None:
    rounds = 100
    state_dir, counter = str(tmp_path / "state"), str(tmp_path / "executions")
    _, store = _remediator(state_dir, CountingRunner(counter))
    for i in range(rounds):
        store.approvals.enqueue(
            f"inc-{i}", JournalVacuum(max_size_mb=100 + i), risk=Risk.LOW, reason="r", ttl=3600
        )
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [
        ctx.Process(target=_approver, args=(state_dir, counter, rounds, barrier, results))
        for _ in range(2)
    ]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=120) for _ in range(2 * rounds)]
    for w in workers:
        w.join(30)
        assert w.exitcode == 0

    executed = [i for i, what in outcomes if what == "executed"]
    assert sorted(executed) == list(range(rounds))  # each id executed by exactly one process
    lines = Path(counter).read_text().splitlines()
    assert len(lines) == rounds  # ... and the side effect happened exactly once per id
    assert all(a.status is ApprovalStatus.EXECUTED for a in store.approvals.list_approvals())


def _doomed_approver(state_dir: str) -> None:
    remediator, _ = _remediator(state_dir, SleepingRunner())
    remediator.approve(0, "doomed")


def test_invariant_6_sigkill_between_intent_and_outcome_leaves_interrupted(
    tmp_path: Path,
) -> None:
    state_dir, counter = str(tmp_path / "state"), str(tmp_path / "executions")
    _, store = _remediator(state_dir, CountingRunner(counter))
    store.approvals.enqueue("inc", JournalVacuum(), risk=Risk.LOW, reason="r", ttl=3600)

    child = multiprocessing.get_context("spawn").Process(target=_doomed_approver, args=(state_dir,))
    child.start()
    # the intent is committed, then audited: kill once both are written (the window
    # between them is a crash of its own, with the ledger as the truth)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        store.ledger.list_actions()
        and store.audit.actions_log.exists()
        and '"intent"' in store.audit.actions_log.read_text()
    ):
        time.sleep(0.05)
    [intent] = store.ledger.list_actions()
    assert intent.status is ActionStatus.INTENT
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)

    # the next process to open the store (the restarted daemon) finds it interrupted
    remediator, restarted = _remediator(state_dir, CountingRunner(counter))
    [recovered] = restarted.ledger.recover_interrupted()
    assert recovered.id == intent.id
    assert recovered.status is ActionStatus.INTERRUPTED
    assert restarted.approvals.get_approval(0).status is ApprovalStatus.INTERRUPTED
    # ... and nothing re-runs by itself: the runner never ran, the record says so
    assert not Path(counter).exists()
    assert restarted.ledger.recover_interrupted() == []
    events = [json.loads(x)["event"] for x in restarted.audit.actions_log.read_text().splitlines()]
    assert events == ["intent", "interrupted"]
    # the item stays decidable: a person's explicit approval judges it again and runs it
    # once (a second attempt, a new ledger row); approving once more is refused
    handled = remediator.approve(0, "again")
    assert handled.approval is not None
    assert handled.approval.status is ApprovalStatus.EXECUTED
    assert len(Path(counter).read_text().splitlines()) == 1
    with pytest.raises(ApprovalError, match="executed, not pending"):
        remediator.approve(0, "again")


def test_recovery_leaves_live_intents_alone(store: Store) -> None:
    action_id = store.ledger.record_intent("inc", RestartUnit(unit="a.service"))
    assert store.ledger.recover_interrupted() == []  # the writer (this process) is alive
    assert store.ledger.get_action(action_id).status is ActionStatus.INTENT  # type: ignore[union-attr]


def test_the_store_is_composed_of_parts_each_with_its_own_tables(tmp_path: Path) -> None:
    """Issue 22: not one class over a seven-class MRO. Each part is its own object on the
    one connection, and a public query lives on exactly one part."""
    assert Store.__mro__ == (Store, object)
    with Store(tmp_path / "state") as store:
        parts: dict[str, type[Part]] = {
            "audit": Audit,
            "meta": Meta,
            "approvals": Approvals,
            "ledger": Ledger,
            "verifications": Verifications,
            "outcomes": Outcomes,
        }
        for name, kind in parts.items():
            part = getattr(store, name)
            assert type(part) is kind
            assert part.db is store.db  # one connection, one lock, one transaction
        public = [
            {n for n in vars(kind) if not n.startswith("_") and n != "migrate"}
            for kind in parts.values()
        ]
        every = [n for names in public for n in names]
        assert len(every) == len(set(every)), "a query on two parts"
        assert not set(every) & {n for n in vars(Store) if not n.startswith("_")}
