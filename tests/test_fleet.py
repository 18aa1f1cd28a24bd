"""A fleet proven at fleet shape on this machine (issue 12, items 5 and 6).

Three hosts, each a network namespace with its own lab systemd, node_exporter and
`macha-obs serve`; one Prometheus scraping all of them; an Alertmanager HA pair clustered
through its real gossip (tests/harness/fleet.py). A unit failed on host 2 is restarted by
host 2's sidecar only, exactly once, whichever peer delivers (push) or is asked (pull),
and with one peer lost; with a fleet-wide limit of two hosts, the third host to need the
same fix queues it for a human instead.

The restart must come from Alertmanager, so the sidecars' own eyes are kept off the
failure: `dbus_events` off (the event path would restart the unit at once, before any
alert) and `collect_interval` at its maximum (the collectors would find the failed unit
on their next cycle and fix it just as well). The alert comes from node_exporter's systemd
collector on each host, as in a fleet that already runs node_exporter. Each sidecar still
exports its own counters (macha_actions_total) live: the blast radius reads them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest

from macha_obs.intake.incidents import IncidentStore
from macha_obs.models import ActionStatus, Approval, ApprovalStatus
from macha_obs.remediate.fleet import hosts_query
from tests.harness.fleet import (
    Fleet,
    Host,
    alertmanager_pull_config,
    alertmanager_push_config,
)
from tests.harness.labsd import unavailable_reason
from tests.harness.real import unavailable
from tests.harness.stack import binary, poll

pytestmark = [pytest.mark.stack, pytest.mark.systemd]

HOSTS_ACTED = hosts_query("restart_unit", 600)
# Long enough for a lost peer's gossip to time out and the other to send on its own.
DELIVERY_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The fleet, shared by every test here: booting it is most of the cost."""
    reason = unavailable_reason()
    if reason is not None:
        unavailable(f"real systemd unavailable: {reason}")
    for kind in ("prometheus", "alertmanager", "node_exporter"):
        if binary(kind) is None:
            unavailable(
                f"{kind} is not installed (Debian: prometheus, prometheus-alertmanager, "
                "prometheus-node-exporter)"
            )
    started = time.monotonic()
    fleet = Fleet(tmp_path_factory.mktemp("fleet")).start()
    print(f"fleet up in {time.monotonic() - started:.1f}s")
    yield fleet
    fleet.close()


def sidecar_settings(fleet: Fleet, **extra: object) -> dict[str, object]:
    """What every host's sidecar runs with (see the module docstring for why)."""
    assert fleet.prometheus is not None
    return {
        "autonomy_level": "auto-safe",
        "dbus_events": "false",
        "collect_interval": "3600",
        "check_interval": "5",
        "fleet_prometheus_url": fleet.prometheus.url,
        "fleet_max_hosts": "2",
        "fleet_window": "600",
        **extra,
    }


def fail_on(fleet: Fleet, target: Host, unit: str) -> None:
    """`unit` on every host: healthy on the others, failed on `target`."""
    for host in fleet.hosts:
        host.install(unit, healthy=host is not target)


def restarts(host: Host, unit: str) -> list[ActionStatus]:
    assert host.sidecar is not None
    return [r.status for r in host.sidecar.actions(unit) if r.action.kind == "restart_unit"]


def restarted(host: Host, unit: str) -> bool:
    return ActionStatus.SUCCEEDED in restarts(host, unit)


def incident_sources(host: Host, unit: str) -> set[str]:
    """Where the incidents behind `host`'s actions on `unit` came from (alert, finding,
    event): an alert-driven fix has only "alert"."""
    assert host.sidecar is not None
    records = host.sidecar.actions(unit)
    with host.sidecar.store() as store:
        states = [IncidentStore(store).get(r.incident_id) for r in records]
    return {s.incident.source for s in states if s is not None}


def alert_gone(fleet: Fleet, unit: str) -> bool:
    """Prometheus no longer has the unit's alert firing (its unit is active again)."""
    return not fleet.query(f'ALERTS{{alertname="MachaUnitFailed",unit="{unit}"}}')


def assert_restarted_once_by(fleet: Fleet, target: Host, unit: str) -> None:
    """Restarted by `target`'s sidecar, once; nobody else acted or was restarted."""
    assert target.sidecar is not None
    done = poll(partial(restarted, target, unit), DELIVERY_TIMEOUT)
    assert done, target.sidecar.log_tail()
    target.lab.wait_for_state(unit, "active")
    assert poll(lambda: alert_gone(fleet, unit), 30)
    assert_once(fleet, target, unit)


def assert_once(fleet: Fleet, target: Host, unit: str) -> None:
    """Called again at the end of a test, when a late duplicate (the second peer's, after
    its peer timeout) would have arrived: still one restart."""
    assert restarts(target, unit) == [ActionStatus.SUCCEEDED]
    assert incident_sources(target, unit) == {"alert"}
    assert target.starts(unit) == 2  # the failed start, and the one restart
    for other in fleet.hosts:
        if other is not target:
            assert other.sidecar is not None
            assert restarts(other, unit) == [], other.name
            assert other.starts(unit) == 1, other.name


