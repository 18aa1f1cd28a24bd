"""One entry point for every typed action: route it to the executor for its kind."""

from __future__ import annotations

from macha_obs.execute.diagnostics import Diagnostics
from macha_obs.execute.errors import RefusedError
from macha_obs.execute.journal import JournalExecutor
from macha_obs.execute.nix import NixExecutor
from macha_obs.execute.privileged import PrivilegedExecutor
from macha_obs.execute.systemd import SystemdExecutor
from macha_obs.models import (
    Action,
    ConfigChange,
    ExecutionResult,
    Investigate,
    JournalVacuum,
    NixGc,
    NixRebuild,
    NixRollback,
    ResetFailed,
    RestartUnit,
    StartUnit,
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
    ) -> None:
        """`privileged`, when set, runs the root-only actions (an unprivileged daemon)."""
        self.privileged = privileged
        self.systemd = systemd
        self.nix = nix
        self.journal = journal
        self.diagnostics = diagnostics

    def run(self, action: Action) -> ExecutionResult:
        match action:
            case RestartUnit() | StartUnit() | ResetFailed():
                return self.systemd.run(action)
            case NixGc() | NixRebuild() | NixRollback() | JournalVacuum() if self.privileged:
                return self.privileged.run(action)
            case NixGc() | NixRebuild() | NixRollback():
                return self.nix.run(action)
            case JournalVacuum():
                return self.journal.run(action)
            case Investigate():
                return self.diagnostics.run(action.diagnostic)
            case ConfigChange():
                raise RefusedError("a config_change is for a human to apply; never executed")
        raise AssertionError(f"unhandled action {action!r}")  # pragma: no cover

    def unit_state(self, unit: str) -> UnitState:
        return self.systemd.state(unit)

    def close(self) -> None:
        """Stop the D-Bus worker child, if any."""
        for bus in {id(b): b for b in (self.systemd.bus, self.diagnostics.bus)}.values():
            close = getattr(bus, "close", None)
            if close is not None:
                close()
