"""The runbooks that propose patches a person applies: a hardening drop-in for a service
whose exposure marks catalogue settings unsafe, and a MemoryMax raise for a service killed
at its limit again. Pure; the policy judges every proposal (always high risk, never run).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from macha_obs.models import (
    Action,
    FailedUnits,
    FindingKind,
    HardeningKey,
    HardeningSetting,
    HardenUnit,
    Investigate,
    JournalTail,
    TuneUnit,
    UnitExposure,
    UnitStatus,
    memory_raise,
    size_text,
)
from macha_obs.protected import protection

MIB = 1 << 20


def memory_proposals(unit: str | None, details: Mapping[str, object]) -> list[tuple[Action, str]]:
    """A service killed at its own MemoryMax, again (finding unit_oom_at_limit): look at
    what grew, and propose the limit raised by a bounded factor, as a patch."""
    if unit is None:
        return [(Investigate(diagnostic=FailedUnits()), "unit_oom_at_limit without a unit name")]
    found: list[tuple[Action, str]] = [
        (Investigate(diagnostic=JournalTail(unit=unit)), f"{unit} was killed at its MemoryMax")
    ]
    limit = details.get("memory_max")
    if protection(unit) is not None or not isinstance(limit, int) or limit < MIB:
        return found
    raised = memory_raise(limit)
    if raised is not None:
        why = (
            f"{unit} keeps being killed at its MemoryMax ({size_text(limit)}): raise it to "
            f"{size_text(raised)} (a patch for a person)"
        )
        found.append((TuneUnit(unit=unit, memory_max=raised, raised_from=limit), why))
    return found


def exposure_runbook(
    kind: FindingKind, unit: str | None, details: Mapping[str, object], measured: bool
) -> list[tuple[Action, str]]:
    """An exposed service, or one whose exposure rose: a look for a person; where this
    host measured it listening unhardened, also the hardening patch a person applies."""
    if unit is None:
        return [(Investigate(diagnostic=FailedUnits()), f"{kind.value} without a unit name")]
    score, before = details.get("score"), details.get("previous")
    if kind is FindingKind.EXPOSURE_ROSE:
        rose = f" from {before} to {score}" if score is not None else ""
        why = f"{unit}'s exposure rose{rose} after a software change: a person looks"
    else:
        shown = f" {score} {details.get('level', '')}".rstrip() if score is not None else ""
        why = f"{unit} listens beyond loopback, exposure{shown}: a person looks"
    look: list[tuple[Action, str]] = [(Investigate(diagnostic=UnitStatus(unit=unit)), why)]
    if kind is FindingKind.SERVICE_EXPOSED and measured:
        return look + exposure_proposals(unit, details)
    return look


def exposure_proposals(unit: str, details: Mapping[str, object]) -> list[tuple[Action, str]]:
    """A service this host measured listening beyond loopback with a high exposure: the
    catalogue's settings its analysis marked unsafe, as one hardening patch a person
    reads, checks and applies (the policy queues it; it is never run)."""
    rows = details.get("hardenable")
    proposal = hardening_from_rows(unit, rows.split()) if isinstance(rows, str) else None
    if proposal is None:
        return []
    named = ", ".join(s.key.value for s in proposal.settings)
    return [(proposal, f"{unit} listens beyond loopback unhardened: a patch setting {named}")]


# The value the runbooks choose for each catalogue setting a service's exposure marks
# unsafe; the transient copy's check refuses the proposal where one breaks the service.
_HARDEN_VALUES = {
    HardeningKey.NO_NEW_PRIVILEGES: "yes",
    HardeningKey.PROTECT_SYSTEM: "strict",
    HardeningKey.PROTECT_HOME: "yes",
    HardeningKey.PRIVATE_TMP: "yes",
    HardeningKey.PROTECT_KERNEL_TUNABLES: "yes",
    HardeningKey.RESTRICT_ADDRESS_FAMILIES: "AF_UNIX AF_INET AF_INET6",
    HardeningKey.PRIVATE_DEVICES: "yes",
    HardeningKey.PROTECT_CONTROL_GROUPS: "yes",
    HardeningKey.PROTECT_KERNEL_MODULES: "yes",
    HardeningKey.RESTRICT_SUID_SGID: "yes",
    HardeningKey.LOCK_PERSONALITY: "yes",
}


# Rows systemd-analyze keeps unsafe under the value chosen above (a service that listens
# needs AF_INET; local sockets are harmless): not a reason to propose it again.
_LEFT_BY_CHOICE = {"RestrictAddressFamilies=~AF_UNIX", "RestrictAddressFamilies=~AF_(INET|INET6)"}


def hardening_for(unit: str, exposure: UnitExposure) -> HardenUnit | None:
    """The catalogue's settings that `exposure` (systemd-analyze security of `unit`)
    marks unsafe, as one hardening proposal; None for a protected unit, a unit that is
    not a service, or when none of the catalogue's settings is unsafe."""
    return hardening_from_rows(unit, (s.name for s in exposure.settings if s.safe is False))


def hardening_from_rows(unit: str, unsafe_rows: Iterable[str]) -> HardenUnit | None:
    """`hardening_for` from the names of the rows systemd-analyze marked unsafe (as the
    exposure collector's service_exposed finding carries them)."""
    if not unit.endswith(".service") or protection(unit) is not None:
        return None
    unsafe = {row.split("=", 1)[0] for row in unsafe_rows if row not in _LEFT_BY_CHOICE}
    chosen = [
        HardeningSetting(key=key, value=value)
        for key, value in _HARDEN_VALUES.items()
        if key.value in unsafe
    ]
    return HardenUnit(unit=unit, settings=tuple(chosen)) if chosen else None
