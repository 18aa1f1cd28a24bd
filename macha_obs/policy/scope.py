"""The scope lock (DESIGN.md invariant 12): what an incident's own evidence is about, and
whether the problem is still there. Pure.

A unit is in scope only when the incident's evidence names it: an alert's `unit`/`name`
label or a collector's finding. Log text and model answers never widen the scope, so a
journal line in unit A that names unit B cannot get B restarted.

The problem is confirmed by the one test that fits it, at decision time and again just
before execution (approvals included):
- a failed unit, by systemd saying `failed`;
- a running unit that an alert says misbehaves (prometheus-am-executor's case), by that
  alert still firing;
- a unit a person stopped (inactive) is left alone, whatever an alert says.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from macha_obs.models import (
    UNIT_ACTIONS,
    Action,
    Alert,
    FindingKind,
    Incident,
    JournalVacuum,
    NixGc,
    UnitState,
)

# Alert names → the finding kind they report. Order matters: the first match wins
# ("InodesFilling" is about inodes, not disk space). A `macha_finding` label overrides.
_ALERT_PATTERNS: tuple[tuple[FindingKind, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern, re.I))
    for kind, pattern in (
        (FindingKind.INODES_LOW, r"inode|out.?of.?files"),
        (FindingKind.UNIT_FLAPPING, r"flap|restart.?loop|crash.?loop|too.?many.?restarts"),
        (FindingKind.UNIT_FAILED, r"unit.?fail|fail.*unit|service.?(failed|down)|systemd.*fail"),
        (FindingKind.DISK_FILLING, r"disk|filesystem|space|storage"),
        (FindingKind.MEMORY_PRESSURE, r"memory|oom|swap"),
        (FindingKind.JOURNAL_ERROR_BURST, r"journal|log.?errors?|error.?burst"),
        (FindingKind.DNS_FAILING, r"dns|resolv"),
        (FindingKind.TARGET_UNREACHABLE, r"unreachable|probe.?fail|target.?down|endpoint.?down"),
        (FindingKind.UNEXPECTED_REBOOT, r"reboot"),
    )
)

# Clean-ups of the whole host are in scope only when the evidence says space is short.
_SPACE_KINDS = frozenset({FindingKind.DISK_FILLING, FindingKind.INODES_LOW})

# systemd is still working on these units (Restart=, a queued start): not ours yet.
SYSTEMD_BUSY_STATES = frozenset({"activating", "deactivating", "reloading"})
SYSTEMD_BUSY_SUBSTATES = frozenset(
    {"auto-restart", "start-pre", "start", "start-post", "stop-sigterm"}
)
START_LIMIT_HIT = "start-limit-hit"


def classify_alert(alert: Alert) -> FindingKind | None:
    explicit = alert.labels.get("macha_finding", "")
    if explicit in FindingKind._value2member_map_:
        return FindingKind(explicit)
    for kind, pattern in _ALERT_PATTERNS:
        if pattern.search(alert.alertname):
            return kind
    return None


@dataclass(frozen=True)
class Scope:
    """What the evidence of one or more incidents names, and what it says is wrong."""

    units: frozenset[str] = frozenset()
    # units a firing alert says misbehave while running (not "it failed": systemd says that)
    alerted: frozenset[str] = frozenset()
    kinds: frozenset[FindingKind] = frozenset()

    @classmethod
    def of(cls, incidents: Iterable[Incident]) -> Scope:
        units: set[str] = set()
        alerted: set[str] = set()
        kinds: set[FindingKind] = set()
        for incident in incidents:
            units.update(incident.units)
            for finding in incident.findings:
                kinds.add(finding.kind)
            for alert in incident.alerts:
                if not alert.firing:
                    continue
                kind = classify_alert(alert)
                if kind is not None:
                    kinds.add(kind)
                if alert.unit and kind is not FindingKind.UNIT_FAILED:
                    alerted.add(alert.unit)
        return cls(frozenset(units), frozenset(alerted), frozenset(kinds))

    def describe(self) -> str:
        return ", ".join(sorted(self.units)) or "no unit"


def out_of_scope(action: Action, scope: Scope | None) -> str | None:
    """Why `action` is outside the incident's evidence, or None when it is inside."""
    if isinstance(action, UNIT_ACTIONS):
        if scope is None:
            return f"no incident evidence names {action.unit}"
        if action.unit not in scope.units:
            return (
                f"{action.unit} is not named by the incident's evidence (which names "
                f"{scope.describe()}); a unit named only in log text or by a model is never "
                f"acted on"
            )
        return None
    if isinstance(action, JournalVacuum | NixGc) and (
        scope is None or not scope.kinds & _SPACE_KINDS
    ):
        return f"{action.kind} frees space, and the incident's evidence is not about space"
    return None


@dataclass(frozen=True)
class Confirmation:
    """Is the problem an action on one unit would fix still there? None: cannot tell now."""

    present: bool | None
    reason: str
    start_limit: bool = False

    @classmethod
    def confirmed(cls, reason: str = "confirmed", *, start_limit: bool = False) -> Confirmation:
        return cls(True, reason, start_limit)


def systemd_busy(state: UnitState) -> bool:
    """systemd (or a person through it) is changing the unit right now."""
    return (
        state.active_state in SYSTEMD_BUSY_STATES
        or state.sub_state in SYSTEMD_BUSY_SUBSTATES
        or state.job_id != 0
    )


def confirm(unit: str, state: UnitState | None, scope: Scope) -> Confirmation:
    """The scope lock's problem test for `unit`, from systemd's state and the alerts."""
    if state is None:
        return Confirmation(None, f"cannot read the state of {unit} now")
    if state.load_state not in ("loaded", ""):
        return Confirmation(False, f"{unit} is {state.load_state}")
    if systemd_busy(state):
        return Confirmation(
            None,
            f"systemd is changing {unit} ({state.active_state}/{state.sub_state}"
            + (f", job {state.job_id}" if state.job_id else "")
            + "): left alone until it settles",
        )
    if state.active_state == "failed":
        return Confirmation(
            True,
            f"systemd reports {unit} failed (result {state.result or '-'})",
            start_limit=state.result == START_LIMIT_HIT,
        )
    if state.active_state == "active":
        if unit in scope.alerted:
            return Confirmation(True, f"{unit} is running and an alert about it still fires")
        return Confirmation(False, f"{unit} is active and no alert about it is firing")
    if state.active_state == "inactive":
        return Confirmation(
            False,
            f"{unit} is inactive (result {state.result or 'success'}): stopped by a person "
            f"or finished; left alone whatever an alert says",
        )
    return Confirmation(None, f"{unit} is {state.active_state}/{state.sub_state}")
