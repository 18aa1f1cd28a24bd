"""One entry point for every typed action: route it to the executor for its kind."""

from __future__ import annotations

from pathlib import Path

from macha_obs.errors import RefusedError
from macha_obs.execute.diagnostics import Diagnostics
from macha_obs.execute.journal import JournalExecutor
from macha_obs.execute.nix import STORE, Measure, NixExecutor, free_bytes, measured_gc
from macha_obs.execute.privileged import PrivilegedAction, PrivilegedExecutor
from macha_obs.execute.rebuild import RebuildSequence
from macha_obs.execute.systemd import SystemdExecutor
from macha_obs.models import (
    Action,
    ConfigChange,
    ExecutionResult,
    HardenUnit,
    Investigate,
    JournalVacuum,
    NixGc,
    NixGcKeep,
    NixRebuild,
    NixRollback,
    ResetFailed,
    RestartUnit,
    StartUnit,
    TuneJournald,
    TuneUnit,
    UnitState,
)


class HostExecutor:
    """Carries out an already-judged action. The policy decides; this only does."""

    def __init__(
        self,
        systemd: SystemdExecutor,
        nix: NixExecutor,
        journal: JournalExecutor,
        diagnostics: Diagnostics,
        *,
        privileged: PrivilegedExecutor | None = None,
        gc_keep_generations: int = 0,
        measure_store: Measure | None = None,
    ) -> None:
        """`privileged`, when set, runs the root-only actions (an unprivileged daemon).
        `gc_keep_generations` (the operator's, ≥ 2; 0 keeps all) turns a plain nix_gc
        into "delete generations but the newest N, then collect". `measure_store` gives
        the store filesystem's free bytes, read before and after a gc."""
        self.privileged = privileged
        self.systemd = systemd
        self.nix = nix
        self.journal = journal
        self.diagnostics = diagnostics
        self.gc_keep_generations = gc_keep_generations
        self.measure_store = measure_store or (lambda: free_bytes(Path("/") / STORE))
        # set by the wiring once the store exists: without it a switch is refused
        self.rebuild: RebuildSequence | None = None

    def root_step(self, action: PrivilegedAction) -> ExecutionResult:
        """One root-only action, through the privileged oneshot when there is one."""
        if self.privileged is not None:
            return self.privileged.run(action)
        if isinstance(action, JournalVacuum):
            return self.journal.run(action)
        return self.nix.run(action)

    def _gc(self, action: NixGc) -> ExecutionResult:
        keep = self.gc_keep_generations
        step: NixGc | NixGcKeep = action
        if keep and action.older_than_days is None:
            step = NixGcKeep(keep=keep)
        return measured_gc(lambda: self.root_step(step), self.measure_store)

    def run(self, action: Action) -> ExecutionResult:
        match action:
            case RestartUnit() | StartUnit() | ResetFailed():
                return self.systemd.run(action)
            case NixGc():
                return self._gc(action)
            case NixRebuild(mode="switch"):
                if self.rebuild is None:
                    raise RefusedError("a switch runs only as the health-gated rebuild sequence")
                return self.rebuild.run()
            case NixRebuild() | NixRollback() | JournalVacuum():
                return self.root_step(action)
            case Investigate():
                return self.diagnostics.run(action.diagnostic)
            case ConfigChange():
                raise RefusedError("a config_change is for a human to apply; never executed")
            case HardenUnit() | TuneUnit() | TuneJournald():
                raise RefusedError(f"a {action.kind} patch is for a human to apply; never executed")
        raise AssertionError(f"unhandled action {action!r}")  # pragma: no cover

    def recover_rebuild(self) -> ExecutionResult | None:
        """At start: bring a rebuild a crash interrupted back to a known generation."""
        return self.rebuild.recover() if self.rebuild is not None else None

    def unit_state(self, unit: str) -> UnitState:
        return self.systemd.state(unit)

    def close(self) -> None:
        """Stop the D-Bus worker child, if any."""
        for bus in {id(b): b for b in (self.systemd.bus, self.diagnostics.bus)}.values():
            close = getattr(bus, "close", None)
            if close is not None:
                close()
