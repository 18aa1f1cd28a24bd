"""The pull intake against real Alertmanager processes (API v2), and peers that misbehave.

Alerts are posted into Alertmanager through its own API v2 (`POST /api/v2/alerts`), the
way Prometheus sends them. Peers that answer garbage, stall or are down are small HTTP
servers on loopback (the network boundary): a real Alertmanager does none of that on cue.
"""

from __future__ import annotations

import json
import threading
import tomllib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from macha_obs.config import Config
from macha_obs.intake.incidents import IncidentStore, analyze_pending
from macha_obs.intake.pull import AlertmanagerPuller, PullThread, host_filter
from macha_obs.intake.webhook import HostMatcher
from macha_obs.metrics import LoopStats, scrape_text
from macha_obs.metrics.pull import PullCollector
from macha_obs.server.health import Health
from macha_obs.store import Store
from tests.harness.daemon_support import Daemon
from tests.harness.nix_support import run_tool
from tests.harness.receiver_support import serve_wsgi
from tests.harness.stack import Alertmanager, free_port, poll
from tests.test_receiver_stack import Sidecar, sidecar  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.stack]

# Pull mode: one shared Alertmanager, no receiver per host (a null receiver).
PULL_AM = """
route:
  receiver: nobody
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: nobody
"""


def post(am: Alertmanager, *alerts: dict[str, Any]) -> None:
    """Alerts into Alertmanager as Prometheus sends them."""
    reply = requests.post(f"{am.url}/api/v2/alerts", json=list(alerts), timeout=10)
    assert reply.status_code == 200, reply.text


def am_alert(name: str = "UnitFailed", **labels: str) -> dict[str, Any]:
    return {"labels": {"alertname": name, **labels}, "annotations": {"summary": name}}


def listed(am: Alertmanager, **match: str) -> list[dict[str, Any]]:
    """The alerts Alertmanager lists as not yet ended (what a poll can see)."""
    alerts = requests.get(f"{am.url}/api/v2/alerts", timeout=10).json()
    return [a for a in alerts if all(a["labels"].get(k) == v for k, v in match.items())]


def puller(
    store: Store, *urls: str, timeout: float = 5.0, aliases: tuple[str, ...] = ()
) -> AlertmanagerPuller:
    hosts = HostMatcher("testhost", aliases, loopback_is_local=False, require_label=True)
    return AlertmanagerPuller(IncidentStore(store), urls, hosts, timeout=timeout)


def fired(incidents: IncidentStore) -> list[tuple[str, str]]:
    return sorted(
        (a.alertname, a.labels.get("instance", ""))
        for s in incidents.open_incidents()
        for a in s.incident.alerts
        if a.firing
    )


@pytest.fixture
def am_pair(alertmanager_factory: Callable[[str], Alertmanager]) -> list[Alertmanager]:
    """Two Alertmanagers Prometheus sends the same alerts to (an HA pair's intake)."""
    return [alertmanager_factory(PULL_AM), alertmanager_factory(PULL_AM)]


# ---------------------------------------------------------------- a real Alertmanager


def test_alert_pulled_from_two_peers_is_stored_and_analysed_once(
    store: Store, am_pair: list[Alertmanager]
) -> None:
    alert = am_alert(instance="testhost:9100", unit="nginx.service")
    for am in am_pair:
        post(am, alert)
    pull = puller(store, *(am.url for am in am_pair))
    report = pull.poll_once()
    assert report.result == "complete"
    assert [r.new_alerts for r in report.taken] == [1]
    incidents = pull.incidents
    assert fired(incidents) == [("UnitFailed", "testhost:9100")]
    [state] = incidents.open_incidents()
    assert state.incident.units == ["nginx.service"]
    assert state.incident.group_key == 'pull/nobody:{alertname="UnitFailed"}'
    # every later round sees it again on both peers: no new state, no new revision
    assert pull.poll_once().taken == []  # stored by an earlier round: not ingested again
    assert incidents.get(state.incident.id).revision == state.revision  # type: ignore[union-attr]
    assert analyze_pending(incidents, lambda _incident: None) == 1
    assert pull.poll_once().taken == []
    assert analyze_pending(incidents, lambda _incident: None) == 0
    # a puller that starts afresh (the daemon restarted) knows it from the store, from
    # whichever peer answers first (each stamped its own startsAt): not taken again
    restarted = puller(store, *(am.url for am in am_pair))
    assert restarted.poll_once().taken == []
    assert restarted.poll_once().taken == []
    assert analyze_pending(incidents, lambda _incident: None) == 0
    assert incidents.inbox_count() == 1
    snap = pull.stats.snapshot()
    assert snap["alerts"]["new"] == 1
    peer = am_pair[0].url.removeprefix("http://")
    assert snap["polls"][(peer, "ok")] == 3


