"""tests/harness/stack.py and tests/harness/stack_fixtures.py themselves."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.harness import stack_fixtures
from tests.harness.stack import Alertmanager, Prometheus, free_port


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_missing_binary_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("REQUIRE_REAL_COMPONENTS", raising=False)
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="must not be skipped"):
        stack_fixtures._require("promtool")
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="promtool is not installed"):
        stack_fixtures._require("promtool")


@pytest.mark.stack
def test_prometheus_and_alertmanager_start_answer_and_stop(
    prometheus_factory: Callable[[str, list[Path]], Prometheus],
    alertmanager_factory: Callable[[str], Alertmanager],
) -> None:
    am = alertmanager_factory("route:\n  receiver: none\nreceivers:\n  - name: none\n")
    config = f"""\
global:
  scrape_interval: 1s
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["127.0.0.1:{am.port}"]
scrape_configs:
  - job_name: alertmanager  # Alertmanager serves /metrics too
    static_configs:
      - targets: ["127.0.0.1:{am.port}"]
"""
    server = prometheus_factory(config, [])
    server.wait_targets_up(1)
    server.wait_alertmanagers()
    assert server.query('up{job="alertmanager"}')[0]["value"][1] == "1"
    pid = server.pid
    assert pid is not None
    server.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
