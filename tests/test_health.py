"""Health that tells the truth (issue 15, item 3): /readyz, `macha_ready` and the refusal
to start on a lost database, against the real daemon and real files."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry

from macha_obs.lanes import ActionLane
from macha_obs.metrics import LoopStats, PersistentState, SelfCollector
from macha_obs.models import CollectorRun, Snapshot
from macha_obs.server import make_app, shutdown, start_server
from macha_obs.server.health import FAILED_CYCLES, CollectorStreaks, Health, ThreadWatch
from macha_obs.store import Store
from tests.harness.daemon_support import HOST, MACHA_OBS, Daemon
from tests.harness.labsd import LabSystemd
from tests.harness.receiver_support import alert, payload
from tests.harness.stack import free_port, poll


def test_the_store_knows_its_file_by_identity(tmp_path: Path) -> None:
    for word in ("deleted", "replaced", "truncated"):
        state = tmp_path / word
        with Store(state) as store:
            store.meta.set_meta("k", "v")
            assert store.problem() is None
            damage(state / "state.db", word)
            problem = store.problem()
            assert problem is not None
            assert word in problem


def test_a_store_that_cannot_be_written_says_so(tmp_path: Path) -> None:
    """The disk under a running daemon fills up: a 2 MiB tmpfs, in a mount namespace of
    the test's own, filled by another file until ENOSPC."""
    state = tmp_path / "state"
    state.mkdir()
    script = (
        "import subprocess, sys\n"
        "from macha_obs.store import Store\n"
        "subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=2m,mode=0750', 'tmpfs', sys.argv[1]],"
        " check=True)\n"
        "s = Store(sys.argv[1]); s.meta.set_meta('k', 'v')\n"
        "try:\n"
        "    with open(sys.argv[1] + '/filler', 'wb') as fh:\n"
        "        while True:\n            fh.write(b'x' * 65536); fh.flush()\n"
        "except OSError:\n    pass\n"
        "try:\n    s.meta.set_meta('k', 'w' * 200000)\nexcept Exception:\n    pass\n"
        "print(s.problem())\n"
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script,
         str(state)],
        capture_output=True, text=True, check=False, timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "cannot be written" in done.stdout
    assert "full" in done.stdout


def test_health_names_each_problem(tmp_path: Path) -> None:
    stats = LoopStats()
    with Store(tmp_path) as store:
        snapshot = [False]
        health = Health(store, lambda: snapshot[0], stats)
        assert set(health.problems()) == {"no_snapshot"}
        snapshot[0] = True
        assert health.ready() is None
        stats.failing_cycles, stats.last_cycle_error = 2, "OperationalError: disk I/O error"
        assert health.ready() is None  # a blip is not a verdict
        stats.failing_cycles = 3
        assert "the last 3 cycles failed: OperationalError: disk I/O error" in str(health.ready())


def test_a_pull_intake_no_alertmanager_answers_is_a_health_problem(tmp_path: Path) -> None:
    """Pull is how this host hears of its alerts: when no peer answers, health says so."""
    problem: list[str | None] = [None]
    with Store(tmp_path) as store:
        health = Health(store, lambda: True, LoopStats(), pull_problem=lambda: problem[0])
        assert health.ready() is None
        problem[0] = "no Alertmanager answered the last 3 pulls: 127.0.0.1:1: unreachable"
        assert health.problems() == {"alertmanager_pull": problem[0]}


@pytest.mark.systemd
def test_readyz_says_when_no_alertmanager_answers_the_pull(
    daemons: Callable[..., Daemon],
) -> None:
    """The real daemon, pulling from a port nobody listens on: /readyz and
    macha_health_problem{problem="alertmanager_pull"} say so within a few rounds."""
    daemon = daemons(
        autonomy_level="suggest",
        alertmanager_urls=f'["http://127.0.0.1:{free_port()}"]',
        # 3 failed rounds make the problem: 3 s apart, the daemon is ready before that
        alertmanager_pull_interval=3,
    )
    assert poll(lambda: "no Alertmanager answered" in readyz(daemon)[1], timeout=60)
    assert readyz(daemon)[0] == 503
    metrics = requests.get(f"{daemon.url}/metrics", timeout=5).text
    assert 'macha_health_problem{problem="alertmanager_pull"} 1.0' in metrics


