"""The fleet's blast radius (macha_obs/remediate/fleet.py) against a real Prometheus: one that has
the sidecars' action counters (backfilled with promtool at known times, and asked at
those times through the clock seam), one that has none, one that is down, one that does
not answer in time and one that answers garbage. The fleet test (test_fleet.py) shows the
same limit holding a real fix on the third host of a running fleet."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

import pytest
import requests

from macha_obs import config as config_mod
from macha_obs.config import ConfigError
from macha_obs.models import JournalVacuum, RestartUnit
from macha_obs.remediate.fleet import (
    FleetLimit,
    FleetQueryError,
    fleet_limit,
    hosts_query,
    parse_hosts,
)
from tests.harness.receiver_support import serve_wsgi
from tests.harness.stack import Prometheus
from tests.harness.stack_fixtures import _require

RESTART = RestartUnit(unit="web.service")
T0 = 1_800_000_000.0  # the backfilled samples' start; queries are made "at" T0 + offsets
AT = T0 + 300  # after every increase below, within a 10-minute window of all of them

# host1 and host2 restarted units, host3 vacuumed its journal, host4 did nothing.
COUNTERS = [
    ("host1", "restart_unit", "verified", (0, 1)),
    ("host2", "restart_unit", "failed", (0, 1)),  # a failed fix acted too
    ("host3", "restart_unit", "verified", (0, 0)),
    ("host3", "journal_vacuum", "verified", (0, 1)),
    ("host4", "restart_unit", "verified", (2, 2)),  # acted before the window only
]


def openmetrics() -> str:
    lines = ["# HELP macha_actions executed actions", "# TYPE macha_actions counter"]
    for host, kind, result, (first, last) in COUNTERS:
        labels = f'instance="{host}",job="macha",kind="{kind}",result="{result}"'
        for n, value in enumerate((first, first, last, last)):
            lines.append(f"macha_actions_total{{{labels}}} {value} {T0 + 60 * n:.0f}")
    return "\n".join([*lines, "# EOF", ""])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """A real Prometheus holding the sidecars' counters, backfilled by promtool."""
    promtool = _require("promtool")
    _require("prometheus")
    workdir = tmp_path_factory.mktemp("fleet-prometheus")
    server = Prometheus(workdir, "global:\n  scrape_interval: 1m\n", [])
    source = workdir / "actions.om"
    source.write_text(openmetrics())
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(workdir / "data")],
        check=True,
        capture_output=True,
    )
    with server:
        yield server


def limit(url: str, max_hosts: int = 2, at: float = AT, **kw: Any) -> FleetLimit:
    kw.setdefault("this_host", {"host9"})
    return FleetLimit(url, max_hosts, 600, session=requests.Session(), clock=lambda: at, **kw)


# ---------------------------------------------------------------- pure


def test_the_query_counts_hosts_per_kind_over_the_window() -> None:
    assert hosts_query("restart_unit", 3600.0) == (
        'count by (instance) (increase(macha_actions_total{kind="restart_unit"}[3600s]) > 0)'
    )
    with pytest.raises(ValueError, match="not an action kind"):
        hosts_query('x"} or vector(1) #', 60)


def test_parse_hosts_reads_a_vector_and_refuses_anything_else() -> None:
    vector = {"resultType": "vector", "result": [{"metric": {"instance": "a"}, "value": [1, "2"]}]}
    assert parse_hosts({"status": "success", "data": vector}) == {"a"}
    unlabelled = {"resultType": "vector", "result": [{"metric": {}, "value": [1, "1"]}]}
    assert parse_hosts({"status": "success", "data": unlabelled}) == {"(no instance label)"}
    for garbage, says in [
        ([], "not an object"),
        ({"status": "error", "error": "bad_data: parse error"}, "parse error"),
        ({"status": "success", "data": {"resultType": "matrix", "result": []}}, "instant vector"),
        ({"status": "success", "data": {"resultType": "vector"}}, "result list"),
        ({"status": "success", "data": {"resultType": "vector", "result": [7]}}, "labels"),
    ]:
        with pytest.raises(FleetQueryError, match=says):
            parse_hosts(garbage)


