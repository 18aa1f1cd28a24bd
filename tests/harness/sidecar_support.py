"""An in-process sidecar on the lab systemd, driven cycle by cycle by a test; a pytest
plugin (tests/conftest.py) for the `lab_config` and `sidecar` fixtures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from macha_obs import config as config_mod
from macha_obs.cli.wiring import Parts, assemble
from macha_obs.config import Config
from macha_obs.intake.incidents import IngestResult
from macha_obs.models import AlertGroup
from macha_obs.store import Store
from tests.harness.labsd import LabSystemd
from tests.harness.receiver_support import alert, payload

UnitFactory = Callable[[str, str], str]
CRASH_ONCE = (
    "[Service]\nExecStartPre=/bin/sh -c 'test -e /run/{name}.ok || "
    "{{ touch /run/{name}.ok; exit 3; }}'\nExecStart=/bin/sleep infinity\n"
)


@pytest.fixture
def lab_config(systemd_container: LabSystemd, tmp_path: Path) -> Callable[..., Config]:
    def make(**overrides: object) -> Config:
        raw: dict[str, object] = {
            "state_dir": str(tmp_path / "state"),
            "systemd_bus_address": systemd_container.bus_address,
            "journal_dir": str(systemd_container.journal_dir),
            "hostname": "testhost",
            "verify_settle": 0.3,
            "verify_timeout": 10,
            "analysis": "runbooks-only",
            "llm_enabled": False,
            "dbus_events": False,
        }
        raw.update(overrides)
        return config_mod.validate(raw)

    return make


@pytest.fixture
def sidecar(lab_config: Callable[..., Config]) -> Iterator[Callable[..., Parts]]:
    """Every room wired as `serve` wires them, driven cycle by cycle by the test."""
    made: list[Parts] = []

    def make(**overrides: object) -> Parts:
        cfg = lab_config(**overrides)
        side = assemble(cfg, Store(cfg.state_dir))
        made.append(side)
        return side

    yield make
    for side in made:
        side.close()
        side.store.close()


def broken(lab: LabSystemd, unit_factory: UnitFactory, name: str) -> str:
    """A service that failed its first start and will start fine when asked again."""
    unit = unit_factory(f"{name}.service", CRASH_ONCE.format(name=name))
    lab.run("rm", "-f", f"/run/{name}.ok", check=False)
    lab.run("systemctl", "start", unit, check=False)
    lab.wait_for_state(unit, "failed")
    return unit


def main_pid(lab: LabSystemd, unit: str) -> str:
    return lab.run("systemctl", "show", "-p", "MainPID", "--value", unit).stdout.strip()


def deliver(
    side: Parts, unit: str, name: str = "MachaUnitFailed", *, firing: bool = True, **labels: str
) -> IngestResult:
    body = alert(name, unit=unit, status="firing" if firing else "resolved", **labels)
    group = AlertGroup.model_validate(payload(body, group_key=f'{{}}:{{unit="{unit}"}}'))
    return side.incidents.ingest(group, group.model_dump_json(by_alias=True), group.alerts)
