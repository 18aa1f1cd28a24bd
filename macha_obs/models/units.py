"""Units: systemd's unit-name grammar, and a unit's state as systemd reports it.

A unit name is the one piece of untrusted text that may reach an argv (DESIGN.md
invariant 9), so it is validated here, once, by the grammar below; everything else
that names a unit (alerts, findings, actions) uses `UnitName`.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator

from macha_obs.errors import InvalidInput

# systemd's unit-name grammar (src/basic/unit-name.c): a prefix of [A-Za-z0-9:_.\-],
# an optional "@instance", a known type suffix, at most 255 bytes. We are stricter than
# systemd in one place: no "..", no leading "." or "-" except the root slice/mount
# names, so a name can never look like a path or an option.
UNIT_TYPES = (
    "service",
    "socket",
    "target",
    "device",
    "mount",
    "automount",
    "swap",
    "timer",
    "path",
    "slice",
    "scope",
)
_UNIT_RE = re.compile(
    r"^(?P<prefix>[A-Za-z0-9:_][A-Za-z0-9:_.\\-]*)"
    r"(?:@(?P<instance>[A-Za-z0-9:_.\\-]+))?"
    r"\.(?P<type>" + "|".join(UNIT_TYPES) + r")$"
)
_ROOT_UNITS = {"-.slice", "-.mount"}
UNIT_NAME_MAX = 255


class InvalidUnitName(InvalidInput, ValueError):
    """Not a canonical unit name; a ValueError too, so pydantic validators report it."""


def validate_unit_name(name: str) -> str:
    """Return `name` if it is a valid, canonical systemd unit name; raise otherwise."""
    if name in _ROOT_UNITS:
        return name
    if not name or len(name.encode()) > UNIT_NAME_MAX:
        raise InvalidUnitName(f"unit name must be 1..{UNIT_NAME_MAX} bytes")
    if ".." in name:
        raise InvalidUnitName(f"{name!r}: '..' is not allowed in a unit name")
    if _UNIT_RE.fullmatch(name) is None:
        raise InvalidUnitName(
            f"{name!r} is not a systemd unit name (letters, digits, ':_.\\-', optional "
            f"@instance, and a type suffix such as .service)"
        )
    return name


def canonical_unit_name(name: str) -> str:
    """'nginx' → 'nginx.service' (systemctl's rule), then validated."""
    if name.rsplit(".", 1)[-1] not in UNIT_TYPES:
        name = name + ".service"
    return validate_unit_name(name)


UnitName = Annotated[str, AfterValidator(validate_unit_name)]


START_LIMIT_HIT = "start-limit-hit"


def start_limit_refused(state: UnitState) -> bool:
    """A failed unit that systemd restarted as often as its start limit allows: its next
    restart was refused by that limit (a unit settles in `failed` with restarts left only
    when its Restart= rule does not apply, which does not count restarts up). Pure."""
    return (
        state.active_state == "failed"
        and state.start_limit_burst > 0
        and state.n_restarts >= state.start_limit_burst
    )


class UnitState(BaseModel):
    """A unit's state as systemd reports it over D-Bus."""

    model_config = ConfigDict(frozen=True)

    name: str
    load_state: str = ""
    active_state: str = ""
    sub_state: str = ""
    result: str = ""
    n_restarts: int = 0
    main_pid: int = 0
    state_change_usec: int = 0
    job_id: int = 0  # a job systemd is running on the unit; 0: none
    names: tuple[str, ...] = ()  # every name systemd knows the unit by (aliases)
    start_limit_burst: int = 0  # StartLimitBurst; 0: unknown or no limit
    memory_max: int = 0  # MemoryMax in bytes; 0: unknown, 2**64-1: no limit

    @model_validator(mode="after")
    def _start_limit(self) -> UnitState:
        """systemd 252 leaves a unit whose automatic restart its start limit refused with
        the last crash's result (`exit-code`), not `start-limit-hit`: read from the
        counters, it is the start limit (frozen model: set once, here)."""
        if start_limit_refused(self) and self.result != START_LIMIT_HIT:
            object.__setattr__(self, "result", START_LIMIT_HIT)
        return self

    @property
    def healthy(self) -> bool:
        return self.active_state == "active"
