"""The receiver behind the real listener, fed by a real Alertmanager (and Prometheus rules).

Alertmanager runs with `--cluster.listen-address=` (no 10 s hold), group_wait 0s and
group_interval 1s, so a notification arrives within about a second (REAL_STACK.md).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry, Gauge

from macha_obs.agent.analyze import Analyzer
from macha_obs.config import AnalysisMode, Config
from macha_obs.intake.incidents import IncidentStore, IngestResult, analyze_pending
from macha_obs.intake.token import token_path
from macha_obs.intake.webhook import HostMatcher, ReceiverApp
from macha_obs.server import make_app, shutdown, start_server
from macha_obs.store import Store
from tests.harness.daemon_support import Daemon
from tests.harness.eyes_support import PROJECT
from tests.harness.stack import Alertmanager, Prometheus, poll
from tests.test_agent import ScriptedChat, answer
from tests.test_health import backup, damage, readyz, repair

pytestmark = [pytest.mark.stack, pytest.mark.usefixtures("amtool")]
TOKEN = "am-webhook-token"


def am_config(url: str, token_file: Path, group_wait: str = "0s") -> str:
    return f"""
route:
  receiver: macha
  group_by: [alertname]
  group_wait: {group_wait}
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: macha
    webhook_configs:
      - url: {url}/alerts
        send_resolved: true
        http_config:
          authorization:
            type: Bearer
            credentials_file: {token_file}
