"""Pytest plugin: the real stack binaries (promtool, amtool, Prometheus, Alertmanager).

Missing binaries skip the test with the reason, except under CI (`CI` set and non-empty)
or REQUIRE_REAL_COMPONENTS=1, where they fail: CI installs them, so a skip would hide a gap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

from tests.harness.real import unavailable
from tests.harness.stack import Alertmanager, Prometheus, Server, binary

S = TypeVar("S", bound=Server)


def _missing(kind: str) -> NoReturn:
    unavailable(f"{kind} is not installed (Debian: prometheus, prometheus-alertmanager)")


def _require(kind: str) -> str:
    path = binary(kind)
    if path is None:
        _missing(kind)
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return _require("promtool")


@pytest.fixture(scope="session")
def amtool() -> str:
    return _require("amtool")


@pytest.fixture(scope="session")
def node_exporter() -> str:
    return _require("node_exporter")


def _started(kind: str, make: Callable[..., S]) -> Iterator[Callable[..., S]]:
    """A factory that starts servers made by `make` and stops them all afterwards."""
    _require(kind)
    started: list[S] = []

    def start(*args: Any) -> S:
        server = make(len(started), *args)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[[str, list[Path]], Prometheus]]:
    """make(config_yaml_text, rule_files) → a started Prometheus, stopped after the test."""
    yield from _started(
        "prometheus",
        lambda n, text, rules: Prometheus(tmp_path / f"prometheus-{n}", text, rules),
    )


@pytest.fixture
def alertmanager_factory(tmp_path: Path) -> Iterator[Callable[[str], Alertmanager]]:
    """make(config_yaml_text) → a started Alertmanager, stopped after the test."""
    yield from _started(
        "alertmanager", lambda n, text: Alertmanager(tmp_path / f"alertmanager-{n}", text)
    )
