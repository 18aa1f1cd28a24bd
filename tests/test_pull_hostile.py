"""Issue 20.3: a peer cannot sink or stall the pull intake. A real Alertmanager holds this
host's alert; fake peers of our own on loopback (tests/harness/hostile_peer.py) flood,
nest or drip. The memory figures are the process's peak RSS (VmHWM, reset before each
round through /proc/PID/clear_refs), so no peak between two samples is missed.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import requests

from macha_obs.intake.incidents import IncidentStore
from macha_obs.intake.pull import AlertmanagerPuller
from macha_obs.intake.pull_rules import RoundReport
from macha_obs.intake.webhook import HostMatcher
from macha_obs.metrics import LoopStats, scrape_text
from macha_obs.metrics.pull import PullCollector
from macha_obs.server.health import Health
from macha_obs.store import Store
from tests.harness.daemon_support import Daemon
from tests.harness.hostile_peer import MB, HostilePeer
from tests.harness.stack import Alertmanager, poll
from tests.test_pull import PULL_AM, am_alert, fired, post

pytestmark = [pytest.mark.stack]

# The intake's own growth while it refuses a 60 MB answer of any shape (before: 1.66 GB
# for [{},{},…]); the reader reads at most a few hundred kB of each before refusing.
RSS_BOUND = 40 * MB


def peak_rss(pid: int | str = "self") -> int:
    """The process's peak resident set since the last `reset_peak` (bytes)."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert found is not None
    return int(found.group(1)) * 1024


def reset_peak(pid: int | str = "self") -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@pytest.fixture
def am(alertmanager_factory: Callable[[str], Alertmanager]) -> Alertmanager:
    am = alertmanager_factory(PULL_AM)
    post(am, am_alert("Ours", instance="testhost:9100", unit="nginx.service"))
    return am


@pytest.fixture
def peers() -> Iterator[Callable[..., HostilePeer]]:
    started: list[HostilePeer] = []

    def start(mode: str = "good", size: int = 60 * MB) -> HostilePeer:
        peer = HostilePeer(mode, size).__enter__()
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.__exit__()


def puller(store: Store, *urls: str, timeout: float, **kw: object) -> AlertmanagerPuller:
    hosts = HostMatcher("testhost", loopback_is_local=False, require_label=True)
    return AlertmanagerPuller(IncidentStore(store), urls, hosts, timeout=timeout, **kw)  # type: ignore[arg-type]


def in_thread(pull: AlertmanagerPuller) -> tuple[threading.Thread, list[RoundReport]]:
    reports: list[RoundReport] = []
    thread = threading.Thread(target=lambda: reports.append(pull.poll_once()), daemon=True)
    thread.start()
    return thread, reports


@pytest.mark.parametrize("shape", ["flood", "alerts", "deep"])
def test_an_amplifying_answer_is_refused_within_the_memory_bound(
    store: Store, am: Alertmanager, peers: Callable[..., HostilePeer], shape: str
) -> None:
    """60 MB of [{},{},…], of one group's alerts as {} by the million, or of nesting:
    refused as too_large, the process's peak RSS grows by less than RSS_BOUND, and the
    real Alertmanager's alert is taken in the same round."""
    flood = peers(shape)
    pull = puller(store, am.url, flood.url, timeout=60)
    pull.poll_once()  # warm up: imports, connections, the store's pages
    before = psutil.Process().memory_info().rss
    reset_peak()
    report = pull.poll_once()
    grown = peak_rss() - before
    assert grown < RSS_BOUND, f"{shape}: peak RSS grew {grown / MB:.1f} MiB"
    assert report.result == "partial"
    assert pull.stats.snapshot()["polls"][(flood.name, "too_large")] == 2
    assert fired(pull.incidents) == [("Ours", "testhost:9100")]
    problem = pull.stats.problem()
    assert problem is not None
    assert f"{flood.name}: too_large" in problem


def test_a_dripping_peer_delays_no_other_peers_alerts(
    store: Store, am: Alertmanager, peers: Callable[..., HostilePeer]
) -> None:
    """The drip is still going when the real Alertmanager's alert is already stored:
    each answer is taken as it comes in, whatever the others do."""
    drip = peers("drip")
    pull = puller(store, drip.url, am.url, timeout=600)  # no deadline in this test
    thread, reports = in_thread(pull)
    assert poll(lambda: bool(fired(pull.incidents)), 30)
    assert drip.dripping.is_set()
    assert thread.is_alive()
    assert fired(pull.incidents) == [("Ours", "testhost:9100")]
    drip.release.set()  # the drip ends, cut short: that answer counts for nothing
    thread.join(30)
    assert not thread.is_alive()
    assert reports[0].result == "partial"
    assert reports[0].resolved == 0