def damage(db: Path, how: str) -> None:
    if how == "truncated":
        os.truncate(db, 0)
    elif how == "deleted":
        db.unlink()
    else:
        shutil.copy(db, db.with_suffix(".new"))
        db.with_suffix(".new").replace(db)


def readyz(daemon: Daemon) -> tuple[int, str]:
    resp = requests.get(f"{daemon.url}/readyz", timeout=5)
    return resp.status_code, resp.text


@pytest.mark.systemd
@pytest.mark.parametrize("how", ["truncated", "deleted", "replaced"])
def test_readyz_fails_and_says_why_when_the_database_goes_under_the_daemon(
    daemons: Callable[..., Daemon], how: str
) -> None:
    daemon = daemons(autonomy_level="suggest")
    assert readyz(daemon)[0] == 200
    saved = backup(daemon)
    damage(daemon.state_dir / "state.db", how)
    assert poll(lambda: readyz(daemon)[0] == 503, 30), daemon.log_tail()
    _, body = readyz(daemon)
    assert how in body, body
    assert requests.get(f"{daemon.url}/healthz", timeout=5).status_code == 200  # alive
    assert daemon.metric("macha_ready") == 0.0
    assert daemon.metric("macha_health_problem", problem="store") == 1.0
    # it stays so (issue 21: a truncated file was "ready" 16 s later): through cycles
    # that write and checkpoint (retention, every check_interval = 5 s), and, truncated,
    # until SQLite has written pages back into the file; every answer meanwhile is 503
    seen: set[int] = set()
    cycles = daemon.metric("macha_cycles_total") or 0.0

    def went_on() -> bool:
        seen.add(readyz(daemon)[0])
        grown = how != "truncated" or (daemon.state_dir / "state.db").stat().st_size > 0
        return grown and (daemon.metric("macha_cycles_total") or 0.0) >= cycles + 3

    assert poll(went_on, 60), daemon.log_tail()
    assert seen == {503}
    assert how in readyz(daemon)[1]
    shown = status_of(daemon)  # whatever the file lets `status` read, it says so too
    assert "health:    NOT READY" in shown, shown
    assert f"store: {daemon.state_dir / 'state.db'} was {how}" in shown, shown
    # a person acts: stops it, restores the backup, starts it again: ready
    repair(daemon, saved)
    assert readyz(daemon)[0] == 200


def backup(daemon: Daemon) -> Path:
    """A copy of the live database, as a person's backup would be (SQLite's backup API)."""
    saved = daemon.state_dir.parent / "backup.db"
    with (
        contextlib.closing(sqlite3.connect(daemon.state_dir / "state.db")) as src,
        contextlib.closing(sqlite3.connect(saved)) as dst,
    ):
        src.backup(dst)
    return saved


