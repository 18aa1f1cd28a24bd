"""Unit actions over D-Bus: submit the job, wait for it, then verify the unit stays up.

A restart is only "fixed" when the unit is active and still active, with the same main
process and no new restarts, after a settle time: a Type=simple service whose binary
exits at once looks active for a moment and must not be reported as healed.

Starting or restarting a unit that is `failed` resets its failed state first: after
systemd gave up (its start limit), a plain start is refused until reset-failed. Whether
that may happen without a human is the policy's call (`auto_reset_start_limit`).

Just before any call that changes the unit, the executor refuses on its own (defense in
depth under the policy): a protected name or alias, or a job on the unit that is not
ours (a person is changing it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from macha_obs.errors import RefusedError, SystemdError, TransientDBusError
from macha_obs.models import ExecutionResult, ResetFailed, RestartUnit, StartUnit, UnitState
from macha_obs.systemd.bus import SystemdBus

UnitAction = RestartUnit | StartUnit | ResetFailed
T = TypeVar("T")


class SystemdExecutor:
    """Carries out unit actions. Seams: the bus, the protected-unit check, sleep, clock."""

    def __init__(
        self,
        bus: SystemdBus,
        *,
        is_protected: Callable[[str], bool],
        verify_timeout: float = 30.0,
        settle: float = 2.0,
        poll_interval: float = 0.1,
        attempts: int = 3,
        retry_sleep: Callable[[float], None] = time.sleep,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self.is_protected = is_protected
        self.verify_timeout = verify_timeout
        self.settle = settle
        self.poll_interval = poll_interval
        self.attempts = attempts
        self._retry_sleep = retry_sleep
        self._sleep = sleep
        self._clock = clock

    def _retrying(self) -> Retrying:
        # Only transient bus errors are retried; "no such unit" or "access denied" are final.
        return Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=0.5, max=5),
            retry=retry_if_exception_type(TransientDBusError),
            sleep=self._retry_sleep,
            reraise=True,
        )

    def _call(self, fn: Callable[[], T]) -> tuple[T, int]:
        retrying = self._retrying()
        value = retrying(fn)
        return value, int(retrying.statistics.get("attempt_number", 1))

    def state(self, unit: str) -> UnitState:
        return self._call(lambda: self.bus.unit_state(unit))[0]

    def run(self, action: UnitAction) -> ExecutionResult:
        """Carry out `action`; raise RefusedError before any D-Bus call for a protected unit."""
        if self.is_protected(action.unit):
            raise RefusedError(f"{action.unit} is protected; refused before any D-Bus call")
        started = self._clock()
        attempts = 0
        before: UnitState | None = None
        try:
            first, n = self._call(lambda: self.bus.unit_state(action.unit))
            before = first
            attempts += n
            # The name asked for may be an alias: every name systemd knows it by counts.
            aliases = [name for name in first.names if self.is_protected(name)]
            if aliases:
                raise RefusedError(
                    f"{action.unit} is also {', '.join(aliases)}, which is protected; "
                    "nothing submitted"
                )
            if first.job_id:
                raise RefusedError(
                    f"systemd is running job {first.job_id} on {action.unit} that the "
                    "sidecar did not submit; left alone until it settles"
                )
            if first.load_state not in ("loaded", ""):
                return ExecutionResult(
                    ok=False,
                    detail=f"{action.unit} is {before.load_state}; nothing submitted",
                    before=before,
                    after=before,
                    attempts=attempts,
                    duration_seconds=self._clock() - started,
                )
            if isinstance(action, ResetFailed) or first.active_state == "failed":
                _, n = self._call(lambda: self.bus.reset_failed(action.unit))
                attempts += n
                if isinstance(action, ResetFailed) and not action.start:
                    after = self.state(action.unit)
                    return ExecutionResult(
                        ok=after.active_state != "failed",
                        verified=after.active_state != "failed",
                        detail="failed state reset",
                        before=before,
                        after=after,
                        attempts=attempts,
                        duration_seconds=self._clock() - started,
                    )
            verb = "restart" if isinstance(action, RestartUnit) else "start"
            job, n = self._call(lambda: self.bus.submit(action.unit, verb))
            attempts += n
            verified, after, why = self._verify(action.unit)
        except SystemdError as exc:
            return ExecutionResult(
                ok=False,
                detail=f"D-Bus: {exc}",
                before=before,
                attempts=max(attempts, self.attempts if isinstance(exc, TransientDBusError) else 1),
                duration_seconds=self._clock() - started,
            )
        return ExecutionResult(
            ok=verified,
            verified=verified,
            detail=f"job {job}: {why}",
            before=before,
            after=after,
            attempts=attempts,
            duration_seconds=self._clock() - started,
        )

    def _verify(self, unit: str) -> tuple[bool, UnitState, str]:
        """Wait for the job to finish, then for `active` to hold for the settle time."""
        deadline = self._clock() + self.verify_timeout
        while self._call(lambda: self.bus.job_pending(unit))[0]:
            if self._clock() >= deadline:
                return False, self.state(unit), "job still running at the verify timeout"
            self._sleep(self.poll_interval)
        while True:
            state = self.state(unit)
            if state.active_state == "failed":
                return False, state, f"unit failed ({state.sub_state}, result {state.result})"
            if state.active_state == "active":
                settled = self._clock() + self.settle
                held = self._holds(unit, state, settled, deadline)
                if held is not None:
                    return held
            if self._clock() >= deadline:
                return (
                    False,
                    state,
                    f"not active within {self.verify_timeout:g}s ({state.sub_state})",
                )
            self._sleep(self.poll_interval)

    def _holds(
        self, unit: str, first: UnitState, until: float, deadline: float
    ) -> tuple[bool, UnitState, str] | None:
        """Watch an active unit until `until`; None if it left `active` but may come back."""
        state = first
        while self._clock() < until:
            self._sleep(min(self.poll_interval, max(until - self._clock(), 0)))
            state = self.state(unit)
            restarted = state.n_restarts > first.n_restarts or (
                first.main_pid and state.main_pid != first.main_pid
            )
            if state.active_state != "active" or restarted:
                if state.active_state == "failed" or self._clock() >= deadline:
                    return (
                        False,
                        state,
                        f"did not stay active ({state.active_state}/{state.sub_state})",
                    )
                return None
        return True, state, f"active ({state.sub_state}) for {self.settle:g}s"