def test_only_this_hosts_alerts_are_taken(store: Store, am_pair: list[Alertmanager]) -> None:
    am = am_pair[0]
    ours = [
        am_alert("Ours", instance="testhost:9100"),
        am_alert("OursFqdn", instance="TestHost.example.com:9100"),  # a declared alias
        am_alert("OursBare", instance="testhost"),
        am_alert("OursDot", instance="TESTHOST.:9100"),
    ]
    others = [
        am_alert("Undeclared", instance="testhost.example.org:9100"),  # the whole name
        am_alert("Evil", instance="testhost.evil.example:9100"),
        am_alert("Other", instance="otherhost:9100"),
        am_alert("Prefix", instance="testhost2:9100"),
        am_alert("Suffix", instance="mytesthost:9100"),
        am_alert("Loopback", instance="localhost:9100"),  # a shared AM: nobody's
        am_alert("NoHost", unit="nginx.service"),  # no host label: nobody's
        am_alert("HostOnly", host="testhost"),  # instance is the filter label
        am_alert("Human", instance="testhost:9100", audience="human"),
    ]
    post(am, *ours, *others)
    report = puller(store, am.url, aliases=("testhost.example.com",)).poll_once()
    assert report.result == "complete"
    assert fired(IncidentStore(store)) == [
        ("Ours", "testhost:9100"),
        ("OursBare", "testhost"),
        ("OursDot", "TESTHOST.:9100"),
        ("OursFqdn", "TestHost.example.com:9100"),
    ]
    assert len(listed(am)) == len(ours) + len(others)  # Alertmanager holds them all


def test_an_alert_gone_from_every_peer_resolves(store: Store, am_pair: list[Alertmanager]) -> None:
    now = datetime.now(UTC)
    alert = am_alert("DiskFull", instance="testhost:9100", mountpoint="/srv")
    for am in am_pair:
        post(am, alert)
    pull = puller(store, *(am.url for am in am_pair))
    pull.poll_once()
    [state] = pull.incidents.open_incidents()
    # resolved on one peer only: the other still lists it, nothing resolves
    post(am_pair[0], {**alert, "endsAt": now.isoformat()})
    assert poll(lambda: not listed(am_pair[0], alertname="DiskFull"), 10)
    report = pull.poll_once()
    assert report.resolved == 0
    assert pull.incidents.is_open(state.incident.id)
    # resolved on both, while the daemon restarted: the alert resolves (what the pull
    # took is read from the store), and this incident (no unit) closes
    post(am_pair[1], {**alert, "endsAt": now.isoformat()})
    assert poll(lambda: not listed(am_pair[1], alertname="DiskFull"), 10)
    restarted = puller(store, *(am.url for am in am_pair))
    report = restarted.poll_once()
    assert report.resolved == 1
    assert not pull.incidents.is_open(state.incident.id)
    assert restarted.stats.snapshot()["alerts"]["resolved"] == 1
    assert pull.poll_once().resolved == 0  # resolved once
    # it fires again later (a new startsAt): a new incident, analysed again
    post(am_pair[0], am_alert("DiskFull", instance="testhost:9100", mountpoint="/srv"))
    assert [r.new_alerts for r in pull.poll_once().taken] == [1]
    assert len(pull.incidents.pending_analysis()) == 1


def test_a_silenced_alert_is_not_taken_and_not_resolved(
    store: Store, am_pair: list[Alertmanager]
) -> None:
    am = am_pair[0]
    post(am, am_alert("Noisy", instance="testhost:9100"))
    pull = puller(store, am.url)
    pull.poll_once()
    [state] = pull.incidents.open_incidents()
    now = datetime.now(UTC)
    silence = {
        "matchers": [{"name": "alertname", "value": "Noisy", "isRegex": False}],
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(hours=1)).isoformat(),
        "createdBy": "test",
        "comment": "maintenance",
    }
    reply = requests.post(f"{am.url}/api/v2/silences", json=silence, timeout=10)
    assert reply.status_code == 200, reply.text
    post(am, am_alert("Quiet", instance="testhost:9100"))
    silence["matchers"] = [{"name": "alertname", "value": "Quiet", "isRegex": False}]
    requests.post(f"{am.url}/api/v2/silences", json=silence, timeout=10).raise_for_status()
    report = pull.poll_once()
    assert report.resolved == 0
    assert pull.incidents.is_open(state.incident.id)  # silenced, not resolved
    assert fired(pull.incidents) == [("Noisy", "testhost:9100")]  # Quiet never taken


