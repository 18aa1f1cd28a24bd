"""An action's risk, from its type and target alone (DESIGN.md invariants 2 and 11):
never from a model. Pure; `judge.py` decides with it."""

from __future__ import annotations

from collections.abc import Callable

from macha_obs.config import Config
from macha_obs.models import (
    PATCH_ACTIONS,
    Action,
    ConfigChange,
    Investigate,
    JournalVacuum,
    NixGc,
    NixRebuild,
    NixRollback,
    ResetFailed,
    RestartUnit,
    Risk,
    StartUnit,
    TuneJournald,
)

__all__ = ["Risker", "risk_of"]

# DESIGN.md invariant 11. Only unit types that are one service's worth of change are
# started or restarted by the sidecar itself. Mounts and swaps change what every service
# sees: a human may approve them, nothing executes them automatically (high risk is
# never in an autonomy level's set). Targets, devices, slices and scopes are protected
# classes in protected_units.json, refused before the type is even looked at.
_LOW_RISK_UNIT_TYPES = {"service", "socket", "timer", "path"}
_HUMAN_ONLY_UNIT_TYPES = {"mount", "automount", "swap"}


# How an action's risk is computed: `risk_of`; a seam so a test can count the calls.
Risker = Callable[[Action, Config], tuple[Risk, str]]


def risk_of(action: Action, config: Config) -> tuple[Risk, str]:
    """The risk of `action` and why, from its type and target alone."""
    match action:
        case RestartUnit() | StartUnit() | ResetFailed():
            protected = config.protection(action.unit)
            if protected is not None:
                return (
                    Risk.FORBIDDEN,
                    f"{action.unit} is protected ({protected.name}: {protected.why})",
                )
            unit_type = action.unit.rsplit(".", 1)[-1]
            if unit_type in _LOW_RISK_UNIT_TYPES:
                return Risk.LOW, f"{action.kind} of an unprotected {unit_type}"
            if unit_type in _HUMAN_ONLY_UNIT_TYPES:
                return Risk.HIGH, (
                    f"a {unit_type} changes what every service sees: queued for a human, "
                    "never executed automatically"
                )
            return Risk.FORBIDDEN, f"{unit_type} units are not managed by the sidecar"
        case Investigate():
            target = getattr(action.diagnostic, "unit", None)
            return Risk.LOW, f"read-only diagnostic {action.diagnostic.tool}" + (
                f" of {target}" if target else ""
            )
        case JournalVacuum():
            return Risk.LOW, "removes only archived journal files beyond the size bound"
        case NixGc(older_than_days=None):
            return Risk.LOW, "collects only unreferenced store paths"
        case NixGc():
            return Risk.MEDIUM, "deletes old generations, which removes rollback targets"
        case NixRebuild(mode="dry-build"):
            return Risk.LOW, "dry-build changes nothing on the host"
        case NixRebuild():
            return Risk.HIGH, f"nixos-rebuild {action.mode} changes the running system"
        case NixRollback():
            return Risk.HIGH, "rolls the whole system back a generation"
        case _ if isinstance(action, PATCH_ACTIONS):
            return _patch_risk(action, config)
    raise AssertionError(f"unhandled action {action!r}")  # pragma: no cover


def _patch_risk(action: Action, config: Config) -> tuple[Risk, str]:
    """A patch a person applies: always high, whatever proposed it. Hardening or tuning a
    protected unit is refused outright (ProtectHome= on sshd locks a person out)."""
    if isinstance(action, ConfigChange):
        return Risk.HIGH, "a configuration change is for a human to read and apply"
    if isinstance(action, TuneJournald):
        return Risk.HIGH, "a journald setting is a patch for a human to read and apply"
    protected = config.protection(action.target)
    if protected is not None:
        return Risk.FORBIDDEN, f"{action.target} is protected ({protected.name}: {protected.why})"
    return Risk.HIGH, f"a {action.kind} patch is for a human to read and apply"
