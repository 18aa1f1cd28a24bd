"""Pytest plugin: a real systemd in a throw-away container, for tests marked `systemd`.

Load it from tests/conftest.py with `pytest_plugins = ["tests.harness.systemd_fixtures"]`.
Where this machine cannot boot the container, the tests skip and say why, except under
CI (`CI` set and non-empty) or REQUIRE_REAL_COMPONENTS=1, where they fail: CI has root and every
package, so a skip there would only hide a broken harness.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import pytest
from pystemd.dbusexc import DBusBaseError
from pystemd.systemd1 import Manager

from tests.harness.labsd import LabBootError, LabSystemd, unavailable_reason
from tests.harness.real import unavailable

# unit_factory(name, text): writes /etc/systemd/system/NAME in the container, reloads,
# returns NAME.
UnitFactory = Callable[[str, str], str]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "systemd: needs a real systemd (PID 1) in a throw-away container"
    )


def _cannot_run(reason: str) -> NoReturn:
    unavailable(f"real systemd unavailable: {reason}")


@pytest.fixture(scope="session")
def systemd_available() -> None:
    """Skip (fail under CI) unless this machine can boot a LabSystemd; boots nothing itself."""
    reason = unavailable_reason()
    if reason is not None:
        _cannot_run(reason)


@pytest.fixture(scope="session")
def systemd_container(
    systemd_available: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabSystemd]:
    """One container for the whole session (about 0.3 s to boot); fails the session if it leaks."""
    lab = LabSystemd(workdir=tmp_path_factory.mktemp("labsd"))
    try:
        lab.start()
    except LabBootError as error:  # start() has already cleaned up after itself
        _cannot_run(f"boot failed: {error}")
    yield lab
    leftovers = lab.stop()
    assert not leftovers, f"the systemd container left traces on the host: {leftovers}"


@pytest.fixture
def system_bus(systemd_container: LabSystemd, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point every default system-bus connection (pystemd's DBus()) at the container."""
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", systemd_container.bus_address)
    return systemd_container.bus_address


@pytest.fixture
def unit_factory(systemd_container: LabSystemd) -> Iterator[UnitFactory]:
    """Write unit files the test names; afterwards stop, reset-fail and remove them, and reload."""
    lab = systemd_container
    written: list[str] = []

    def write(name: str, text: str) -> str:
        lab.write_unit(name, text)
        if name not in written:
            written.append(name)
        return name

    yield write
    if not written:
        return
    with lab.dbus() as bus:
        manager = Manager(bus=bus, _autoload=True).Manager
        for name in written:
            for unit in _loaded_units(manager, name):
                _retire(lab, manager, unit)
            lab.remove_unit(name, reload=False)
        manager.Reload()


def _loaded_units(manager: Any, name: str) -> list[str]:
    """The units a unit file stands for: itself, or every loaded instance of a template."""
    if "/" in name:  # a drop-in: its unit is retired with the unit's own file, if any
        return []
    prefix, at, suffix = name.partition("@")
    if at and suffix.startswith("."):
        units = manager.ListUnitsByPatterns([], [f"{prefix}@*{suffix}".encode()])
        return [str(unit[0].decode()) for unit in units]
    return [name]


def _retire(lab: LabSystemd, manager: Any, unit: str) -> None:
    # A unit the test never started, or already stopped, answers with a D-Bus error: fine.
    with contextlib.suppress(DBusBaseError):
        manager.StopUnit(unit.encode(), b"replace")
    # StopUnit only queues a job; wait for it, or the next test may meet a deactivating unit.
    lab.wait_for_state(unit, ("inactive", "failed"))
    with contextlib.suppress(DBusBaseError):
        manager.ResetFailedUnit(unit.encode())
