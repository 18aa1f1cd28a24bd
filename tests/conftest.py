"""Shared fixtures. Real-component fixtures live in plugin modules, one per component."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from macha_obs import config as config_mod
from macha_obs.config import Config
from macha_obs.store import Store
from tests.harness import nix_support

pytest_plugins = [
    "tests.harness.systemd_fixtures",
    "tests.harness.stack_fixtures",
    "tests.harness.llm_fixtures",
    "tests.harness.daemon_support",
    "tests.harness.sidecar_support",
]


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """A validated Config with a private state dir; keyword arguments override fields."""

    def make(**overrides: Any) -> Config:
        raw: dict[str, Any] = {"state_dir": str(tmp_path / "state"), "hostname": "testhost"}
        raw.update(overrides)
        return config_mod.validate(raw)

    return make


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "state") as s:
        yield s


# ------------------------------------------------------------------ the NixOS tests' lib


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """The tests the stand-in evaluator cannot run fold into one SKIPPED line (a skip in a
    fixture is otherwise reported at each test's own line)."""
    report = yield
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and nix_support.STAND_IN_SKIP in longrepr[2]:
        where = inspect.getsourcelines(nix_support.need_real_lib)[1]
        report.longrepr = (nix_support.__file__, where, longrepr[2])
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    line = nix_support.stand_in_summary()
    if line is not None:
        terminalreporter.write_line(line, yellow=True, bold=True)
