"""The scope lock (DESIGN.md invariant 12), pure: what an incident's evidence names, and
the one test that confirms each kind of problem. Real-systemd and end-to-end proofs are
in tests/test_safety_edges.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from macha_obs.config import AutonomyLevel, Config
from macha_obs.models import (
    Alert,
    Finding,
    FindingKind,
    Incident,
    JournalVacuum,
    NixGc,
    Outcome,
    ResetFailed,
    RestartUnit,
    StartUnit,
    UnitState,
)
from macha_obs.policy.judge import Pause, PolicyContext, judge
from macha_obs.policy.scope import Confirmation, Scope, confirm, out_of_scope
from tests.test_policy import NOW


def alert(name: str, unit: str, *, firing: bool = True) -> Alert:
    return Alert.model_validate(
        {
            "status": "firing" if firing else "resolved",
            "labels": {"alertname": name, "unit": unit},
            "startsAt": "2026-11-25T10:00:00Z",
        }
    )


def state(active: str, sub: str = "", result: str = "success", **kw: object) -> UnitState:
    return UnitState.model_validate(
        {
            "name": "web.service",
            "load_state": "loaded",
            "active_state": active,
            "sub_state": sub or active,
            "result": result,
            **kw,
        }
    )


def test_scope_is_the_units_the_evidence_names() -> None:
    failed = Finding(
        kind=FindingKind.UNIT_FAILED, subject="a.service", unit="a.service", summary="x"
    )
    incident = Incident(
        id="i",
        source="alert",
        alerts=[alert("SlowResponses", "web"), alert("MachaUnitFailed", "b.service")],
        findings=[failed],
    )
    scope = Scope.of([incident])
    assert scope.units == {"a.service", "b.service", "web.service"}
    # running-but-misbehaving: only what a firing non-failure alert names
    assert scope.alerted == {"web.service"}
    assert FindingKind.UNIT_FAILED in scope.kinds


def test_invariant_12_a_unit_named_only_in_log_text_or_by_a_model_is_out_of_scope() -> None:
    incident = Incident(id="i", source="alert", alerts=[alert("MachaUnitFailed", "a.service")])
    scope = Scope.of([incident])
    assert out_of_scope(RestartUnit(unit="a.service"), scope) is None
    why = out_of_scope(RestartUnit(unit="b.service"), scope)
    assert why is not None
    assert "b.service is not named by the incident's evidence" in why
    # no evidence at all: fail closed
    assert out_of_scope(StartUnit(unit="a.service"), None) is not None


def test_invariant_12_space_clean_ups_need_evidence_about_space() -> None:
    units_only = Scope(units=frozenset({"a.service"}), kinds=frozenset({FindingKind.UNIT_FAILED}))
    assert out_of_scope(JournalVacuum(), units_only) is not None
    assert out_of_scope(NixGc(), units_only) is not None
    disk = Scope(kinds=frozenset({FindingKind.DISK_FILLING}))
    assert out_of_scope(JournalVacuum(), disk) is None
    assert (
        out_of_scope(NixGc(older_than_days=30), Scope(kinds=frozenset({FindingKind.INODES_LOW})))
        is None
    )


ALERTED = Scope(units=frozenset({"web.service"}), alerted=frozenset({"web.service"}))
NAMED = Scope(units=frozenset({"web.service"}))


@pytest.mark.parametrize(
    ("seen", "scope", "present"),
    [
        (state("failed", result="exit-code"), NAMED, True),
        (state("failed", result="start-limit-hit"), NAMED, True),
        # a running unit: only a firing alert about it confirms a problem
        (state("active", "running"), ALERTED, True),
        (state("active", "running"), NAMED, False),
        # stopped by a person (inactive, result success): left alone whatever an alert says
        (state("inactive", "dead"), ALERTED, False),
        (state("inactive", "dead"), NAMED, False),
        # systemd (or a person through it) is changing the unit: cannot tell yet
        (state("activating", "start"), NAMED, None),
        (state("active", "running", job_id=42), ALERTED, None),
        (state("failed", job_id=7), NAMED, None),
        (None, NAMED, None),
        (
            UnitState(name="web.service", load_state="not-found", active_state="inactive"),
            NAMED,
            False,
        ),
    ],
)
def test_invariant_12_the_problem_is_confirmed_by_the_test_that_fits_it(
    seen: UnitState | None, scope: Scope, present: bool | None
) -> None:
    got = confirm("web.service", seen, scope)
    assert got.present is present, got.reason


def test_start_limit_is_flagged() -> None:
    assert confirm("web.service", state("failed", result="start-limit-hit"), NAMED).start_limit
    assert not confirm("web.service", state("failed", result="exit-code"), NAMED).start_limit


def verdict(
    cfg: Config, action: RestartUnit | ResetFailed, problem: Confirmation | None, **kw: object
):
    ctx = PolicyContext(config=cfg, now=NOW, pause=kw.pop("pause", None))  # type: ignore[arg-type]
    return judge(action, ctx, scope=NAMED, problem=problem, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("level", [AutonomyLevel.AUTO_SAFE, AutonomyLevel.AUTO_FULL])
def test_invariant_12_unconfirmed_never_executes(
    make_config: Callable[..., Config], level: AutonomyLevel
) -> None:
    cfg = make_config(autonomy_level=level.value)
    action = RestartUnit(unit="web.service")
    assert verdict(cfg, action, Confirmation.confirmed()).outcome is Outcome.EXECUTE
    unknown = verdict(cfg, action, Confirmation(None, "cannot read the state"))
    assert unknown.outcome is Outcome.QUEUE
    assert verdict(cfg, action, None).outcome is Outcome.QUEUE
    gone = verdict(cfg, action, Confirmation(False, "web.service is inactive"))
    assert gone.outcome is Outcome.REFUSE
    # approved: gone refuses (and cancels); unknown keeps the item pending (record)
    assert verdict(cfg, action, Confirmation(False, "x"), approved=True).outcome is Outcome.REFUSE
    assert verdict(cfg, action, Confirmation(None, "x"), approved=True).outcome is Outcome.RECORD


def test_start_limit_is_for_a_human_unless_the_operator_opts_in(
    make_config: Callable[..., Config],
) -> None:
    hit = Confirmation.confirmed("failed (start-limit-hit)", start_limit=True)
    for action in (RestartUnit(unit="web.service"), ResetFailed(unit="web.service")):
        held = verdict(make_config(autonomy_level="auto-full"), action, hit)
        assert held.outcome is Outcome.QUEUE
        assert "start limit" in held.reason
        assert (
            verdict(make_config(autonomy_level="auto-full"), action, hit, approved=True).outcome
            is Outcome.EXECUTE
        )
        opted = make_config(autonomy_level="auto-safe", auto_reset_start_limit=True)
        assert verdict(opted, action, hit).outcome is Outcome.EXECUTE


def test_a_pause_records_what_would_execute_and_still_queues(
    make_config: Callable[..., Config],
) -> None:
    pause = Pause(since=NOW, until=None, reason="maintenance", by="alice")
    action = RestartUnit(unit="web.service")
    paused = verdict(
        make_config(autonomy_level="auto-safe"), action, Confirmation.confirmed(), pause=pause
    )
    assert paused.outcome is Outcome.RECORD
    assert "paused by alice" in paused.reason
    assert "maintenance" in paused.reason
    queued = verdict(
        make_config(autonomy_level="suggest"), action, Confirmation.confirmed(), pause=pause
    )
    assert queued.outcome is Outcome.QUEUE
    approved = verdict(
        make_config(autonomy_level="suggest"),
        action,
        Confirmation.confirmed(),
        pause=pause,
        approved=True,
    )
    assert approved.outcome is Outcome.RECORD  # the item stays pending
    over = Pause(since=NOW.replace(hour=10), until=NOW.replace(hour=11), reason="", by="bob")
    assert (
        verdict(
            make_config(autonomy_level="auto-safe"), action, Confirmation.confirmed(), pause=over
        ).outcome
        is Outcome.EXECUTE
    )


unit_prefix = st.from_regex(r"[a-z][a-z0-9_\-]{0,20}", fullmatch=True)


@given(unit_prefix, st.sampled_from(["service", "socket", "timer", "path"]))
def test_invariant_12_property_any_unit_outside_the_evidence_is_refused(
    prefix: str, kind: str
) -> None:
    unit = f"{prefix}.{kind}"
    scope = Scope(units=frozenset({"named.service"}), alerted=frozenset({"named.service"}))
    cfg = Config(autonomy_level=AutonomyLevel.AUTO_FULL)
    ctx = PolicyContext(config=cfg, now=NOW)
    for action in (RestartUnit(unit=unit), StartUnit(unit=unit), ResetFailed(unit=unit)):
        got = judge(action, ctx, scope=scope, problem=Confirmation.confirmed())
        if unit == "named.service":
            continue
        assert got.outcome is Outcome.REFUSE
        assert "out of scope" in got.reason or "protected" in got.reason
