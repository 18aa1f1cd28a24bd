"""The rebuild sequence: dry-build, record, activate, health check, boot default — or back.

Health-gated the way deploy-rs' magic rollback is: the new generation is activated with
`nixos-rebuild test` (running, not yet the boot default), watched for a window, and
only then made the boot default with `nixos-rebuild boot`. If any check fails, the
generation recorded before the switch is activated again (`nixos-activate-N`).

Every step is written to the store (a meta record and an audit line) before it starts.
A crash mid-way is recovered on the next start (`recover`): from "activating" up to
"making the boot default" the recorded generation is activated again; before that
nothing had changed; after it the new generation is the known one. A reboot mid-way
boots the old default by construction: the profile is untouched until the checks pass.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from macha_obs.errors import ExecutorError
from macha_obs.execute.nix import system_profile
from macha_obs.execute.privileged import PrivilegedAction
from macha_obs.models import ExecutionResult, NixActivate, NixRebuild
from macha_obs.systemd.bus import SystemdBus

REBUILD_KEY = "nix.rebuild"  # the sequence's intent record in the store's meta table
StepRunner = Callable[[PrivilegedAction], ExecutionResult]


class _Meta(Protocol):
    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...


class _Actions(Protocol):
    def audit_action(self, record: Mapping[str, Any]) -> None: ...


class StepLog(Protocol):
    """What the sequence needs of the store: its meta and audit parts, and who it is."""

    @property
    def owner(self) -> str: ...

    @property
    def meta(self) -> _Meta: ...

    @property
    def audit(self) -> _Actions: ...


class Step(StrEnum):
    DRY_BUILD = "dry-build"  # nothing changed yet
    RECORDED = "recorded"  # the generation to come back to is known
    ACTIVATING = "activating"  # `nixos-rebuild test` started: the new system may run
    CHECKING = "checking"  # the health window
    BOOT_DEFAULT = "making-boot-default"  # `nixos-rebuild boot` started
    DONE = "done"  # the new generation runs and is the boot default
    ROLLING_BACK = "rolling-back"
    ROLLED_BACK = "rolled-back"
    ROLLBACK_FAILED = "rollback-failed"  # a human must look: the audit log says why
    REFUSED = "refused"  # stopped before anything changed
    ABANDONED = "abandoned"  # a crash stopped it before anything changed


# A crash at one of these leaves the running system unknown: activate the recorded one.
NEEDS_ROLLBACK = {Step.ACTIVATING, Step.CHECKING, Step.BOOT_DEFAULT, Step.ROLLING_BACK}
UNCHANGED = {Step.DRY_BUILD, Step.RECORDED}


def current_generation(profile: Path) -> int | None:
    """N of the `system-N-link` the profile points at; None when it cannot be read."""
    try:
        name = profile.readlink().name
    except OSError:
        return None
    prefix, suffix = f"{profile.name}-", "-link"
    number = name.removeprefix(prefix).removesuffix(suffix)
    if name == number or not number.isascii() or not number.isdigit():
        return None
    return int(number)


@dataclass(frozen=True)
class HealthChecks:
    """What must hold for `window` seconds after the switch."""

    window: float = 60.0
    poll_interval: float = 1.0
    must_be_active: tuple[str, ...] = ()


def newly_failed(before: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """Units failed now that were not failed before the switch (active ones included)."""
    return sorted(u for u, state in now.items() if state == "failed" and before.get(u) != "failed")


class RebuildSequence:
    """Owns `nix_rebuild switch`: the only way the sidecar changes the running system."""

    def __init__(
        self,
        steps: StepRunner,
        bus: SystemdBus,
        log: StepLog,
        *,
        nix_root: Path = Path("/"),
        checks: HealthChecks | None = None,
        owner_alive: Callable[[str], bool] = lambda owner: False,
        self_check: Callable[[], str | None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`steps` runs one root action (directly or through the privileged oneshot);
        `self_check` names a problem of the sidecar itself (None: healthy)."""
        self.steps = steps
        self.bus = bus
        self.log = log
        self.profile = system_profile(nix_root)
        self.checks = checks or HealthChecks()
        self.owner_alive = owner_alive
        self.self_check = self_check
        self.clock = clock
        self.sleep = sleep

    # ---------------------------------------------------------------- the record

    def _write(self, step: Step, generation: int | None, detail: str = "") -> None:
        record = {"step": step.value, "generation": generation, "owner": self.log.owner}
        record["detail"] = detail[:500]
        self.log.meta.set_meta(REBUILD_KEY, json.dumps(record))
        self.log.audit.audit_action({"event": "rebuild_step", **record})

    def state(self) -> dict[str, Any] | None:
        raw = self.log.meta.get_meta(REBUILD_KEY)
        return json.loads(raw) if raw else None

    def _step(self, action: PrivilegedAction) -> ExecutionResult:
        try:
            return self.steps(action)
        except ExecutorError as exc:
            return ExecutionResult(ok=False, detail=f"{type(exc).__name__}: {exc}")

    # ---------------------------------------------------------------- the sequence

    def run(self) -> ExecutionResult:
        started = self.clock()
        self._write(Step.DRY_BUILD, None)
        dry = self._step(NixRebuild(mode="dry-build"))
        if not dry.ok:
            return self._refuse(f"dry-build failed, nothing switched: {dry.detail}", dry)
        generation = current_generation(self.profile)
        if generation is None:
            return self._refuse(f"cannot read the current generation from {self.profile}")
        try:
            before = self._unit_states()
        except ExecutorError as exc:
            return self._refuse(f"cannot read unit states before the switch: {exc}")
        self._write(Step.RECORDED, generation, str(self.profile.readlink()))
        self._write(Step.ACTIVATING, generation)
        test = self._step(NixRebuild(mode="test"))
        if not test.ok:
            return self._roll_back(generation, f"activation failed: {test.detail}")
        self._write(Step.CHECKING, generation)
        problem = self._watch(before)
        if problem is not None:
            return self._roll_back(generation, problem)
        self._write(Step.BOOT_DEFAULT, generation)
        boot = self._step(NixRebuild(mode="boot"))
        if not boot.ok:
            return self._roll_back(generation, f"making it the boot default failed: {boot.detail}")
        now = current_generation(self.profile)
        detail = f"generation {now} runs and is the boot default (was {generation})"
        self._write(Step.DONE, generation, detail)
        return ExecutionResult(
            ok=True, verified=True, detail=detail, duration_seconds=self.clock() - started
        )

    def _refuse(self, why: str, result: ExecutionResult | None = None) -> ExecutionResult:
        self._write(Step.REFUSED, None, why)
        return ExecutionResult(ok=False, detail=why, output=result.output if result else "")

    def _roll_back(self, generation: int, why: str) -> ExecutionResult:
        self._write(Step.ROLLING_BACK, generation, why)
        back = self._step(NixActivate(generation=generation))
        if not back.ok:
            detail = f"{why}; rolling back to generation {generation} FAILED: {back.detail}"
            self._write(Step.ROLLBACK_FAILED, generation, detail)
            return ExecutionResult(ok=False, detail=detail)
        detail = f"{why}; rolled back to generation {generation}"
        self._write(Step.ROLLED_BACK, generation, detail)
        return ExecutionResult(ok=False, detail=detail)

    # ---------------------------------------------------------------- health

    def _unit_states(self) -> dict[str, str]:
        return {name: active for name, _load, active, _sub in self.bus.list_units()}

    def problem(self, before: Mapping[str, str]) -> str | None:
        """What is wrong right now after the switch, or None."""
        try:
            now = self._unit_states()
        except ExecutorError as exc:
            return f"the sidecar cannot reach the systemd bus: {exc}"
        failed = newly_failed(before, now)
        if failed:
            return f"failed after the switch: {', '.join(failed[:10])}"
        inactive = [u for u in self.checks.must_be_active if now.get(u) != "active"]
        if inactive:
            return f"not active after the switch: {', '.join(inactive)}"
        return self.self_check()

    def _watch(self, before: Mapping[str, str]) -> str | None:
        """The first problem seen within the window, or None when it held throughout."""
        deadline = self.clock() + self.checks.window
        while True:
            problem = self.problem(before)
            if problem is not None:
                return problem
            remaining = deadline - self.clock()
            if remaining <= 0:
                return None
            self.sleep(min(self.checks.poll_interval, remaining))

    # ---------------------------------------------------------------- after a crash

    def recover(self) -> ExecutionResult | None:
        """At start: finish what a dead process left mid-way; None when nothing was."""
        state = self.state()
        if state is None:
            return None
        step, generation = Step(state["step"]), state.get("generation")
        if step not in NEEDS_ROLLBACK and step not in UNCHANGED:
            return None
        owner = str(state.get("owner", ""))
        if owner != self.log.owner and self.owner_alive(owner):
            return None  # another process (say, macha-approve) is running it now
        if step in UNCHANGED or generation is None:
            why = f"interrupted at {step.value}, before anything changed"
            self._write(Step.ABANDONED, generation, why)
            return ExecutionResult(ok=False, detail=why)
        return self._roll_back(int(generation), f"interrupted at {step.value} by a crash")