def repair(daemon: Daemon, saved: Path) -> None:
    """What a person does: stop the daemon, put the backup in place (without the lost
    file's WAL), start it again."""
    daemon.stop()
    db = daemon.state_dir / "state.db"
    for suffix in ("", "-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    shutil.copy(saved, db)
    daemon.start()


@pytest.mark.systemd
def test_the_daemon_refuses_to_start_on_a_lost_database_unless_told_to_start_fresh(
    systemd_container: LabSystemd, daemons: Callable[..., Daemon]
) -> None:
    daemon = daemons(autonomy_level="suggest")
    with daemon.store() as store:
        store.audit.audit_action({"event": "history", "note": "an earlier life"})
    daemon.stop()
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (daemon.state_dir / name).unlink(missing_ok=True)
    refused = subprocess.run(
        [MACHA_OBS, "serve"], env=daemon.env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert "holds no history, but the audit logs hold" in refused.stderr
    assert "--start-fresh" in refused.stderr
    assert "Traceback" not in refused.stderr
    fresh = subprocess.Popen([MACHA_OBS, "serve", "--start-fresh"], env=daemon.env)
    try:
        assert poll(lambda: _up(daemon) and readyz(daemon)[0] == 200, 30)
    finally:
        fresh.terminate()
        fresh.wait(30)
    events = [e["event"] for e in daemon.audit("actions.jsonl")]
    assert "started_fresh" in events
    # once started fresh, the next start needs no flag
    again = daemons("state", autonomy_level="suggest")
    assert readyz(again)[0] == 200


def _up(daemon: Daemon) -> bool:
    try:
        requests.get(f"{daemon.url}/healthz", timeout=1)
    except requests.RequestException:
        return False
    return True


# ---------------------------------------------------------------- issue 21: the truth


def test_a_collector_streak_makes_a_problem_and_one_answer_clears_it() -> None:
    """Pure: N failed cycles in a row of a collector health decides by make the problem;
    a blip does not; the first success clears it; the collectors it does not decide by
    never do (their failures are in macha_scrape_collector_success)."""
    streaks = CollectorStreaks()
    down = _snapshot(systemd=False, journal=False)
    for _ in range(FAILED_CYCLES - 1):
        streaks.note(down)
    assert streaks.problem(FAILED_CYCLES) is None  # a blip is not a verdict
    streaks.note(down)
    assert streaks.problem(FAILED_CYCLES) == (
        f"the systemd collector failed the last {FAILED_CYCLES} cycles: bus gone"
    )
    streaks.note(_snapshot(systemd=True, journal=False))
    assert streaks.problem(FAILED_CYCLES) is None  # the bus back: ready again


def _snapshot(**success: bool) -> Snapshot:
    return Snapshot(
        taken_at=0.0,
        hostname="testhost",
        collectors={
            name: CollectorRun(success=ok, duration_seconds=0.1, error="" if ok else "bus gone")
            for name, ok in success.items()
        },
    )


def test_a_lost_store_stays_lost_when_the_file_grows_back(tmp_path: Path) -> None:
    """The finding: a truncated state.db turned "ready" 16 s later, when SQLite had
    checkpointed pages back into it. Once seen, the loss stays until a restart."""
    with Store(tmp_path) as store:
        store.meta.set_meta("k", "v")
        store.db.compact()  # the tables' pages in the file, as after any checkpoint
        os.truncate(tmp_path / "state.db", 0)
        assert "truncated" in str(store.problem())
        for i in range(50):  # writes into the WAL still succeed...
            store.meta.set_meta(f"k{i}", "v" * 4000)
        store.db.compact()  # ...and a checkpoint writes pages back into the file
        assert (tmp_path / "state.db").stat().st_size > 0
        assert "truncated" in str(store.problem())  # still lost
    # what is on the disk is not the database it was: the pages never rewritten are gone
    assert not _intact(tmp_path / "state.db")


def _intact(db: Path) -> bool:
    try:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            return bool(conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok")
    except sqlite3.DatabaseError:
        return False


def test_a_file_that_is_no_database_is_a_store_problem(tmp_path: Path) -> None:
    """Overwritten in place (same inode, same size): the header says so."""
    with Store(tmp_path) as store:
        store.meta.set_meta("k", "v")
        db = tmp_path / "state.db"
        size = db.stat().st_size
        with db.open("r+b") as fh:
            fh.write(b"\0" * size)
        assert "is not a database any more" in str(store.problem())


def test_a_thread_that_dies_makes_readyz_503_naming_it(tmp_path: Path) -> None:
    """The real action lane, its target's seam (the cycle) raising: the thread dies,
    threading.excepthook (as `serve` installs it) records why, /readyz on a real
    listener says which thread and why, and macha_health_problem{thread_died} is 1."""
    watch = ThreadWatch()
    die = threading.Event()

    def cycle(_trigger: str) -> None:
        if die.is_set():
            raise RuntimeError("a bug outside the cycle's guard")

    lane = ActionLane(cycle, interval=3600.0, bound=60.0, monotonic=time.monotonic)
    previous = threading.excepthook
    threading.excepthook = watch.excepthook
    with Store(tmp_path) as store:
        health = Health(store, lambda: True, LoopStats(), threads=watch)
        registry = CollectorRegistry()
        registry.register(SelfCollector(LoopStats(), _no_state, health.problems))
        server, thread = start_server("127.0.0.1", 0, make_app(registry, health=health.problems))
        url = f"http://127.0.0.1:{server.server_port}"
        try:
            lane.start()
            assert watch.adopt() == ["macha-orchestrator"]
            assert requests.get(f"{url}/readyz", timeout=5).status_code == 200
            die.set()
            lane.wake("event")
            assert poll(lambda: requests.get(f"{url}/readyz", timeout=5).status_code == 503, 10)
            body = requests.get(f"{url}/readyz", timeout=5).text
            assert "the action lane (macha-orchestrator) has died: RuntimeError: a bug" in body
            as_json = requests.get(
                f"{url}/readyz", headers={"Accept": "application/json"}, timeout=5
            ).json()
            assert as_json["ready"] is False
            assert list(as_json["problems"]) == ["thread_died"]
            metrics = requests.get(f"{url}/metrics", timeout=5).text
            assert 'macha_health_problem{problem="thread_died"} 1.0' in metrics
            assert "macha_ready 0.0" in metrics
            watch.stopping.set()  # a daemon stopping ends its threads on purpose
            assert health.problems() == {}
        finally:
            threading.excepthook = previous
            lane.stop(5)
            shutdown(server, thread)


def _no_state() -> PersistentState:
    raise RuntimeError("no ledger in this test")


def status_of(daemon: Daemon) -> str:
    done = subprocess.run(
        [MACHA_OBS, "status"], env=daemon.env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    return done.stdout + done.stderr


@pytest.mark.systemd
def test_a_daemon_blind_to_systemd_is_not_ready_says_why_and_is_ready_when_the_bus_is_back(
    systemd_container: LabSystemd, daemons: Callable[..., Daemon]
) -> None:
    """The finding: with the bus unreachable /readyz said ready and macha_ready was 1.
    The lab's dbus-daemon stopped (SIGSTOP: every call goes unanswered until its
    timeout), the daemon notices within FAILED_CYCLES collection cycles, and /readyz,
    macha_health_problem, `macha-obs status` agree; the bus back, it is ready again."""
    daemon = daemons(autonomy_level="suggest", dbus_timeout=2)
    assert readyz(daemon)[0] == 200
    assert "health:    ready" in status_of(daemon)
    with systemd_container.stalled_bus():
        stalled_at = time.monotonic()
        assert poll(lambda: readyz(daemon)[0] == 503, 60), daemon.log_tail()
        _, body = readyz(daemon)
        assert "the systemd collector failed the last 3 cycles" in body, body
        assert daemon.metric("macha_ready") == 0.0
        assert daemon.metric("macha_health_problem", problem="collector_failing") == 1.0
        shown = status_of(daemon)
        assert "health:    NOT READY" in shown, shown
        assert "collector_failing: the systemd collector failed" in shown, shown
        noticed_after = time.monotonic() - stalled_at  # a figure for the notes, not a bound
    assert poll(lambda: readyz(daemon)[0] == 200, 60), daemon.log_tail()
    assert daemon.metric("macha_health_problem", problem="collector_failing") == 0.0
    assert "health:    ready" in status_of(daemon)
    print(f"noticed {noticed_after:.1f}s after the bus stalled")


@pytest.mark.systemd
def test_symlinks_planted_under_a_running_daemon_kill_no_thread(
    daemons: Callable[..., Daemon],
) -> None:
    """The finding: symlinks planted under the running daemon killed its action lane
    (log.exception raised StateDirError out of the log handler) while /readyz said ready.
    Now the refused log line is lost, never the thread: cycles go on, and failing ones
    are counted and reported; macha_health_problem{thread_died} stays 0 (it was 1, with
    /readyz naming the action lane, before the handler was fixed)."""
    daemon = daemons(autonomy_level="suggest")
    assert "threads that must run, watched: debounce, macha-analysis, macha-collection," in (
        daemon.log_tail(20000)
    )
    elsewhere = daemon.state_dir.parent / "elsewhere"
    elsewhere.write_text("")
    for name in ("decisions.jsonl", "actions.jsonl", "orchestrator.log", "approval_queue.json"):
        planted = daemon.state_dir / name
        if planted.exists():
            planted.rename(planted.with_name(name + ".moved"))
        planted.symlink_to(elsewhere)
    failed = alert(unit="nope.service", instance=f"{HOST}:9100")
    assert daemon.post_alerts(payload(failed)).status_code == 200
    # the first failed cycle's log.exception killed the lane: three mean it lives on
    assert poll(lambda: (daemon.metric("macha_cycle_errors_total") or 0.0) >= 3, 60), (
        daemon.log_tail()
    )
    assert daemon.metric("macha_health_problem", problem="thread_died") == 0.0
    assert "has died" not in readyz(daemon)[1]
    assert elsewhere.read_text() == ""  # and nothing was written through them
