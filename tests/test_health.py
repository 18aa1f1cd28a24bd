"""Health that tells the truth (issue 15, item 3): /readyz, `macha_ready` and the refusal
to start on a lost database, against the real daemon and real files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from macha_obs.metrics import LoopStats
from macha_obs.server.health import Health
from macha_obs.store import Store
from tests.harness.daemon_support import MACHA_OBS, Daemon
from tests.harness.labsd import LabSystemd
from tests.harness.stack import free_port, poll


def test_the_store_knows_its_file_by_identity(tmp_path: Path) -> None:
    for word in ("deleted", "replaced", "truncated"):
        state = tmp_path / word
        with Store(state) as store:
            store.set_meta("k", "v")
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
        "s = Store(sys.argv[1]); s.set_meta('k', 'v')\n"
        "try:\n"
        "    with open(sys.argv[1] + '/filler', 'wb') as fh:\n"
        "        while True:\n            fh.write(b'x' * 65536); fh.flush()\n"
        "except OSError:\n    pass\n"
        "try:\n    s.set_meta('k', 'w' * 200000)\nexcept Exception:\n    pass\n"
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
    damage(daemon.state_dir / "state.db", how)
    assert poll(lambda: readyz(daemon)[0] == 503, 30), daemon.log_tail()
    _, body = readyz(daemon)
    assert how in body, body
    assert requests.get(f"{daemon.url}/healthz", timeout=5).status_code == 200  # alive
    assert daemon.metric("macha_ready") == 0.0
    assert daemon.metric("macha_health_problem", problem="store") == 1.0


@pytest.mark.systemd
def test_the_daemon_refuses_to_start_on_a_lost_database_unless_told_to_start_fresh(
    systemd_container: LabSystemd, daemons: Callable[..., Daemon]
) -> None:
    daemon = daemons(autonomy_level="suggest")
    with daemon.store() as store:
        store.audit_action({"event": "history", "note": "an earlier life"})
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