"""


@dataclass
class Sidecar:
    url: str
    receiver: ReceiverApp
    incidents: IncidentStore
    seen: list[IngestResult]
    registry: CollectorRegistry
    token_file: Path

    def am_config(self, token_file: Path | None = None, group_wait: str = "0s") -> str:
        return am_config(self.url, token_file or self.token_file, group_wait)

    def deliveries(self, result: str) -> int:
        return self.receiver.stats.snapshot()["deliveries"][result]


@pytest.fixture
def sidecar(store: Store, tmp_path: Path) -> Iterator[Sidecar]:
    token_file = tmp_path / "webhook.token"
    token_file.write_text(TOKEN + "\n")
    incidents = IncidentStore(store)
    seen: list[IngestResult] = []
    receiver = ReceiverApp(
        incidents, token=TOKEN, hosts=HostMatcher("testhost"), on_incident=seen.append
    )
    registry = CollectorRegistry()
    server, thread = start_server("127.0.0.1", 0, make_app(registry, alerts_app=receiver))
    try:
        yield Sidecar(
            f"http://127.0.0.1:{server.server_port}",
            receiver,
            incidents,
            seen,
            registry,
            token_file,
        )
    finally:
        shutdown(server, thread)


def amtool(am: Alertmanager, *args: str) -> None:
    subprocess.run(
        ["amtool", f"--alertmanager.url={am.url}", "alert", "add", *args],
        check=True,
        capture_output=True,
        timeout=30,
    )


def rfc3339(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_amtool_alert_becomes_an_incident_and_resolves(
    sidecar: Sidecar, alertmanager_factory: Callable[[str], Alertmanager]
) -> None:
    am = alertmanager_factory(sidecar.am_config())
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    labels = ["alertname=UnitFailed", "unit=nginx.service", "instance=testhost:9100"]
    amtool(am, *labels, f"--start={rfc3339(start)}", "--annotation=summary=nginx failed")
    assert poll(lambda: bool(sidecar.incidents.open_incidents()), 15), am.log_tail()
    [state] = sidecar.incidents.open_incidents()
    assert state.incident.units == ["nginx.service"]
    assert state.incident.alerts[0].annotations["summary"] == "nginx failed"
    assert len(sidecar.seen) == 1
    amtool(am, *labels, f"--start={rfc3339(start)}", f"--end={rfc3339(datetime.now(UTC))}")

    # the resolve arrives and applies; an incident about a unit then waits for systemd to
    # confirm before it closes (the orchestrator's part: tests/test_hardening.py)
    def quiet_ids() -> list[str]:
        return [s.incident.id for s in sidecar.incidents.open_but_quiet()]

    assert poll(lambda: quiet_ids() == [state.incident.id], 15), am.log_tail()
    [quiet] = sidecar.incidents.open_but_quiet()
    assert [a.status for a in quiet.incident.alerts] == ["resolved"]


def test_ha_peers_deliver_the_same_notification_and_it_is_handled_once(
    sidecar: Sidecar, alertmanager_factory: Callable[[str], Alertmanager]
) -> None:
    """Two Alertmanagers given the same alert (as HA peers are) both notify us."""
    peers = [alertmanager_factory(sidecar.am_config()) for _ in range(2)]
    start = rfc3339(datetime.now(UTC) - timedelta(seconds=5))
    for am in peers:
        amtool(am, "alertname=DiskFilling", "mountpoint=/var", f"--start={start}")
    assert poll(lambda: sidecar.deliveries("accepted") + sidecar.deliveries("duplicate") >= 2, 15)
    assert (sidecar.deliveries("accepted"), sidecar.deliveries("duplicate")) == (1, 1)
    [state] = sidecar.incidents.open_incidents()
    assert state.revision == 1
    assert len(sidecar.seen) == 1


@pytest.mark.parametrize("token", ["wrong-token", None])
def test_wrong_or_missing_token_is_refused(
    sidecar: Sidecar,
    alertmanager_factory: Callable[[str], Alertmanager],
    tmp_path: Path,
    token: str | None,
) -> None:
    if token is None:
        config = sidecar.am_config().split("        http_config:")[0]
    else:
        (tmp_path / "wrong").write_text(token)
        config = sidecar.am_config(tmp_path / "wrong")
    am = alertmanager_factory(config)
    amtool(am, "alertname=UnitFailed", "unit=a.service")
    assert poll(lambda: sidecar.deliveries("unauthorized") >= 1, 15), am.log_tail()
    assert sidecar.incidents.open_incidents() == []
    assert sidecar.incidents.inbox_count() == 0
    direct = requests.post(f"{sidecar.url}/alerts", data=b"{}", timeout=5)
    assert direct.status_code == 401


def test_invariant_13_alertmanager_sends_the_generated_token(
    make_config: Callable[..., Config],
    store: Store,
    alertmanager_factory: Callable[[str], Alertmanager],
) -> None:
    """The default: no token configured, so the receiver generates one in the state dir,
    and Alertmanager with `credentials_file` pointing at that file gets through."""
    cfg = make_config()
    assert cfg.webhook_token_file is None
    assert cfg.webhook_auth
    receiver = ReceiverApp.from_config(cfg, store)
    token_file = token_path(cfg.state_dir)
    assert token_file.stat().st_mode & 0o777 == 0o600
    server, thread = start_server(
        "127.0.0.1", 0, make_app(CollectorRegistry(), alerts_app=receiver)
    )
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert requests.post(f"{url}/alerts", data=b"{}", timeout=5).status_code == 401
        am = alertmanager_factory(am_config(url, token_file))
        amtool(am, "alertname=UnitFailed", "unit=nginx.service", "instance=testhost:9100")
        incidents = IncidentStore(store)
        assert poll(lambda: bool(incidents.open_incidents()), 15), am.log_tail()
        # the delivery is counted once its answer is decided, after the commit that
        # made the incident (the store is asked again after the write): wait for it
        assert poll(lambda: receiver.stats.snapshot()["deliveries"]["accepted"] >= 1, 15)
    finally:
        shutdown(server, thread)
    [state] = incidents.open_incidents()
    assert state.incident.units == ["nginx.service"]
    deliveries = receiver.stats.snapshot()["deliveries"]
    assert deliveries["accepted"] == 1
    assert deliveries["unauthorized"] == 1  # the direct POST above, never Alertmanager


def test_the_shipped_alertmanager_config_sends_the_token(
    make_config: Callable[..., Config],
    store: Store,
    alertmanager_factory: Callable[[str], Alertmanager],
) -> None:
    """exporters/alertmanager.yml as shipped, but for the URL, group_wait and the copy of
    the token (what LoadCredential= hands Alertmanager): its auth block gets through."""
    cfg = make_config()
    receiver = ReceiverApp.from_config(cfg, store)
    copy = cfg.state_dir.parent / "alertmanager-credentials" / "macha-webhook-token"
    copy.parent.mkdir()
    copy.write_bytes(token_path(cfg.state_dir).read_bytes())
    shipped = (PROJECT / "exporters" / "alertmanager.yml").read_text()
    credentials = "/run/credentials/prometheus-alertmanager.service/macha-webhook-token"
    assert f"credentials_file: {credentials}\n" in shipped
    server, thread = start_server(
        "127.0.0.1", 0, make_app(CollectorRegistry(), alerts_app=receiver)
    )
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        config = (
            shipped.replace("http://127.0.0.1:9847", url)
            .replace(credentials, str(copy))
            .replace("group_wait: 10s", "group_wait: 0s")
        )
        am = alertmanager_factory(config)
        amtool(am, "alertname=UnitFailed", "unit=nginx.service", "instance=testhost:9100")
        incidents = IncidentStore(store)
        assert poll(lambda: bool(incidents.open_incidents()), 15), am.log_tail()
    finally:
        shutdown(server, thread)
    assert receiver.stats.snapshot()["deliveries"]["unauthorized"] == 0


def test_prometheus_rule_fires_and_resolves_through_alertmanager(
    sidecar: Sidecar,
    alertmanager_factory: Callable[[str], Alertmanager],
    prometheus_factory: Callable[[str, list[Path]], Prometheus],
    tmp_path: Path,
) -> None:
    failed = Gauge(
        "test_unit_failed", "1 when the unit failed", ["unit"], registry=sidecar.registry
    )
    failed.labels(unit="nginx.service").set(0)
    am = alertmanager_factory(sidecar.am_config())
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n- name: t\n  rules:\n  - alert: UnitFailed\n    expr: test_unit_failed == 1\n"
        "    for: 0s\n    labels: {severity: critical}\n"
        "    annotations: {summary: '{{ $labels.unit }} failed'}\n"
    )
    host_port = sidecar.url.removeprefix("http://")
    prom = prometheus_factory(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"alerting:\n  alertmanagers:\n  - static_configs:\n    - targets: ['{am.url[7:]}']\n"
        f"scrape_configs:\n- job_name: macha\n  static_configs:\n  - targets: ['{host_port}']\n",
        [rules],
    )
    prom.wait_targets_up(1)
    prom.wait_alertmanagers()
    failed.labels(unit="nginx.service").set(1)
    assert poll(lambda: bool(sidecar.incidents.open_incidents()), 30), am.log_tail()
    [state] = sidecar.incidents.open_incidents()
    alert = state.incident.alerts[0]
    assert alert.alertname == "UnitFailed"
    assert alert.unit == "nginx.service"
    assert alert.generator_url.startswith("http")
    assert alert.labels["job"] == "macha"
    failed.labels(unit="nginx.service").set(0)
    # resolved through Alertmanager; the incident about a unit waits for systemd's word
    assert poll(lambda: bool(sidecar.incidents.open_but_quiet()), 30), am.log_tail()


def test_storm_of_100_alerts_in_5_groups_is_5_analyses(
    sidecar: Sidecar, alertmanager_factory: Callable[[str], Alertmanager]
) -> None:
    am = alertmanager_factory(sidecar.am_config(group_wait="1s"))
    start = rfc3339(datetime.now(UTC) - timedelta(seconds=5))
    storm = [
        {"labels": {"alertname": f"Storm{g}", "unit": f"app{i}.service"}, "startsAt": start}
        for g in range(5)
        for i in range(20)
    ]
    resp = requests.post(f"{am.url}/api/v2/alerts", data=json.dumps(storm), timeout=10,
                         headers={"Content-Type": "application/json"})  # fmt: skip
    assert resp.status_code == 200
    assert poll(lambda: sidecar.receiver.stats.snapshot()["alerts"]["new"] == 100, 20)
    chat = ScriptedChat(*[answer({"kind": "restart_unit", "unit": "app1.service"})] * 100)
    analyzer = Analyzer(mode=AnalysisMode.LLM_FIRST, client=chat, hostname="testhost")
    assert analyze_pending(sidecar.incidents, analyzer.analyze) == 5
    assert len(chat.sent) <= 5
    assert analyzer.llm_calls == 5
    assert analyze_pending(sidecar.incidents, analyzer.analyze) == 0  # nothing changed since


@pytest.mark.systemd
@pytest.mark.parametrize("how", ["truncated", "deleted", "replaced"])
def test_a_lost_store_acknowledges_nothing_and_alertmanager_delivers_again_after_repair(
    daemons: Callable[..., Daemon],
    alertmanager_factory: Callable[[str], Alertmanager],
    how: str,
) -> None:
    """Issue 21: the webhook answered 200 after state.db was truncated or deleted, and
    those alerts were gone after the restart. Now a real Alertmanager's deliveries get
    503 while the store is lost, /readyz stays 503 until a person repairs the file and
    restarts the daemon, and then every alert sent meanwhile is delivered: none lost."""
    daemon = daemons(autonomy_level="observe")
    db = daemon.state_dir / "state.db"
    saved = backup(daemon)
    damage(db, how)
    assert poll(lambda: readyz(daemon)[0] == 503, 30), daemon.log_tail()
    am = alertmanager_factory(am_config(daemon.url, daemon.token_file))
    names = [f"Lost{i}" for i in range(3)]
    for name in names:  # group_by alertname: three notifications
        amtool(am, f"alertname={name}", "unit=nginx.service", "instance=testhost:9100")

    def refused() -> float:
        return daemon.metric("macha_webhook_deliveries_total", result="store_error") or 0.0

    assert poll(lambda: refused() >= len(names), 30), am.log_tail()
    assert daemon.metric("macha_webhook_deliveries_total", result="accepted") == 0.0
    assert readyz(daemon)[0] == 503  # still: nothing a later write does makes it whole
    failed = sum(
        float(line.rpartition(" ")[2])
        for line in requests.get(f"{am.url}/metrics", timeout=5).text.splitlines()
        if line.startswith("alertmanager_notification_requests_failed_total{")
        and 'integration="webhook"' in line
    )
    assert failed >= len(names)  # Alertmanager saw each request fail: it sends again

    # a person acts: stops the daemon, restores the backup, starts it again
    repair(daemon, saved)
    assert readyz(daemon)[0] == 200

    def delivered() -> set[str]:
        with daemon.store() as store:
            states = IncidentStore(store).open_incidents()
        return {a.labels.get("alertname", "") for s in states for a in s.incident.alerts}

    assert poll(lambda: set(names) <= delivered(), 60), am.log_tail()