def test_off_asks_nothing_and_a_limit_needs_a_prometheus(make_config: Any) -> None:
    assert fleet_limit(make_config(), requests.Session()) is None  # fleet_max_hosts 0
    cfg = make_config(fleet_max_hosts=3, fleet_prometheus_url="http://prom:9090/")
    made = fleet_limit(cfg, requests.Session())
    assert made is not None
    assert (made.url, made.max_hosts, made.this_host) == (
        "http://prom:9090",
        3,
        frozenset({"testhost"}),
    )
    with pytest.raises(ConfigError, match="fleet_prometheus_url"):
        config_mod.validate({"fleet_max_hosts": 2})
    with pytest.raises(ConfigError, match="http"):
        config_mod.validate({"fleet_max_hosts": 2, "fleet_prometheus_url": "prom:9090"})


# ---------------------------------------------------------------- a real Prometheus


def test_hosts_that_acted_come_from_the_sidecars_counters(prometheus: Prometheus) -> None:
    fleet = limit(prometheus.url)
    assert fleet.hosts_acted("restart_unit") == {"host1", "host2"}
    assert fleet.hosts_acted("journal_vacuum") == {"host3"}
    assert fleet.hosts_acted("nix_gc") == set()  # no data for the kind
    assert limit(prometheus.url, at=T0 - 3600).hosts_acted("restart_unit") == set()  # before


def test_at_the_limit_the_fix_is_queued_with_the_hosts_named(prometheus: Prometheus) -> None:
    reason = limit(prometheus.url, max_hosts=2).check(RESTART)
    assert reason is not None
    assert "2 other hosts did restart_unit within 10m (host1, host2)" in reason
    assert "fleet_max_hosts is 2" in reason
    # under the limit, another kind, or no data: go ahead
    assert limit(prometheus.url, max_hosts=3).check(RESTART) is None
    assert limit(prometheus.url, max_hosts=2).check(JournalVacuum()) is None
    assert limit(prometheus.url, max_hosts=1, at=T0 - 3600).check(RESTART) is None


def test_this_host_does_not_count_against_itself(prometheus: Prometheus) -> None:
    # host1 acting again widens nothing: one other host acted
    assert limit(prometheus.url, max_hosts=2, this_host={"host1"}).check(RESTART) is None
    assert limit(prometheus.url, max_hosts=1, this_host={"host1"}).check(RESTART) is not None


# ---------------------------------------------------------------- Prometheus cannot answer


def test_prometheus_down_queues() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        reason = limit(url).check(RESTART)
    assert reason is not None
    assert f"blast radius is unknown: Prometheus at {url} is unreachable" in reason
    assert reason.endswith("failing safe")


def test_prometheus_too_slow_queues() -> None:
    released = threading.Event()

    def stalled(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        released.wait(30)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]

    with serve_wsgi(stalled) as url:
        try:
            reason = limit(url, timeout=0.2).check(RESTART)
        finally:
            released.set()
    assert reason is not None
    assert "gave no answer within 0.2s" in reason


@pytest.mark.parametrize(
    ("status", "body", "says"),
    [
        ("200 OK", b"<html>login</html>", "answered HTTP 200, not JSON"),
        ("502 Bad Gateway", b"upstream down", "answered HTTP 502, not JSON"),
        ("200 OK", b'{"status": "success", "data": {"resultType": "scalar"}}', "instant vector"),
        ("200 OK", b'{"status": "success", "data": {"resultType": "vector", "res', "not JSON"),
    ],
)
def test_garbage_queues(status: str, body: bytes, says: str) -> None:
    def answer(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response(status, [("Content-Type", "application/json")])
        return [body]

    with serve_wsgi(answer) as url:
        reason = limit(url).check(RESTART)
    assert reason is not None
    assert says in reason
    assert reason.endswith("failing safe")


def test_a_real_prometheus_at_the_wrong_path_queues(prometheus: Prometheus) -> None:
    reason = limit(f"{prometheus.url}/not-prometheus").check(RESTART)
    assert reason is not None
    assert "answered HTTP 404, not JSON" in reason
