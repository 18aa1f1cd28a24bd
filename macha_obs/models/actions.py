"""Actions: a closed, typed union the LLM chooses from, and the risks the policy gives them.

The LLM picks one of these shapes and fills bounded fields; the executor builds any argv
itself (DESIGN.md invariants 1 and 9). Every string a model can fill carries a
max_length, which also keeps small models' structured output from looping in a string.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from macha_obs.models.units import UnitName

Text200 = Annotated[str, Field(max_length=200)]
Text500 = Annotated[str, Field(max_length=500)]


class Risk(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    FORBIDDEN = "forbidden"


class _ActionBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @property
    def target(self) -> str:
        """What rate limits and the ledger key on: the unit, or the action's scope."""
        return "host"


class _UnitAction(_ActionBase):
    unit: UnitName

    @property
    def target(self) -> str:
        return self.unit


class RestartUnit(_UnitAction):
    kind: Literal["restart_unit"] = "restart_unit"


class StartUnit(_UnitAction):
    kind: Literal["start_unit"] = "start_unit"


class ResetFailed(_UnitAction):
    """reset-failed, then start: what to do after systemd gave up (start-limit-hit)."""

    kind: Literal["reset_failed"] = "reset_failed"
    start: bool = True


class JournalVacuum(_ActionBase):
    kind: Literal["journal_vacuum"] = "journal_vacuum"
    max_size_mb: int = Field(500, ge=16, le=1_000_000)


class NixGc(_ActionBase):
    """nix-collect-garbage; with older_than_days it also deletes old generations."""

    kind: Literal["nix_gc"] = "nix_gc"
    older_than_days: int | None = Field(None, ge=1, le=3650)


class NixRebuild(_ActionBase):
    """nixos-rebuild of the configured flake (never one named by a model)."""

    kind: Literal["nix_rebuild"] = "nix_rebuild"
    mode: Literal["dry-build", "test", "switch", "boot"] = "dry-build"


class NixRollback(_ActionBase):
    kind: Literal["nix_rollback"] = "nix_rollback"


# -- root-side steps the executor derives itself: never proposed, not in `Action`


class NixGcKeep(_ActionBase):
    """Delete system generations but the newest `keep`, then collect garbage. `keep`
    comes from the operator's config (nix_gc_keep_generations), never from a model."""

    kind: Literal["nix_gc_keep"] = "nix_gc_keep"
    keep: int = Field(ge=2, le=1000)


class NixActivate(_ActionBase):
    """Make system generation `generation` the running one and the boot default again:
    the rebuild sequence's way back to the generation it recorded."""

    kind: Literal["nixos_activate"] = "nixos_activate"
    generation: int = Field(ge=1, le=999_999)


# -- read-only diagnostics: the allowlist shared by `investigate` and agent tools


class UnitStatus(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    tool: Literal["unit_status"] = "unit_status"
    unit: UnitName


class JournalTail(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    tool: Literal["journal_tail"] = "journal_tail"
    unit: UnitName
    lines: int = Field(50, ge=1, le=500)


class DiskUsage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    tool: Literal["disk_usage"] = "disk_usage"


class TopProcesses(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    tool: Literal["top_processes"] = "top_processes"
    count: int = Field(10, ge=1, le=50)


class ListeningSockets(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    tool: Literal["listening_sockets"] = "listening_sockets"


class FailedUnits(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    tool: Literal["failed_units"] = "failed_units"


Diagnostic = Annotated[
    UnitStatus | JournalTail | DiskUsage | TopProcesses | ListeningSockets | FailedUnits,
    Field(discriminator="tool"),
]


class Investigate(_ActionBase):
    kind: Literal["investigate"] = "investigate"
    diagnostic: Diagnostic

    @property
    def target(self) -> str:
        return getattr(self.diagnostic, "unit", "host")


class ConfigChange(_ActionBase):
    """A proposed change for a human to read and apply. Never executed."""

    kind: Literal["config_change"] = "config_change"
    path: str = Field(max_length=300, pattern=r"^[^\x00\n]+$")
    diff: str = Field(max_length=8000)
    summary: Text200 = ""


Action = Annotated[
    RestartUnit
    | StartUnit
    | ResetFailed
    | JournalVacuum
    | NixGc
    | NixRebuild
    | NixRollback
    | Investigate
    | ConfigChange,
    Field(discriminator="kind"),
]
ACTION_ADAPTER: TypeAdapter[Action] = TypeAdapter(Action)
UNIT_ACTIONS = (RestartUnit, StartUnit, ResetFailed)


def parse_action(data: Any) -> Action:
    """Validate untrusted data (dict or JSON text) into an Action; ValidationError otherwise."""
    if isinstance(data, str | bytes):
        return ACTION_ADAPTER.validate_json(data)
    return ACTION_ADAPTER.validate_python(data)


def action_json(action: Action) -> str:
    return ACTION_ADAPTER.dump_json(action).decode()


def describe_action(action: Action) -> str:
    """A short human-readable label: 'restart_unit nginx.service'."""
    target = action.target
    return action.kind if target == "host" else f"{action.kind} {target}"
