"""approval_queue.json: a read-only view of the pending items that follows every change
to the queue, rewritten whole (a crash mid-rewrite never leaves a torn file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from macha_obs.intake.incidents import IncidentStore, Queued
from macha_obs.models import ActionStatus, ApprovalStatus, ExecutionResult, RestartUnit, Risk
from macha_obs.statedir import StateDir
from macha_obs.store import Store, queue_view
from macha_obs.store.queue_view import read


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def shown(store: Store) -> list[int]:
    return [int(item["id"]) for item in read(store.paths)]  # type: ignore[call-overload]


def pending(store: Store) -> list[int]:
    return [a.id for a in store.approvals.list_approvals({ApprovalStatus.PENDING})]


def enqueue(store: Store, unit: str, ttl: float = 600) -> int:
    item = store.approvals.enqueue(
        "inc", RestartUnit(unit=unit), risk=Risk.LOW, reason="r", ttl=ttl
    )
    return item.id


def test_the_view_follows_every_change_to_the_queue(tmp_path: Path) -> None:
    clock = Clock()
    with Store(tmp_path / "state", clock=clock) as store:
        assert not store.paths.approval_queue.exists()  # nothing queued, nothing written
        a, b, c, d, e, f = (enqueue(store, f"u{n}.service") for n in range(6))
        assert shown(store) == pending(store) == [a, b, c, d, e, f]
        store.approvals.reject_approval(a, "alice", "no")  # decide
        assert shown(store) == pending(store)
        store.approvals.decide_approval(b, ApprovalStatus.ACKNOWLEDGED, "seen", by="bob")
        store.approvals.cancel_approval(c, "gone")
        assert shown(store) == pending(store) == [d, e, f]
        action_id = store.ledger.record_intent(
            "inc", RestartUnit(unit="u3.service"), approval_id=d, by="al"
        )
        assert shown(store) == [e, f]  # claimed: no longer pending
        ok = ExecutionResult(ok=True, verified=True)
        store.ledger.record_outcome(action_id, ActionStatus.SUCCEEDED, ok)  # settle
        store.approvals.settle_approval(e, ApprovalStatus.PENDING)  # put back: still shown
        assert shown(store) == pending(store) == [e, f]
        clock.now += 3600  # expire
        assert sorted(store.approvals.expire_approvals()) == [e, f]
        assert shown(store) == pending(store) == []


def test_proposals_queued_inside_an_analysis_transaction_reach_the_view(tmp_path: Path) -> None:
    with Store(tmp_path / "state") as store:
        incidents = IncidentStore(store)
        incident_id, _ = incidents.open_for_findings("u.service", [])
        queued = [Queued(RestartUnit(unit="u.service"), Risk.LOW, "r", ("e",))]
        [item] = incidents.settle_analysis(incident_id, 1, queued, ttl=600)
        assert shown(store) == [item]


def test_the_view_is_written_like_the_other_state_files(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with Store(tmp_path / "state") as store:
            enqueue(store, "a.service")
    finally:
        os.umask(old)
    view = StateDir(tmp_path / "state").approval_queue
    assert view.stat().st_mode & 0o777 == 0o640
    doc = json.loads(view.read_text())
    assert "read-only view" in doc["note"]
    assert [p.name for p in view.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_editing_the_view_does_nothing_and_the_next_change_overwrites_it(
    tmp_path: Path,
) -> None:
    with Store(tmp_path / "state") as store:
        first = enqueue(store, "a.service")
        store.paths.approval_queue.write_text('{"pending": []}')
        assert pending(store) == [first]  # the database is the truth
        second = enqueue(store, "b.service")
        assert shown(store) == [first, second]


def test_a_crash_mid_rewrite_leaves_the_old_view_whole(tmp_path: Path) -> None:
    """A real process killed while the new view is half written: the name still holds
    the previous view, whole and parseable."""
    with Store(tmp_path / "state") as store:
        enqueue(store, "a.service")
        before = store.paths.approval_queue.read_bytes()
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from macha_obs import statedir\n"
        "real_write = os.write\n"
        "def torn(fd, data):\n"
        "    real_write(fd, data[: len(data) // 2])\n"
        "    os._exit(9)  # killed mid-write, before fsync and rename\n"
        "os.write = torn\n"
        "statedir.write_atomic(Path(sys.argv[1]), b'{\"pending\": [' + b'1,' * 1000 + b'2]}')\n"
    )
    view = tmp_path / "state" / "approval_queue.json"
    done = subprocess.run([sys.executable, "-c", code, str(view)], check=False, timeout=60)
    assert done.returncode == 9
    assert view.read_bytes() == before
    assert json.loads(view.read_bytes())["pending"][0]["id"] == 0


def test_a_planted_symlink_at_the_view_is_left_alone(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    state = tmp_path / "state"
    state.mkdir(mode=0o750)
    (state / "approval_queue.json").symlink_to(victim)
    with Store(state) as store:
        enqueue(store, "a.service")  # the change is kept; the view is not written
        assert pending(store) == [0]
    assert victim.read_text() == "precious\n"
    assert (state / "approval_queue.json").is_symlink()


def test_render_matches_the_cli_json_fields(tmp_path: Path) -> None:
    with Store(tmp_path / "state") as store:
        enqueue(store, "a.service")
        [item] = store.approvals.list_approvals()
    [shown_item] = json.loads(queue_view.render([item]))["pending"]
    assert shown_item == item.model_dump(mode="json")


@pytest.mark.parametrize("changes", [1, 20])
def test_the_view_matches_the_table_after_many_changes(tmp_path: Path, changes: int) -> None:
    with Store(tmp_path / "state") as store:
        for n in range(changes):
            enqueue(store, f"u{n}.service")
            if n % 3 == 0:
                store.approvals.reject_approval(n, "x")
        assert shown(store) == pending(store)
