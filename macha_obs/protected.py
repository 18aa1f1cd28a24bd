"""The protected classes: units the sidecar never acts on, at any level, approved or not.

DESIGN.md invariants 3 and 11. One JSON file (protected_units.json, beside this module)
is the source for this module, the NixOS module's polkit rule and the README; the config
(which adds the operator's own) and the policy (which refuses them) both read it here.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

# Globs are matched against the canonical unit name (fnmatchcase), never as substrings:
# "ssh*" would not match "fussh.service".
_PROTECTED_JSON = Path(__file__).with_name("protected_units.json")


class ProtectedClass(BaseModel):
    """A kind of unit the sidecar never acts on, and why."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    name: str = Field(alias="class")
    why: str
    units: tuple[str, ...]


def _load_protected() -> tuple[ProtectedClass, ...]:
    data = json.loads(_PROTECTED_JSON.read_text())
    return tuple(ProtectedClass.model_validate(c) for c in data["classes"])


PROTECTED_CLASSES: tuple[ProtectedClass, ...] = _load_protected()
BUILTIN_PROTECTED_UNITS: tuple[str, ...] = tuple(
    dict.fromkeys(p for c in PROTECTED_CLASSES for p in c.units)
)
USER_PROTECTED = ProtectedClass(
    name="configured", why="named in protected_units by this host's operator", units=()
)


def protection(unit: str, configured: Iterable[str] = ()) -> ProtectedClass | None:
    """The protected class `unit` falls in: built-in first, then the operator's globs."""
    for cls in PROTECTED_CLASSES:
        if any(fnmatch.fnmatchcase(unit, pattern) for pattern in cls.units):
            return cls
    if any(fnmatch.fnmatchcase(unit, pattern) for pattern in configured):
        return USER_PROTECTED
    return None