def test_push_each_host_gets_its_own_alert_once_from_either_peer(fleet: Fleet) -> None:
    fleet.start_sidecars("push", **sidecar_settings(fleet))
    try:
        fleet.configure_alertmanagers(alertmanager_push_config(fleet.hosts))
        host1, host2, host3 = fleet.hosts

        # both peers up: one of them delivers, the pair's gossip keeps the other quiet
        before = fleet.notifications()
        fail_on(fleet, host2, "fleet-push-a.service")
        assert_restarted_once_by(fleet, host2, "fleet-push-a.service")
        sent = [b - a for a, b in zip(before, fleet.notifications(), strict=True)]
        assert any(sent), sent
        assert host2.sidecar is not None
        assert host2.sidecar.metric("macha_webhook_alerts_total", result="new")
        for other in (host1, host3):
            assert other.sidecar is not None
            assert other.sidecar.metric("macha_webhook_alerts_total", result="new") == 0

        # the peer that delivered is lost (SIGKILL, no goodbye): the other one delivers
        deliverer = fleet.alertmanagers[sent.index(max(sent))]
        survivor = next(am for am in fleet.alertmanagers if am is not deliverer)
        deliverer.crash()
        before = fleet.notifications()
        fail_on(fleet, host2, "fleet-push-b.service")
        assert_restarted_once_by(fleet, host2, "fleet-push-b.service")
        index = fleet.alertmanagers.index(survivor)
        assert fleet.notifications()[index] > before[index]
        assert_once(fleet, host2, "fleet-push-a.service")
    finally:
        fleet.stop_sidecars()
        for am in fleet.alertmanagers:
            fleet.revive(am)


def test_pull_each_host_takes_its_own_alert_from_either_peer(fleet: Fleet) -> None:
    """No receiver per host: every sidecar asks both peers for its own alerts."""
    fleet.configure_alertmanagers(alertmanager_pull_config())
    peers = ",".join(am.url for am in fleet.alertmanagers)
    settings = sidecar_settings(fleet, alertmanager_urls=peers, alertmanager_pull_interval="1")
    fleet.start_sidecars("pull", **settings)
    try:
        host1, host2, host3 = fleet.hosts
        assert host2.sidecar is not None
        fail_on(fleet, host2, "fleet-pull-a.service")
        assert_restarted_once_by(fleet, host2, "fleet-pull-a.service")
        assert host2.sidecar.metric("macha_alertmanager_pull_alerts_total", result="new")
        for other in (host1, host3):
            assert other.sidecar is not None
            assert other.sidecar.metric("macha_alertmanager_pull_alerts_total", result="new") == 0
            assert other.sidecar.metric("macha_webhook_alerts_total", result="new") == 0

        # one peer lost: the one still up is asked and answers
        fleet.alertmanagers[0].crash()
        fail_on(fleet, host2, "fleet-pull-b.service")
        assert_restarted_once_by(fleet, host2, "fleet-pull-b.service")
        assert_once(fleet, host2, "fleet-pull-a.service")
    finally:
        fleet.stop_sidecars()
        for am in fleet.alertmanagers:
            fleet.revive(am)


def test_blast_radius_the_third_host_queues_the_same_fix(fleet: Fleet) -> None:
    """fleet_max_hosts = 2: after two hosts restarted a unit, the third host's restart
    waits for a person, with the fleet's reason, though its own policy would run it."""
    fleet.start_sidecars("blast", **sidecar_settings(fleet))
    try:
        fleet.configure_alertmanagers(alertmanager_push_config(fleet.hosts))
        host1, host2, host3 = fleet.hosts
        unit = "fleet-blast.service"
        for host in (host1, host2):
            host.install(unit, healthy=False)
        for host in (host1, host2):
            assert poll(partial(restarted, host, unit), 60), host.name
        # Prometheus has scraped both hosts' counters: what host3 will be told
        assert poll(lambda: {"host1", "host2"} <= hosts_in(fleet.query(HOSTS_ACTED)), 30)

        host3.install(unit, healthy=False)
        assert host3.sidecar is not None

        def queued() -> list[Approval]:
            assert host3.sidecar is not None
            return [
                a
                for a in host3.sidecar.approvals()
                if a.action.target == unit and a.status is ApprovalStatus.PENDING
            ]

        assert poll(lambda: bool(queued()), 60), host3.sidecar.log_tail()
        [approval] = queued()
        assert "the fleet's blast radius: 2 other hosts did restart_unit" in approval.reason
        assert "(host1, host2)" in approval.reason
        assert restarts(host3, unit) == []
        assert host3.lab.unit_state(unit)[0] == "failed"
        assert host3.starts(unit) == 1  # never restarted
        listed = host3.sidecar.approve("list")
        assert listed.returncode == 0, listed.stderr
        assert unit in listed.stdout
    finally:
        fleet.stop_sidecars()


def hosts_in(result: list[Any]) -> set[str]:
    return {str(sample["metric"].get("instance")) for sample in result}
