"""The hardening and tuning catalogue: the only settings a patch proposal may carry.

A proposal names settings from `hardening_catalogue.json` (beside this module) and values
from each setting's closed list; nothing a model writes reaches a patch as text. The
patch itself - a systemd drop-in, or the lines of a NixOS configuration - is rendered
here from the catalogue, never taken from a proposal. Each setting carries its reason
and its risk, shown to the person who decides whether to apply it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

_CATALOGUE_JSON = Path(__file__).with_name("hardening_catalogue.json")

DROPIN_HARDENING = "50-macha-hardening.conf"
DROPIN_TUNING = "50-macha-tuning.conf"
JOURNALD_DROPIN = f"/etc/systemd/journald.conf.d/{DROPIN_TUNING}"
MIB = 1 << 20
GIB = 1 << 30
# A raise of MemoryMax is bounded: at least 1.5 times the limit the unit hit (less would
# hit it again soon), at most twice, and never past this ceiling.
MEMORY_RAISE_MIN = 1.5
MEMORY_RAISE_MAX = 2.0
MEMORY_MAX_CAP = 64 * GIB
JOURNAL_MIN = 64 * MIB
JOURNAL_MAX = 4 * GIB


class HardeningKey(StrEnum):
    NO_NEW_PRIVILEGES = "NoNewPrivileges"
    PROTECT_SYSTEM = "ProtectSystem"
    PROTECT_HOME = "ProtectHome"
    PRIVATE_TMP = "PrivateTmp"
    PROTECT_KERNEL_TUNABLES = "ProtectKernelTunables"
    RESTRICT_ADDRESS_FAMILIES = "RestrictAddressFamilies"
    PRIVATE_DEVICES = "PrivateDevices"
    PROTECT_CONTROL_GROUPS = "ProtectControlGroups"
    PROTECT_KERNEL_MODULES = "ProtectKernelModules"
    RESTRICT_SUID_SGID = "RestrictSUIDSGID"
    LOCK_PERSONALITY = "LockPersonality"


@dataclass(frozen=True)
class CatalogueEntry:
    key: str
    values: tuple[str, ...]
    bus: str  # its D-Bus type for a transient unit: b, s, or families ((bas))
    reason: str
    risk: str


def _load() -> tuple[dict[HardeningKey, CatalogueEntry], dict[str, CatalogueEntry]]:
    data = json.loads(_CATALOGUE_JSON.read_text(encoding="utf-8"))
    hardening = {
        HardeningKey(k): CatalogueEntry(k, tuple(v["values"]), v["bus"], v["reason"], v["risk"])
        for k, v in data["hardening"].items()
    }
    tuning = {
        k: CatalogueEntry(k, (), "t", v["reason"], v["risk"]) for k, v in data["tuning"].items()
    }
    if set(hardening) != set(HardeningKey):
        raise RuntimeError(f"{_CATALOGUE_JSON.name} does not describe every HardeningKey")
    return hardening, tuning


_CATALOGUE = _load()
HARDENING = _CATALOGUE[0]
TUNING = _CATALOGUE[1]


class HardeningSetting(BaseModel):
    """One catalogue setting with one of its catalogue values; anything else is refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: HardeningKey
    value: str

    @model_validator(mode="after")
    def _in_catalogue(self) -> HardeningSetting:
        allowed = HARDENING[self.key].values
        if self.value not in allowed:
            raise ValueError(
                f"{self.key.value}={self.value[:60]!r} is not in the catalogue "
                f"(allowed: {', '.join(allowed)})"
            )
        return self

    @property
    def entry(self) -> CatalogueEntry:
        return HARDENING[self.key]


def render_dropin(section: str, pairs: tuple[tuple[str, str], ...], why: str) -> str:
    """A drop-in file's text, rendered from catalogue keys and values only."""
    body = "".join(f"{key}={value}\n" for key, value in pairs)
    head = f"# Proposed by macha-obs: {why}\n# Applied by a person; remove this file to undo.\n"
    return f"{head}[{section}]\n{body}"


def nix_string(value: str) -> str:
    """A Nix string literal of a catalogue value or a unit name (plain characters)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${") + '"'


def service_attr(unit: str) -> str:
    """`systemd.services."<name>"` for a unit name like `web.service`."""
    return f"systemd.services.{nix_string(unit.removesuffix('.service'))}"


def size_text(size: int) -> str:
    """Bytes as a person reads them: '30.0 MiB', '1.50 GiB'."""
    return f"{size / GIB:.2f} GiB" if size >= GIB else f"{size / MIB:.1f} MiB"


def memory_raise(limit: int) -> int | None:
    """The raised MemoryMax for a unit killed at `limit`: 1.5 times, rounded up to a MiB,
    within the bounds; None when the limit is already at the cap."""
    raised = -(-int(limit * MEMORY_RAISE_MIN) // MIB) * MIB
    if raised > MEMORY_MAX_CAP or raised > limit * MEMORY_RAISE_MAX:
        return None
    return raised


def journal_cap(filesystem_bytes: int) -> int:
    """SystemMaxUse for a journal that keeps filling its file system: 5% of it, down to
    a multiple of 64 MiB (the same proposal while the disk fills), within 64 MiB and
    4 GiB (journald's own default is 10%, capped at 4 GiB)."""
    share = filesystem_bytes // 20 // JOURNAL_MIN * JOURNAL_MIN
    return max(JOURNAL_MIN, min(JOURNAL_MAX, share))
