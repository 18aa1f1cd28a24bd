"""Root-only actions through a privileged oneshot template unit, for an unprivileged daemon.

Under NixOS the daemon runs as its own user. For nix gc, nixos-rebuild and journal
vacuum it starts `<privileged_unit>@<instance>.service` over D-Bus; the instance name is
the typed argument, drawn from a closed grammar, and the root side (`macha-obs privileged
INSTANCE`) parses it back into a typed action and builds the argv itself. No command
line ever crosses the privilege boundary.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from macha_obs.errors import RunnerError, SystemdError
from macha_obs.execute.journal import vacuum_argv
from macha_obs.execute.nix import nix_commands, system_profile
from macha_obs.execute.runner import Runner
from macha_obs.models import (
    ExecutionResult,
    JournalVacuum,
    NixActivate,
    NixGc,
    NixGcKeep,
    NixRebuild,
    NixRollback,
)
from macha_obs.systemd.bus import SystemdBus

PrivilegedAction = NixGc | NixGcKeep | NixRebuild | NixRollback | NixActivate | JournalVacuum

# The groups are numbered as nixos/lib.nix's polkit rule reads them: 1 days, 2 megabytes,
# 3 generations kept, 4 the generation to activate; bounds are checked beside the match.
_GRAMMAR = re.compile(
    r"^(?:nix-gc(?:-older-than-(?P<days>[1-9][0-9]{0,3})d)?"
    r"|journal-vacuum-(?P<mb>[1-9][0-9]{1,6})M"
    r"|nix-gc-keep-(?P<keep>[1-9][0-9]{0,3})"
    r"|nixos-rebuild-(?P<mode>dry-build|test|switch|boot)"
    r"|(?P<rollback>nixos-rollback)"
    r"|nixos-activate-(?P<generation>[1-9][0-9]{0,5}))$"
)


def instance_for(action: PrivilegedAction) -> str:
    """The template instance that stands for `action`."""
    match action:
        case NixGc(older_than_days=None):
            return "nix-gc"
        case NixGc(older_than_days=days):
            return f"nix-gc-older-than-{days}d"
        case NixGcKeep(keep=keep):
            return f"nix-gc-keep-{keep}"
        case JournalVacuum(max_size_mb=mb):
            return f"journal-vacuum-{mb}M"
        case NixRebuild(mode=mode):
            return f"nixos-rebuild-{mode}"
        case NixRollback():
            return "nixos-rollback"
        case NixActivate(generation=n):
            return f"nixos-activate-{n}"
    raise AssertionError(f"unhandled privileged action {action!r}")  # pragma: no cover


def parse_instance(instance: str) -> PrivilegedAction:
    """The inverse of `instance_for`; ValueError for anything outside the grammar or the
    bounds (the typed action's own: a generation count of 1 is refused, as is 0)."""
    match = _GRAMMAR.fullmatch(instance)
    if match is None:
        raise ValueError(f"{instance!r} is not a privileged action instance")
    try:
        return _typed(match)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ValueError(f"{instance!r} is not a privileged action instance") from exc


def _typed(match: re.Match[str]) -> PrivilegedAction:
    if match["days"]:
        return NixGc(older_than_days=int(match["days"]))
    if match["mb"]:
        return JournalVacuum(max_size_mb=int(match["mb"]))
    if match["keep"]:
        return NixGcKeep(keep=int(match["keep"]))
    if match["mode"]:
        return NixRebuild(mode=match["mode"])
    if match["rollback"]:
        return NixRollback()
    if match["generation"]:
        return NixActivate(generation=int(match["generation"]))
    return NixGc()


def root_commands(
    action: PrivilegedAction,
    *,
    flake: str | None = None,
    journal_dir: Path | None = None,
    nix_root: Path = Path("/"),
) -> list[list[str]]:
    """What the root side runs for `action`: argv lists built here from typed fields."""
    if isinstance(action, JournalVacuum):
        return [vacuum_argv(action, journal_dir=journal_dir)]
    return nix_commands(action, flake=flake, profile=system_profile(nix_root))


def run_as_root(
    instance: str,
    runner: Runner,
    echo: Callable[[str], None],
    *,
    flake: str | None = None,
    journal_dir: Path | None = None,
    nix_root: Path = Path("/"),
    timeout: float = 3600,
) -> int:
    """The root side (`macha-obs privileged INSTANCE`): 0 when every command succeeded,
    1 when one failed or could not run; ValueError for an instance outside the grammar."""
    action = parse_instance(instance)
    commands = root_commands(action, flake=flake, journal_dir=journal_dir, nix_root=nix_root)
    for argv in commands:
        echo(f"running: {' '.join(argv)}")
        try:
            done = runner(argv, timeout=timeout)
        except RunnerError as exc:
            echo(f"error: {exc}")
            return 1
        echo(done.output)
        if done.returncode != 0:
            echo(f"error: {argv[0]} exited {done.returncode}")
            return 1
    return 0


class PrivilegedExecutor:
    """Runs a root action by starting its oneshot instance and waiting for the result."""

    def __init__(
        self,
        bus: SystemdBus,
        unit_prefix: str,
        *,
        timeout: float = 3600.0,
        poll_interval: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self.unit_prefix = unit_prefix
        self.timeout = timeout
        self.poll_interval = poll_interval
        self._sleep = sleep
        self._clock = clock

    def unit_for(self, action: PrivilegedAction) -> str:
        return f"{self.unit_prefix}@{instance_for(action)}.service"

    def run(self, action: PrivilegedAction) -> ExecutionResult:
        unit = self.unit_for(action)
        started = self._clock()
        try:
            job = self.bus.submit(unit, "start")
            deadline = started + self.timeout
            while self.bus.job_pending(unit):
                if self._clock() >= deadline:
                    return ExecutionResult(ok=False, detail=f"{unit}: still running at timeout")
                self._sleep(self.poll_interval)
            state = self.bus.unit_state(unit)
        except SystemdError as exc:
            return ExecutionResult(ok=False, detail=f"{unit}: {exc}")
        ok = state.active_state != "failed" and state.result in ("success", "")
        return ExecutionResult(
            ok=ok,
            verified=ok,
            detail=f"{unit} (job {job}): {state.active_state}, result {state.result or '-'}",
            after=state,
            duration_seconds=self._clock() - started,
        )