def test_pulled_and_pushed_is_one_alert_state(
    sidecar: Sidecar,  # noqa: F811
    store: Store,
    alertmanager_factory: Callable[[str], Alertmanager],
) -> None:
    """Webhook and pull from the same Alertmanager: whichever comes first, one state."""
    # group_wait: a new group's first webhook comes 4 s after its first alert, so the
    # second alert below is pulled before it is pushed
    am = alertmanager_factory(sidecar.am_config(group_wait="4s"))
    # no startsAt: Alertmanager stamps it in nanoseconds; the webhook carries them, the
    # API v2 milliseconds. Both must give one dedupe key.
    post(am, am_alert("Pushed", instance="testhost:9100", unit="cron.service"))
    assert poll(lambda: bool(sidecar.incidents.open_incidents()), 15), am.log_tail()
    [state] = sidecar.incidents.open_incidents()
    pull = puller(store, am.url)
    report = pull.poll_once()
    assert [(r.new_alerts, r.duplicates) for r in report.taken] == [(0, 1)]
    assert [s.incident.id for s in sidecar.incidents.open_incidents()] == [state.incident.id]
    # the other way round: pulled before Alertmanager's webhook (group_wait) delivers it
    post(am, am_alert("Pulled", instance="testhost:9100", unit="atd.service"))
    assert [r.new_alerts for r in pull.poll_once().taken if r.new_alerts] == [1]
    assert poll(lambda: sidecar.deliveries("duplicate") >= 1, 15), am.log_tail()
    assert len(sidecar.incidents.open_incidents()) == 2
    assert analyze_pending(sidecar.incidents, lambda _incident: None) == 2
    assert len(sidecar.seen) == 1  # the webhook opened only the first


# ---------------------------------------------------------------- peers that misbehave


class Peer:
    """A loopback HTTP peer whose answer the test sets: garbage, an error, a stall."""

    def __init__(self) -> None:
        self.status = "200 OK"
        self.body = b"[]"
        self.stall = threading.Event()
        self.stalling = False

    def __call__(self, environ: dict[str, Any], start: Any) -> list[bytes]:
        if self.stalling:
            self.stall.wait(30)  # released at teardown
        start(self.status, [("Content-Type", "application/json")])
        return [self.body]


@pytest.fixture
def bad_peer() -> Iterator[tuple[Peer, str]]:
    peer = Peer()
    with serve_wsgi(peer) as url:
        yield peer, url
    peer.stall.set()


