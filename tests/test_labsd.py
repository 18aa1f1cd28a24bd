"""The real-systemd harness itself: it boots, sees failures, stalls its bus, shows its journal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pystemd.systemd1 import Manager

from tests.harness.labsd import LabSystemd, sweep_stale, wait_until
from tests.harness.systemd_fixtures import UnitFactory

pytestmark = pytest.mark.systemd

PROJECT = Path(__file__).resolve().parents[1]


def _start(lab: LabSystemd, unit: str) -> None:
    with lab.dbus() as bus:
        Manager(bus=bus, _autoload=True).Manager.StartUnit(unit.encode(), b"replace")


def test_boots_and_answers_on_its_own_bus(systemd_container: LabSystemd, system_bus: str) -> None:
    assert systemd_container.system_state() in ("running", "degraded")
    # The default system bus (what the sidecar's code opens) now reaches the container too.
    assert Manager(_autoload=True).Manager.SystemState in (b"running", b"degraded")
    assert system_bus.endswith(f"/proc/{systemd_container.pid}/root/run/dbus/system_bus_socket")


def test_false_unit_is_seen_failed(
    systemd_container: LabSystemd, unit_factory: UnitFactory
) -> None:
    unit = unit_factory("labsd-t-false.service", "[Service]\nExecStart=/bin/false\n")
    _start(systemd_container, unit)
    assert systemd_container.wait_for_state(unit, "failed") == ("failed", "failed")


def test_unit_files_stay_off_the_host(
    systemd_container: LabSystemd, unit_factory: UnitFactory
) -> None:
    unit = unit_factory("labsd-t-probe.service", "[Service]\nExecStart=/bin/true\n")
    assert (systemd_container.root / "etc/systemd/system" / unit).is_file()
    assert not (Path("/etc/systemd/system") / unit).exists()


def test_systemctl_runs_inside(systemd_container: LabSystemd) -> None:
    result = systemd_container.run("systemctl", "is-system-running", check=False)
    assert result.stdout.strip() in ("running", "degraded")


# Connects and proves it, waits for the stall, then makes one call: exit 3 when that call
# fails as it should, exit 0 when a stalled bus answered.
_CALL_AFTER_STALL = """
import sys
from pystemd.dbuslib import DBusAddress
from pystemd.systemd1 import Manager
with DBusAddress(sys.argv[1].encode()) as bus:
    manager = Manager(bus=bus, _autoload=True).Manager
    print(manager.SystemState.decode(), flush=True)
    sys.stdin.readline()
    try:
        manager.Reload()
    except Exception as error:
        print(repr(error), file=sys.stderr)
        sys.exit(3)
"""


def test_stalled_bus_times_out_then_recovers(systemd_container: LabSystemd) -> None:
    # pystemd holds the GIL inside sd_bus_call, so a thread could not bound the call: a child
    # process can. SYSTEMD_BUS_TIMEOUT is libsystemd's method-call timeout. It does not cover
    # connecting: a connection opened while the bus is stalled waits out sd-bus's fixed 90 s
    # authentication timeout, so the child connects first.
    env = {**os.environ, "SYSTEMD_BUS_TIMEOUT": "1"}
    argv = [sys.executable, "-c", _CALL_AFTER_STALL, systemd_container.bus_address]
    with subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() in ("running", "degraded")
            with systemd_container.stalled_bus():
                started = time.monotonic()
                _, stderr = child.communicate("go\n", timeout=20)
                elapsed = time.monotonic() - started
        finally:
            child.kill()
    assert child.returncode == 3, stderr
    assert "timed out" in stderr.lower(), stderr
    assert elapsed < 10
    assert systemd_container.unit_state("dbus.service") == ("active", "running")
    assert systemd_container.system_state() in ("running", "degraded")


def test_journal_is_readable_from_the_host(
    systemd_container: LabSystemd, unit_factory: UnitFactory
) -> None:
    marker = f"labsd-marker-{os.urandom(4).hex()}"
    unit = unit_factory(
        "labsd-t-echo.service", f"[Service]\nType=oneshot\nExecStart=/bin/echo {marker}\n"
    )
    _start(systemd_container, unit)
    # journald ingests stdout asynchronously: the line may trail the unit's exit.
    assert wait_until(lambda: marker in systemd_container.journal(unit), timeout=10)


# Boots a container of its own, reports it, and waits to be killed.
_OWNER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.harness.labsd import LabSystemd
lab = LabSystemd().start()
print(lab.pid, lab.cgroup, lab.workdir, flush=True)
time.sleep(60)
"""


@pytest.mark.usefixtures("systemd_available")
def test_sigkilled_owner_takes_its_container_along() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(PROJECT)], stdout=subprocess.PIPE, text=True
    ) as owner:
        try:
            assert owner.stdout is not None
            container_pid, cgroup, workdir = owner.stdout.readline().split()
            assert Path(f"/proc/{container_pid}").exists()
        finally:
            owner.send_signal(signal.SIGKILL)
    assert wait_until(lambda: not Path(f"/proc/{container_pid}").exists(), timeout=10)
    # What the dead owner could not remove, the next boot's sweep does (unless another
    # session's sweep got there first).
    sweep_stale()
    assert not Path(cgroup).exists()
    assert not Path(workdir).exists()