@pytest.mark.parametrize("mode", ["drip", "drip_headers"])
def test_a_trickle_is_cut_at_the_deadline(
    store: Store,
    am: Alertmanager,
    peers: Callable[..., HostilePeer],
    mode: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A byte every 50 ms never trips a per-read timeout; the whole-answer deadline (1 s)
    ends it, logged and counted as a timeout, and reported in health and metrics."""
    drip = peers(mode)
    pull = puller(store, am.url, drip.url, timeout=1.0)
    thread, reports = in_thread(pull)
    thread.join(60)  # the drip goes on for minutes: only the deadline ends the round
    assert not thread.is_alive()
    assert drip.release.is_set() is False
    assert reports[0].result == "partial"
    assert fired(pull.incidents) == [("Ours", "testhost:9100")]
    assert pull.stats.snapshot()["polls"][(drip.name, "timeout")] == 1
    assert f"alertmanager pull from {drip.name}: timeout" in caplog.text
    text = scrape_text(PullCollector(pull.stats)).decode()
    line = f'macha_alertmanager_pull_peer_failing{{peer="{drip.name}",reason="timeout"}} 1.0'
    assert line in text
    with Store(store.state_dir) as other:
        health = Health(other, lambda: True, LoopStats(), pull_problem=pull.stats.problem)
        assert f"Alertmanager peer {drip.name}: timeout" in health.problems()["alertmanager_pull"]


def test_the_deadline_is_read_from_the_injected_clock(
    store: Store, peers: Callable[..., HostilePeer]
) -> None:
    """The deadline is checked before every read against the clock passed in: a clock
    that jumps past it ends the answer at the next read, although the timer is far."""
    drip = peers("drip")
    now = [0.0]

    def clock() -> float:
        now[0] += 400.0  # every look at the clock: 400 s later
        return now[0]

    pull = puller(store, drip.url, timeout=600, monotonic=clock)
    thread, reports = in_thread(pull)
    thread.join(60)
    assert not thread.is_alive()
    assert reports[0].result == "failed"
    assert pull.stats.snapshot()["polls"][(drip.name, "timeout")] == 1


def test_a_peer_that_answers_well_again_clears_the_problem(
    store: Store, am: Alertmanager, peers: Callable[..., HostilePeer]
) -> None:
    flood = peers("flood")
    pull = puller(store, am.url, flood.url, timeout=30)
    assert pull.poll_once().result == "partial"
    assert pull.stats.problem() is not None
    flood.mode = "good"
    assert pull.poll_once().result == "complete"
    assert pull.stats.problem() is None
    text = scrape_text(PullCollector(pull.stats)).decode()
    assert (
        f'macha_alertmanager_pull_peer_failing{{peer="{flood.name}",reason="too_large"}} 0.0'
        in text
    )


# ---------------------------------------------------------------- the daemon


@pytest.mark.systemd
def test_serve_against_hostile_peers_stays_small_takes_alerts_and_says_why(
    daemons: Callable[..., Daemon], am: Alertmanager, peers: Callable[..., HostilePeer]
) -> None:
    """`macha-obs serve` pulling from a real Alertmanager, a 60 MB flood and a drip: the
    daemon's peak RSS stays bounded, the real peer's alert is stored, and /readyz, the
    health metric and the pull metrics name both peers; it clears when they mend."""
    flood, drip = peers("good"), peers("good")  # benign while the daemon starts
    urls = f"{am.url},{flood.url},{drip.url}"
    daemon = daemons(alertmanager_urls=urls, alertmanager_pull_interval=1,
                     alertmanager_pull_timeout=2)  # fmt: skip
    assert daemon.proc is not None
    pid = daemon.proc.pid

    def stored() -> bool:
        with daemon.store() as store:
            return bool(fired(IncidentStore(store)))

    assert poll(stored, 30), daemon.log_tail()
    before = psutil.Process(pid).memory_info().rss
    reset_peak(pid)
    flood.mode, drip.mode = "flood", "drip"

    def readyz() -> tuple[int, str]:
        reply = requests.get(f"{daemon.url}/readyz", timeout=5)
        return reply.status_code, reply.text

    def both_reported() -> bool:
        status, text = readyz()
        return (
            status == 503 and f"{flood.name}: too_large" in text and f"{drip.name}: timeout" in text
        )

    assert poll(both_reported, 60), readyz()
    grown = peak_rss(pid) - before
    assert grown < RSS_BOUND, f"the daemon's peak RSS grew {grown / MB:.1f} MiB"
    for peer, reason in ((flood, "too_large"), (drip, "timeout")):
        assert (
            daemon.metric("macha_alertmanager_pull_peer_failing", peer=peer.name, reason=reason)
            == 1
        )
        assert (
            daemon.metric("macha_alertmanager_pulls_total", peer=peer.name, result=reason) or 0
        ) >= 1
    assert daemon.metric("macha_health_problem", problem="alertmanager_pull") == 1
    assert f"alertmanager pull from {drip.name}: timeout" in daemon.log_tail(1_000_000)
    flood.mode, drip.mode = "good", "good"
    assert poll(lambda: readyz()[0] == 200, 60), readyz()
    assert daemon.stop() == 0
