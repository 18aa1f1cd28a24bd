"""Shared fixtures. Real-component fixtures live in plugin modules, one per component."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from macha_obs import config as config_mod
from macha_obs.config import Config
from macha_obs.store import Store

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
