"""Pytest plugin: the real stack binaries (promtool, amtool, Prometheus, Alertmanager).

Missing binaries skip the test with the reason, except under CI (`CI` set and non-empty)
or MACHA_REQUIRE_REAL=1, where they fail: CI installs them, so a skip would hide a gap.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

from tests.stack import Alertmanager, Prometheus, Server, binary

S = TypeVar("S", bound=Server)


def _real_required() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("MACHA_REQUIRE_REAL") == "1"


def _missing(kind: str) -> NoReturn:
    message = f"{kind} is not installed (Debian: prometheus, prometheus-alertmanager)"
    if _real_required():
        pytest.fail(
            f"{message}\n(CI or MACHA_REQUIRE_REAL=1: this must not be skipped)", pytrace=False
        )
    pytest.skip(message)


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
