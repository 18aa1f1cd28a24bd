"""The sidecar in a real stack: Debian's Prometheus scrapes it, the dashboard's queries
return data (the posture row's too: a real exposure run, an accepted baseline, a backup
that ran in the sandbox), and a unit failed in the real systemd sandbox fires
MachaUnitFailed through a real Alertmanager back to the sidecar's POST /alerts."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

import pytest

from macha_obs.collect import CollectionLoop, Collector
from macha_obs.collect.backups import BackupsCollector
from macha_obs.collect.boot import BootCollector
from macha_obs.collect.disks import DisksCollector
from macha_obs.collect.exposure import ExposureCollector, read_host_changes
from macha_obs.collect.intrusion import AuthFailureTap, IntrusionCollector
from macha_obs.collect.journal import JournalCollector
from macha_obs.collect.meta import MemoryMeta
from macha_obs.collect.network import NetworkCollector
from macha_obs.collect.nixos import NixosCollector
from macha_obs.collect.posture import SetidScanner, fetch_posture, save_baseline
from macha_obs.collect.resources import ResourcesCollector
from macha_obs.collect.systemd import SystemdCollector
from macha_obs.intake.token import ensure_token, load_token
from macha_obs.metrics import build_registry
from macha_obs.models import PostureBaseline
from macha_obs.server import make_app, shutdown, start_server
from macha_obs.systemd.bus import IsolatedBus
from tests.harness.exposure_support import lab_runner, start_services
from tests.harness.eyes_support import PROJECT, make_nixos_tree
from tests.harness.labsd import LabSystemd, wait_until
from tests.harness.stack import Alertmanager, Prometheus
from tests.harness.systemd_fixtures import UnitFactory
from tests.test_dashboards import (
    HOST_DASHBOARD,
    assert_every_query_returns_data,
    load,
)

pytestmark = [pytest.mark.stack, pytest.mark.systemd]

HOST = "testhost"


class WebhookSink:
    """Stands in for the receiver at POST /alerts: keeps every payload Alertmanager sends
    with the bearer token, and refuses (401) the rest, as the receiver does."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.payloads: list[dict[str, Any]] = []
        self.refused = 0
        self.arrived = threading.Condition()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        if environ.get("HTTP_AUTHORIZATION") != f"Bearer {self.token}":
            with self.arrived:
                self.refused += 1
            start_response("401 Unauthorized", [("Content-Type", "text/plain")])
            return [b"missing or wrong bearer token\n"]
        with self.arrived:
            self.payloads.append(json.loads(body))
            self.arrived.notify_all()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n"]

    def alerts(self) -> list[dict[str, Any]]:
        with self.arrived:
            return [alert for payload in self.payloads for alert in payload["alerts"]]


def fast_rules(workdir: Path) -> list[Path]:
    """The shipped rules with every `for:` at 0s, so an alert fires on its first evaluation."""
    out = []
    for path in sorted((PROJECT / "alert_rules").glob("*.yml")):
        copy = workdir / path.name
        copy.write_text(re.sub(r"^(\s+)for: \S+$", r"\1for: 0s", path.read_text(), flags=re.M))
        out.append(copy)
    return out


def prometheus_config(sidecar_port: int, alertmanager_port: int) -> str:
    return f"""\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["127.0.0.1:{alertmanager_port}"]
scrape_configs:
  - job_name: macha
    static_configs:
      - targets: ["127.0.0.1:{sidecar_port}"]
        labels:
          instance: {HOST}
"""


def alertmanager_config(sidecar_port: int, token_file: Path) -> str:
    """Alertmanager → the sidecar's webhook, sending the token in `token_file` (for the
    daemon: `Daemon.token_file`, the token it generated in its state dir)."""
    return f"""\
route:
  receiver: macha
  group_by: [alertname, instance, unit]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: macha
    webhook_configs:
      - url: http://127.0.0.1:{sidecar_port}/alerts
        send_resolved: true
        http_config:
          authorization:
            type: Bearer
            credentials_file: {token_file}
"""


@dataclass
class Sidecar:
    port: int
    sink: WebhookSink
    token_file: Path
    network: NetworkCollector
    lab: LabSystemd
    workdir: Path


BACKUP = "restic-backups-stack.service"


