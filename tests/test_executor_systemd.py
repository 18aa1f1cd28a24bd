"""The systemd executor against a real systemd (PID 1 in a throw-away namespace)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from macha_obs.errors import RefusedError
from macha_obs.execute.systemd import SystemdExecutor
from macha_obs.models import ResetFailed, RestartUnit, StartUnit, UnitState
from macha_obs.systemd.bus import IsolatedBus
from tests.harness.labsd import LabSystemd, wait_until

pytestmark = pytest.mark.systemd

UnitFactory = Callable[[str, str], str]


class RecordingBus:
    """Wraps the real bus and records every call that reaches it."""

    def __init__(self, inner: IsolatedBus) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def unit_state(self, unit: str) -> UnitState:
        self.calls.append(f"unit_state {unit}")
        return self.inner.unit_state(unit)

    def submit(self, unit: str, verb: str) -> str:
        self.calls.append(f"submit {verb} {unit}")
        return self.inner.submit(unit, verb)

    def job_pending(self, unit: str) -> bool:
        return self.inner.job_pending(unit)

    def reset_failed(self, unit: str) -> None:
        self.calls.append(f"reset_failed {unit}")
        self.inner.reset_failed(unit)

    def list_units(self, states: tuple[str, ...] = ()) -> list[tuple[str, str, str, str]]:
        return self.inner.list_units(states)


_buses: list[IsolatedBus] = []


@pytest.fixture(autouse=True)
def _close_buses() -> Iterator[None]:
    yield
    while _buses:
        _buses.pop().close()


def bus_for(lab: LabSystemd, timeout: float = 5.0) -> IsolatedBus:
    bus = IsolatedBus(lab.bus_address, timeout=timeout)
    _buses.append(bus)
    return bus


def executor(
    lab: LabSystemd, *, timeout: float = 5.0, settle: float = 0.5, **kw: object
) -> SystemdExecutor:
    return SystemdExecutor(
        bus_for(lab, timeout),
        is_protected=lambda unit: unit in {"sshd.service", "dbus.service"},
        verify_timeout=10.0,
        settle=settle,
        poll_interval=0.05,
        **kw,  # type: ignore[arg-type]
    )


def test_failed_unit_is_seen_restarted_and_verified(
    systemd_container: LabSystemd, unit_factory: UnitFactory
) -> None:
    lab = systemd_container
    # fails on its first start (no marker yet), then runs: a crash that a restart fixes
    unit_factory(
        "t-heal.service",
        "[Service]\nExecStartPre=/bin/sh -c 'test -e /run/t-heal.ok || "
        "{ touch /run/t-heal.ok; exit 3; }'\nExecStart=/bin/sleep infinity\n",
    )
    ex = executor(lab)
    lab.run("rm", "-f", "/run/t-heal.ok", check=False)
    ex.bus.submit("t-heal.service", "start")
    lab.wait_for_state("t-heal.service", "failed")
    assert ex.state("t-heal.service").active_state == "failed"

    result = ex.run(RestartUnit(unit="t-heal.service"))

    assert result.ok
    assert result.verified
    assert result.before is not None
    assert result.before.active_state == "failed"
    assert result.after is not None
    assert (result.after.active_state, result.after.sub_state) == ("active", "running")
    assert lab.unit_state("t-heal.service") == ("active", "running")


def test_unit_that_keeps_failing_is_reported_failed(
    systemd_container: LabSystemd, unit_factory: UnitFactory
) -> None:
    unit_factory("t-false.service", "[Service]\nExecStart=/bin/false\n")
    result = executor(systemd_container).run(RestartUnit(unit="t-false.service"))
    assert not result.ok
    assert not result.verified
    assert result.after is not None
    assert result.after.active_state == "failed"
    assert "failed" in result.detail


def test_flapping_unit_with_restart_always_is_not_fixed(
    systemd_container: LabSystemd, unit_factory: UnitFactory
) -> None:
    """Active for an instant, then dead again: the settle time catches it."""
    unit_factory(
        "t-flap.service",
        "[Unit]\nStartLimitIntervalSec=0\n"
        "[Service]\nExecStart=/bin/sh -c 'sleep 0.2; exit 1'\nRestart=always\nRestartSec=100ms\n",
    )
    result = executor(systemd_container, settle=1.0).run(StartUnit(unit="t-flap.service"))
    assert not result.verified
    assert result.after is not None
    assert result.after.n_restarts >= 1


@pytest.mark.parametrize("kind", [ResetFailed, RestartUnit])
def test_fix_after_systemd_gave_up_on_the_start_limit(
    systemd_container: LabSystemd,
    unit_factory: UnitFactory,
    kind: type[ResetFailed | RestartUnit],
) -> None:
    """After systemd's own restarts hit the start limit, reset-failed + start (explicitly,
    or as part of a restart of a failed unit) brings the unit back."""
    lab = systemd_container
    name = f"t-limit-{kind.__name__.lower()}.service"
    unit_factory(
        name,
        "[Unit]\nStartLimitIntervalSec=60\nStartLimitBurst=2\n"
        f"[Service]\nExecStartPre=/bin/sh -c 'test -e /run/{name}.ok'\n"
        "ExecStart=/bin/sleep infinity\nRestart=on-failure\nRestartSec=50ms\n",
    )
    lab.run("rm", "-f", f"/run/{name}.ok", check=False)
    ex = executor(lab)
    ex.bus.submit(name, "start")
    # systemd retried twice, then gave up ("start request repeated too quickly")
    assert wait_until(lambda: (s := ex.state(name)).active_state == "failed" and s.n_restarts == 2)
    lab.run("touch", f"/run/{name}.ok")
    result = ex.run(kind(unit=name))
    assert result.verified, result.detail
    assert lab.unit_state(name) == ("active", "running")


def test_protected_unit_refused_before_any_dbus_call(systemd_container: LabSystemd) -> None:
    ex = executor(systemd_container)
    recording = RecordingBus(ex.bus)  # type: ignore[arg-type]
    ex.bus = recording
    with pytest.raises(RefusedError, match="protected"):
        ex.run(RestartUnit(unit="sshd.service"))
    assert recording.calls == []


def test_unknown_unit_is_reported_not_submitted(systemd_container: LabSystemd) -> None:
    ex = executor(systemd_container)
    recording = RecordingBus(ex.bus)  # type: ignore[arg-type]
    ex.bus = recording
    result = ex.run(RestartUnit(unit="no-such-unit.service"))
    assert not result.ok
    assert "not-found" in result.detail
    assert not any(c.startswith("submit") for c in recording.calls)


def test_dbus_error_is_retried_then_reported(systemd_container: LabSystemd) -> None:
    """A stalled bus times out each attempt; tenacity retries with the injected sleep."""
    delays: list[float] = []
    ex = executor(systemd_container, timeout=0.5, attempts=3, retry_sleep=delays.append)
    with systemd_container.stalled_bus():
        result = ex.run(RestartUnit(unit="t-anything.service"))
    assert not result.ok
    assert result.attempts == 3
    assert "did not answer within 0.5s" in result.detail
    assert len(delays) == 2  # two waits between three attempts, none actually slept
    assert delays == sorted(delays)
    # the bus works again afterwards: nothing was left half-done
    assert ex.state("dbus.service").active_state == "active"


def test_list_failed_units(systemd_container: LabSystemd, unit_factory: UnitFactory) -> None:
    unit_factory("t-listfail.service", "[Service]\nExecStart=/bin/false\n")
    bus = bus_for(systemd_container)
    bus.submit("t-listfail.service", "start")
    systemd_container.wait_for_state("t-listfail.service", "failed")
    failed = bus.list_units(("failed",))
    assert ("t-listfail.service", "loaded", "failed", "failed") in failed
    assert all(row[2] == "failed" for row in failed)