@pytest.mark.parametrize(
    "case",
    [
        ("200 OK", b"<html>not json", "invalid"),
        ("200 OK", b'{"alerts": []}', "invalid"),
        ("200 OK", b"[1, 2]", "invalid"),
        ("500 Internal Server Error", b"[]", "http_error"),
        ("stall", b"[]", "timeout"),
        ("down", b"[]", "unreachable"),
    ],
)
def test_a_bad_peer_loses_nothing_and_resolves_nothing(
    store: Store,
    am_pair: list[Alertmanager],
    bad_peer: tuple[Peer, str],
    case: tuple[str, bytes, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    status, body, result = case
    peer, peer_url = bad_peer
    am = am_pair[0]
    alert = am_alert("UnitFailed", instance="testhost:9100", unit="nginx.service")
    post(am, alert)
    url = f"http://127.0.0.1:{free_port()}" if status == "down" else peer_url
    pull = puller(store, am.url, url, timeout=1.0)
    first = pull.poll_once()  # the good peer answers, the good answer is taken
    assert first.result == ("partial" if status == "down" else "complete")
    assert [r.new_alerts for r in first.taken] == [1]
    peer.status, peer.body = status, body
    peer.stalling = status == "stall"
    post(am, {**alert, "endsAt": datetime.now(UTC).isoformat()})
    assert poll(lambda: not listed(am, alertname="UnitFailed"), 10)
    report = pull.poll_once()
    assert report.result == "partial"
    assert report.resolved == 0  # the bad peer might still hold it: not resolved
    assert fired(pull.incidents) == [("UnitFailed", "testhost:9100")]
    name = url.removeprefix("http://")
    assert pull.stats.snapshot()["polls"][(name, result)] == (2 if status == "down" else 1)
    assert f"alertmanager pull from {name}: {result}" in caplog.text
    text = scrape_text(PullCollector(pull.stats)).decode()
    assert f'macha_alertmanager_pulls_total{{peer="{name}",result="{result}"}} ' in text
    assert f'macha_alertmanager_pull_up{{peer="{name}"}} 0.0' in text


def test_no_peer_answering_is_a_health_problem(store: Store) -> None:
    pull = puller(store, f"http://127.0.0.1:{free_port()}", timeout=1.0)
    for _ in range(3):
        assert pull.poll_once().result == "failed"
    problem = pull.stats.problem()
    assert problem is not None
    assert "no Alertmanager answered the last 3 pulls" in problem


class BrokenIncidents(IncidentStore):
    """A store that cannot commit (the disk is full)."""

    def ingest(self, *_args: Any, **_kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")


def test_a_store_error_takes_the_alerts_again_next_round(
    store: Store, am_pair: list[Alertmanager]
) -> None:
    am = am_pair[0]
    post(am, am_alert("UnitFailed", instance="testhost:9100", unit="nginx.service"))
    pull = puller(store, am.url)
    working = pull.incidents
    pull.incidents = BrokenIncidents(store)
    assert pull.poll_once().result == "store_error"
    assert not working.open_incidents()
    pull.incidents = working
    assert [r.new_alerts for r in pull.poll_once().taken] == [1]


# ---------------------------------------------------------------- wiring


def test_filter_is_a_matcher_alertmanager_accepts(am_pair: list[Alertmanager]) -> None:
    am = am_pair[0]
    instances = ["web-1.example.com:9100", "web-10:9100", "web-1.evil.example:9100"]
    instances += ["WEB-1.:9100", "web-1", "[fe80::1]:9100", "db.example.org"]
    post(am, *(am_alert(instance=i) for i in instances))
    matcher = host_filter("instance", ["web-1", 'we"ird\\name', "fe80::1", "db.example.org"])
    reply = requests.get(f"{am.url}/api/v2/alerts", params={"filter": matcher}, timeout=10)
    assert reply.status_code == 200, reply.text
    assert sorted(a["labels"]["instance"] for a in reply.json()) == [
        "WEB-1.:9100",
        "[fe80::1]:9100",
        "db.example.org",
        "web-1",
    ]


def test_serve_config_starts_and_stops_the_pull_thread(
    store: Store, am_pair: list[Alertmanager]
) -> None:
    am = am_pair[0]
    post(am, am_alert(instance="testhost:9100"))
    cfg = Config(
        state_dir=store.state_dir,
        hostname="testhost",
        alertmanager_urls=(am.url,),
        alertmanager_pull_interval=1,
    )
    thread = PullThread(AlertmanagerPuller.from_config(cfg, store), cfg.alertmanager_pull_interval)
    thread.start()
    try:
        assert poll(lambda: bool(IncidentStore(store).open_incidents()), 15)
    finally:
        assert thread.stop(timeout=10)


def test_answer_shape_is_as_expected(am_pair: list[Alertmanager]) -> None:
    """What the intake reads from Alertmanager's API v2 is there (a canary for upgrades)."""
    am = am_pair[0]
    post(am, am_alert(instance="testhost:9100"))
    [group] = requests.get(f"{am.url}/api/v2/alerts/groups", timeout=10).json()
    assert group["receiver"]["name"] == "nobody"
    [alert] = group["alerts"]
    assert {"labels", "annotations", "startsAt", "endsAt", "fingerprint", "status"} <= set(alert)
    assert alert["status"]["state"] == "active"
    json.dumps(group)


def test_serve_pulls_exports_and_stops_on_sigterm(
    daemons: Callable[..., Daemon], am_pair: list[Alertmanager]
) -> None:
    """`macha-obs serve` with alertmanager_urls: its own thread pulls, /metrics says so,
    SIGTERM stops it with the rest."""
    up, down = am_pair[0], f"http://127.0.0.1:{free_port()}"
    post(up, am_alert("Pulled", instance="testhost:9100", unit="nothere.service"))
    daemon = daemons(alertmanager_urls=f"{up.url},{down}", alertmanager_pull_interval=1)

    def stored() -> bool:
        with daemon.store() as store:
            return bool(fired(IncidentStore(store)))

    assert poll(stored, 20), daemon.log_tail()
    peer, gone = up.url.removeprefix("http://"), down.removeprefix("http://")
    assert (daemon.metric("macha_alertmanager_pulls_total", peer=peer, result="ok") or 0) >= 1
    assert daemon.metric("macha_alertmanager_pull_up", peer=gone) == 0
    assert "alertmanager pull from " + gone in daemon.log_tail(100_000)
    assert daemon.stop() == 0


# ---------------------------------------------------------------- the shipped example

PULL_EXAMPLE = Path(__file__).resolve().parents[1] / "exporters" / "alertmanager-fleet-pull.yml"


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=MachaUnitFailed", "instance=host1", "unit=nginx.service"], "sidecars"),
        (["alertname=MachaDown", "instance=host1", "audience=human"], "oncall"),
        (["alertname=SomethingElse"], "oncall"),
    ],
)
def test_the_pull_example_pages_people_only_for_people(
    amtool: str, labels: list[str], receiver: str
) -> None:
    """exporters/alertmanager-fleet-pull.yml: a host's faults reach no one (its sidecar
    pulls them), the sidecars' health and alerts of no host reach people."""
    path = f"--config.file={PULL_EXAMPLE}"
    run_tool(amtool, "check-config", str(PULL_EXAMPLE))
    run_tool(amtool, "config", "routes", "test", path, f"--verify.receivers={receiver}", *labels)


def test_the_pull_examples_settings_are_valid() -> None:
    """The config.toml lines in the example's comment are settings the sidecar takes."""
    lines = PULL_EXAMPLE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "alertmanager_urls =" in line)
    toml = "\n".join(line.removeprefix("#").strip() for line in lines[start : start + 3])
    cfg = Config.model_validate({"hostname": "host1", **tomllib.loads(toml)})
    assert len(cfg.alertmanager_urls) == 2
    assert cfg.alertmanager_pull_interval == 15