def posture_collectors(
    lab: LabSystemd, unit_factory: UnitFactory, bus: IsolatedBus, state: Path, tap: AuthFailureTap
) -> list[Collector]:
    """Exposure (an unhardened service listening beyond loopback), intrusion against a
    baseline accepted now, and a backup that ran once, all in the sandbox."""
    start_services(lab, unit_factory)
    unit_factory(BACKUP, "[Service]\nType=oneshot\nExecStart=/bin/true\n")
    unit_factory(BACKUP.replace(".service", ".timer"), "[Timer]\nOnCalendar=daily\n")
    # the timer keeps the service loaded, so systemd still knows its run (as real jobs')
    lab.run("systemctl", "start", BACKUP.replace(".service", ".timer"))
    lab.run("systemctl", "start", BACKUP)  # a oneshot: returns once it ran
    now = fetch_posture(bus, SetidScanner(()))
    state.mkdir(mode=0o700, exist_ok=True)
    save_baseline(
        state,
        PostureBaseline(
            accepted_at=1.0,
            accepted_by="test",
            listeners=now.listeners,
            enabled_units=now.enabled_units,
            setid_files=[],
        ),
    )
    return [
        ExposureCollector(
            bus=bus,
            address=lab.bus_address,
            runner=lab_runner(lab),
            changes=lambda: read_host_changes(state),
        ),
        IntrusionCollector(tap, state_dir=state, unit_files=bus, setid_dirs=()),
        BackupsCollector(
            MemoryMeta(), patterns=("restic-backups-*.service",), grace=6 * 3600, bus=bus
        ),
    ]


@pytest.fixture
def sidecar(
    systemd_container: LabSystemd, unit_factory: UnitFactory, tmp_path: Path
) -> Iterator[Sidecar]:
    """The sidecar's eyes on the sandbox (its bus and journal) and this host, served on a
    free port with a sink at /alerts."""
    nixos_root = tmp_path / "nixos-root"  # NixOS cannot run here: a NixOS-shaped tree can
    make_nixos_tree(nixos_root)
    network = NetworkCollector(dns_names=["localhost"], timeout=2)
    meta = MemoryMeta()
    tap = AuthFailureTap()
    bus = IsolatedBus(systemd_container.bus_address, timeout=20)
    collectors: list[Collector] = [
        SystemdCollector(address=systemd_container.bus_address, timeout=10),
        ResourcesCollector(),
        DisksCollector(),
        JournalCollector(meta, journal_dir=systemd_container.journal_dir, timeout=20, sinks=(tap,)),
        network,
        BootCollector(meta),
        NixosCollector(root=nixos_root),
        *posture_collectors(systemd_container, unit_factory, bus, tmp_path / "state", tap),
    ]
    loop = CollectionLoop(collectors, hostname=HOST, interval=0.5, state_dir=tmp_path / "state")
    token_file = ensure_token(tmp_path / "state")
    sink = WebhookSink(load_token(token_file))
    app = make_app(build_registry(loop.latest), alerts_app=sink, ready=loop.ready)
    server, thread = start_server("127.0.0.1", 0, app)
    loop.start()
    try:
        assert wait_until(loop.ready, timeout=60)
        yield Sidecar(server.server_port, sink, token_file, network, systemd_container, tmp_path)
    finally:
        loop.stop(timeout=60)
        shutdown(server, thread)
        bus.close()


def test_sidecar_in_a_real_stack(
    sidecar: Sidecar,
    unit_factory: UnitFactory,
    prometheus_factory: Callable[[str, list[Path]], Prometheus],
    alertmanager_factory: Callable[[str], Alertmanager],
) -> None:
    port, sink, lab = sidecar.port, sidecar.sink, sidecar.lab
    # journal errors for the journal panels, from a unit that logs at priority err
    noisy = unit_factory(
        "labsd-stack-noisy.service",
        "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo \"<3>stack test error\"'\n",
    )
    lab.run("systemctl", "start", noisy, check=False)

    alertmanager = alertmanager_factory(alertmanager_config(port, sidecar.token_file))
    sidecar.network.tcp_targets = [f"127.0.0.1:{alertmanager.port}"]
    prometheus = prometheus_factory(
        prometheus_config(port, alertmanager.port), fast_rules(sidecar.workdir)
    )
    prometheus.wait_targets_up(1)
    prometheus.wait_alertmanagers()

    # a unit fails in the sandbox → MachaUnitFailed fires → Alertmanager → POST /alerts
    failing = unit_factory("labsd-stack-false.service", "[Service]\nExecStart=/bin/false\n")
    lab.run("systemctl", "start", failing, check=False)
    lab.wait_for_state(failing, "failed")

    # every panel's query of the host dashboard returns data from this Prometheus (the
    # failed-units table included: one unit has failed by now), and so does its host
    # variable. The sidecar dashboard needs the whole daemon: test_stack_sidecar.py.
    assert_every_query_returns_data(prometheus, load(HOST_DASHBOARD), HOST)

    def delivered() -> list[dict[str, Any]]:
        return [
            a
            for a in sink.alerts()
            if a["labels"].get("alertname") == "MachaUnitFailed"
            and a["labels"].get("unit") == failing
            and a["status"] == "firing"
        ]

    with sink.arrived:  # an RLock: delivered() may take it again
        assert sink.arrived.wait_for(lambda: bool(delivered()), timeout=60), sink.payloads
    assert sink.refused == 0
    alert = delivered()[0]
    assert alert["labels"]["instance"] == HOST
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["summary"] == f"{failing} failed on {HOST}"
    firing = [a for a in prometheus.alerts() if a["labels"].get("unit") == failing]
    assert [a["state"] for a in firing] == ["firing"]
