"""The sidecar's own metrics about a human's pause: samples, promtool's lint, and the
dashboard's "Paused" panel evaluated by a real Prometheus scraping them."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from macha_obs.config import AutonomyLevel
from macha_obs.metrics import LoopStats, PersistentState, SelfCollector, scrape_text
from macha_obs.server import make_app, shutdown, start_server
from tests.harness.stack import Prometheus, poll
from tests.test_dashboards import SIDECAR_DASHBOARD, concrete, load

UNTIL = 1_764_003_600.0
HOST = "testhost"


def state(*, paused: bool = False, until: float | None = None) -> PersistentState:
    level = AutonomyLevel.AUTO_SAFE
    return PersistentState(0, False, level, level, paused=paused, pause_until=until)


def registry(current: Callable[[], PersistentState]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=True)
    reg.register(SelfCollector(LoopStats(), current))
    return reg


@pytest.mark.parametrize(
    ("now", "paused", "until"),
    [
        (state(), 0.0, None),
        (state(paused=True), 1.0, None),
        (state(paused=True, until=UNTIL), 1.0, UNTIL),
        # an end left over from a pause no longer in force is not exported
        (state(paused=False, until=UNTIL), 0.0, None),
    ],
)
def test_pause_gauges(now: PersistentState, paused: float, until: float | None) -> None:
    get = registry(lambda: now).get_sample_value
    assert get("macha_paused") == paused
    assert get("macha_pause_until_timestamp_seconds") == until


def test_existing_callers_need_not_know_about_pauses() -> None:
    old = PersistentState(3, True, AutonomyLevel.AUTO_FULL, AutonomyLevel.SUGGEST)
    assert (old.paused, old.pause_until) == (False, None)
    assert registry(lambda: old).get_sample_value("macha_paused") == 0.0


@pytest.mark.stack
@pytest.mark.parametrize("now", [state(), state(paused=True, until=UNTIL)], ids=["idle", "paused"])
def test_self_metrics_pass_promtool_lint(promtool: str, now: PersistentState) -> None:
    text = scrape_text(registry(lambda: now))
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=60, check=False
    )
    assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()


@pytest.fixture
def served() -> Iterator[tuple[int, list[PersistentState]]]:
    """The self-metrics on a real listener (port 0); the test sets what the store says."""
    current = [state()]
    server, thread = start_server("127.0.0.1", 0, make_app(registry(lambda: current[0])))
    yield server.server_port, current
    shutdown(server, thread)


@pytest.mark.stack
def test_the_paused_panel_on_a_real_prometheus(
    served: tuple[int, list[PersistentState]],
    prometheus_factory: Callable[[str, list[Path]], Prometheus],
) -> None:
    port, current = served
    config = f"""\
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: macha
    static_configs:
      - targets: ["127.0.0.1:{port}"]
        labels:
          instance: {HOST}
"""
    prometheus = prometheus_factory(config, [])
    prometheus.wait_targets_up(1)
    [panel] = [p for p in load(SIDECAR_DASHBOARD)["panels"] if p["title"] == "Paused"]
    exprs = {t["refId"]: concrete(t["expr"], HOST) for t in panel["targets"]}
    assert set(exprs) == {"A", "B"}

    def shows(paused: float, end: float) -> bool:
        values = {ref: prometheus.query(expr) for ref, expr in exprs.items()}
        return all(len(v) == 1 for v in values.values()) and [
            float(values["A"][0]["value"][1]),
            float(values["B"][0]["value"][1]),
        ] == [paused, end]

    # not paused: the end query still has a value (-1, shown as "-")
    assert poll(lambda: shows(0, -1), timeout=30), prometheus.log_tail()
    current[0] = state(paused=True, until=UNTIL)
    assert poll(lambda: shows(1, UNTIL * 1000), timeout=30)  # milliseconds: dateTimeAsIso
    current[0] = state(paused=True)  # the end series goes stale at once: "until resumed"
    assert poll(lambda: shows(1, 0), timeout=30)
    current[0] = state()
    assert poll(lambda: shows(0, -1), timeout=30)