# ---------------------------------------------------------------- a store it cannot keep


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_while_the_store_is_unusable_the_pull_takes_nothing_and_says_so(
    store: Store, am_pair: list[Alertmanager], damage: str
) -> None:
    """Issue 21: the pull must not take what it cannot keep. With state.db gone under it,
    it asks no peer and stores nothing; health says why; a store that works takes it."""
    am = am_pair[0]
    post(am, am_alert("UnitFailed", instance="testhost:9100", unit="nginx.service"))
    pull = puller(store, am.url)
    db = store.state_dir / "state.db"
    if damage == "deleted":
        db.unlink()
    else:
        db.write_bytes(b"")
    report = pull.poll_once()
    assert report.result == "store_error"
    assert report.taken == []
    assert not pull.incidents.open_incidents()
    assert pull.stats.snapshot()["polls"][(am.url.removeprefix("http://"), "ok")] == 0
    problem = pull.stats.problem()
    assert problem is not None
    assert f"the store is unusable, the pull takes nothing: {db} was" in problem
    health = Health(store, lambda: True, LoopStats(), pull_problem=pull.stats.problem)
    assert set(health.problems()) == {"store", "alertmanager_pull"}
    assert listed(am, alertname="UnitFailed")  # Alertmanager still holds it
    store.close()
    with Store(store.state_dir) as fresh:  # a person restored the state: taken then
        again = puller(fresh, am.url)
        assert [r.new_alerts for r in again.poll_once().taken] == [1]
        assert again.stats.problem() is None


def test_a_store_that_breaks_mid_round_keeps_nothing_more(
    store: Store, am_pair: list[Alertmanager]
) -> None:
    """The store is checked before every group it would commit, not only once a round."""
    for am in am_pair:
        post(am, am_alert("UnitFailed", instance="testhost:9100", unit="nginx.service"))
    looks = iter([None])  # usable when the round starts, then not

    def problem() -> str | None:
        return next(looks, "state.db was deleted while the daemon ran")

    hosts = HostMatcher("testhost", loopback_is_local=False, require_label=True)
    pull = AlertmanagerPuller(
        IncidentStore(store), [am.url for am in am_pair], hosts, store_problem=problem
    )
    assert pull.poll_once().result == "store_error"
    assert not pull.incidents.open_incidents()
    assert "the store is unusable" in str(pull.stats.problem())
