"""Actions: a closed, typed union the LLM chooses from, and the risks the policy gives them.

The LLM picks one of these shapes and fills bounded fields; the executor builds any argv
itself (DESIGN.md invariants 1 and 9). Every string a model can fill carries a
max_length, which also keeps small models' structured output from looping in a string.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from macha_obs.models.hardening import (
    DROPIN_HARDENING,
    DROPIN_TUNING,
    HARDENING,
    JOURNAL_MAX,
    JOURNAL_MIN,
    JOURNALD_DROPIN,
    MEMORY_MAX_CAP,
    MEMORY_RAISE_MAX,
    MEMORY_RAISE_MIN,
    MIB,
    TUNING,
    HardeningSetting,
    nix_string,
    render_dropin,
    service_attr,
    size_text,
)
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


class _PatchAction(_ActionBase):
    """A setting from the catalogue (models/hardening.py) for a person to apply: rendered
    as a systemd drop-in, or as lines of their NixOS configuration. Never executed."""

    @property
    def section(self) -> str:
        return "Service"

    @property
    def dropin_path(self) -> str:
        raise NotImplementedError

    def pairs(self) -> tuple[tuple[str, str], ...]:
        """(Key, Value) as systemd spells them, from the catalogue."""
        raise NotImplementedError

    def explain(self) -> tuple[str, ...]:
        """Each setting's reason and risk, for the person deciding."""
        raise NotImplementedError

    def nix_lines(self) -> tuple[str, ...]:
        raise NotImplementedError

    def dropin(self) -> str:
        kind = str(type(self).model_fields["kind"].default)
        what = kind if self.target == "host" else f"{kind} {self.target}"
        return render_dropin(self.section, self.pairs(), what)


class _UnitPatch(_PatchAction):
    unit: UnitName

    @model_validator(mode="after")
    def _a_service(self) -> _UnitPatch:
        if not self.unit.endswith(".service"):
            raise ValueError(f"{self.unit}: only a service's settings are patched")
        return self

    @property
    def target(self) -> str:
        return self.unit

    def nix_lines(self) -> tuple[str, ...]:
        attr = service_attr(self.unit)
        return tuple(f"{attr}.serviceConfig.{k} = {nix_string(v)};" for k, v in self.pairs())


class HardenUnit(_UnitPatch):
    """Hardening settings for a service, each from the catalogue with a catalogue value."""

    kind: Literal["harden_unit"] = "harden_unit"
    settings: tuple[HardeningSetting, ...] = Field(min_length=1, max_length=len(HARDENING))

    @model_validator(mode="after")
    def _once_each(self) -> HardenUnit:
        keys = [s.key for s in self.settings]
        if len(set(keys)) != len(keys):
            raise ValueError("a setting is named twice")
        return self

    @property
    def dropin_path(self) -> str:
        return f"/etc/systemd/system/{self.unit}.d/{DROPIN_HARDENING}"

    def pairs(self) -> tuple[tuple[str, str], ...]:
        return tuple((s.key.value, s.value) for s in self.settings)

    def explain(self) -> tuple[str, ...]:
        return tuple(
            f"{s.key.value}={s.value}: {s.entry.reason}; risk: {s.entry.risk}"
            for s in self.settings
        )


class TuneUnit(_UnitPatch):
    """MemoryMax raised for a service killed at its limit, by a bounded factor."""

    kind: Literal["tune_unit"] = "tune_unit"
    memory_max: int = Field(ge=MIB, le=MEMORY_MAX_CAP)
    raised_from: int = Field(ge=MIB, le=MEMORY_MAX_CAP)

    @model_validator(mode="after")
    def _bounded(self) -> TuneUnit:
        low, high = self.raised_from * MEMORY_RAISE_MIN, self.raised_from * MEMORY_RAISE_MAX
        if not low <= self.memory_max <= high:
            raise ValueError(
                f"MemoryMax {self.memory_max} is not {MEMORY_RAISE_MIN} to "
                f"{MEMORY_RAISE_MAX} times the limit {self.raised_from}"
            )
        return self

    @property
    def dropin_path(self) -> str:
        return f"/etc/systemd/system/{self.unit}.d/{DROPIN_TUNING}"

    def pairs(self) -> tuple[tuple[str, str], ...]:
        return (("MemoryMax", str(self.memory_max)),)

    def explain(self) -> tuple[str, ...]:
        entry = TUNING["MemoryMax"]
        return (
            f"MemoryMax {size_text(self.raised_from)} -> {size_text(self.memory_max)}: "
            f"{entry.reason}; risk: {entry.risk}",
        )


class TuneJournald(_PatchAction):
    """journald's SystemMaxUse, for a journal that keeps filling its file system."""

    kind: Literal["tune_journald"] = "tune_journald"
    system_max_use: int = Field(ge=JOURNAL_MIN, le=JOURNAL_MAX)

    @property
    def section(self) -> str:
        return "Journal"

    @property
    def dropin_path(self) -> str:
        return JOURNALD_DROPIN

    def pairs(self) -> tuple[tuple[str, str], ...]:
        return (("SystemMaxUse", str(self.system_max_use)),)

    def explain(self) -> tuple[str, ...]:
        entry = TUNING["SystemMaxUse"]
        size = size_text(self.system_max_use)
        return (f"SystemMaxUse={size}: {entry.reason}; risk: {entry.risk}",)

    def nix_lines(self) -> tuple[str, ...]:
        line = nix_string(f"SystemMaxUse={self.system_max_use}")
        return (f"services.journald.extraConfig = {line};",)


Action = Annotated[
    RestartUnit
    | StartUnit
    | ResetFailed
    | JournalVacuum
    | NixGc
    | NixRebuild
    | NixRollback
    | Investigate
    | ConfigChange
    | HardenUnit
    | TuneUnit
    | TuneJournald,
    Field(discriminator="kind"),
]
ACTION_ADAPTER: TypeAdapter[Action] = TypeAdapter(Action)
UNIT_ACTIONS = (RestartUnit, StartUnit, ResetFailed)
# A patch a person applies: never executed, approving only marks it read.
SETTINGS_PATCHES = (HardenUnit, TuneUnit, TuneJournald)
PATCH_ACTIONS = (ConfigChange, *SETTINGS_PATCHES)
SettingsPatch = HardenUnit | TuneUnit | TuneJournald


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
