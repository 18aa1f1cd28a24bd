"""Policy: the autonomy matrix, risk, protected units, rate limits and the breaker.

Table-driven over every autonomy level x risk, with and without protection, rate
limits and an open breaker. Tests named `test_invariant_N_*` prove DESIGN.md invariants.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from macha_obs.config import AutonomyLevel, Config
from macha_obs.models import (
    UNIT_ACTIONS,
    Action,
    ConfigChange,
    DiskUsage,
    Execution,
    FindingKind,
    Investigate,
    JournalVacuum,
    NixGc,
    NixRebuild,
    NixRollback,
    Outcome,
    ResetFailed,
    RestartUnit,
    Risk,
    StartUnit,
    Verdict,
)
from macha_obs.policy.judge import BreakerState, PolicyContext, effective_autonomy
from macha_obs.policy.judge import judge as policy_judge
from macha_obs.policy.risk import risk_of
from macha_obs.policy.scope import Confirmation, Scope

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

BY_RISK: dict[Risk, Action] = {
    Risk.LOW: RestartUnit(unit="nginx.service"),
    Risk.MEDIUM: NixGc(older_than_days=14),
    Risk.HIGH: NixRebuild(mode="switch"),
    Risk.FORBIDDEN: RestartUnit(unit="sshd.service"),
}

# (autonomy, risk) -> outcome, straight from DESIGN.md invariant 4
MATRIX: dict[tuple[AutonomyLevel, Risk], Outcome] = {
    (AutonomyLevel.OBSERVE, Risk.LOW): Outcome.RECORD,
    (AutonomyLevel.OBSERVE, Risk.MEDIUM): Outcome.RECORD,
    (AutonomyLevel.OBSERVE, Risk.HIGH): Outcome.RECORD,
    (AutonomyLevel.OBSERVE, Risk.FORBIDDEN): Outcome.REFUSE,
    (AutonomyLevel.SUGGEST, Risk.LOW): Outcome.QUEUE,
    (AutonomyLevel.SUGGEST, Risk.MEDIUM): Outcome.QUEUE,
    (AutonomyLevel.SUGGEST, Risk.HIGH): Outcome.QUEUE,
    (AutonomyLevel.SUGGEST, Risk.FORBIDDEN): Outcome.REFUSE,
    (AutonomyLevel.AUTO_SAFE, Risk.LOW): Outcome.EXECUTE,
    (AutonomyLevel.AUTO_SAFE, Risk.MEDIUM): Outcome.QUEUE,
    (AutonomyLevel.AUTO_SAFE, Risk.HIGH): Outcome.QUEUE,
    (AutonomyLevel.AUTO_SAFE, Risk.FORBIDDEN): Outcome.REFUSE,
    (AutonomyLevel.AUTO_FULL, Risk.LOW): Outcome.EXECUTE,
    (AutonomyLevel.AUTO_FULL, Risk.MEDIUM): Outcome.EXECUTE,
    (AutonomyLevel.AUTO_FULL, Risk.HIGH): Outcome.QUEUE,
    (AutonomyLevel.AUTO_FULL, Risk.FORBIDDEN): Outcome.REFUSE,
}


def in_scope(action: Action) -> Scope:
    """Evidence that names the action's unit and says space is short."""
    units = frozenset({action.unit}) if isinstance(action, UNIT_ACTIONS) else frozenset()
    return Scope(units=units, kinds=frozenset({FindingKind.DISK_FILLING}))


def judge(
    action: Action,
    context: PolicyContext,
    *,
    approved: bool = False,
    problem_present: bool | None = True,
) -> Verdict:
    """The policy's judge with the scope lock satisfied: the incident names the unit and
    systemd confirms the problem (or, with problem_present=False, says it is gone). The
    scope lock itself is tested in tests/test_scope.py."""
    problem = Confirmation(problem_present, "systemd says so")
    return policy_judge(action, context, approved=approved, scope=in_scope(action), problem=problem)


def ctx(
    cfg: Config, recent: tuple[Execution, ...] = (), breaker: BreakerState | None = None
) -> PolicyContext:
    return PolicyContext(config=cfg, now=NOW, recent=recent, breaker=breaker or BreakerState())


def full_limits(action: Action, per_target: int) -> tuple[Execution, ...]:
    return tuple(
        Execution(action.kind, action.target, NOW - timedelta(minutes=5 + i))
        for i in range(per_target)
    )


CASES = list(itertools.product(AutonomyLevel, Risk, [False, True], [False, True]))


@pytest.mark.parametrize(("autonomy", "risk", "rate_limited", "breaker_open"), CASES)
def test_invariant_4_autonomy_matrix(
    make_config: Callable[..., Config],
    autonomy: AutonomyLevel,
    risk: Risk,
    rate_limited: bool,
    breaker_open: bool,
) -> None:
    cfg = make_config(autonomy_level=autonomy.value)
    action = BY_RISK[risk]
    recent = full_limits(action, cfg.max_actions_per_target_per_hour) if rate_limited else ()
    breaker = BreakerState(True, 3, "test") if breaker_open else BreakerState()
    verdict = judge(action, ctx(cfg, recent, breaker))

    assert verdict.risk is risk
    effective = autonomy
    if breaker_open and autonomy in (AutonomyLevel.AUTO_SAFE, AutonomyLevel.AUTO_FULL):
        effective = AutonomyLevel.SUGGEST
    expected = MATRIX[(effective, risk)]
    if rate_limited and expected in (Outcome.EXECUTE, Outcome.QUEUE):
        expected = Outcome.REFUSE
    assert verdict.outcome is expected, verdict.reason
    assert verdict.autonomy is effective
    assert verdict.reason  # every verdict says why, in words


def test_invariant_4_nothing_refused_for_autonomy_is_dropped(
    make_config: Callable[..., Config],
) -> None:
    """Below the level that would execute, the outcome is QUEUE (or RECORD in observe)."""
    for autonomy, risk in MATRIX:
        if risk is Risk.FORBIDDEN:
            continue
        verdict = judge(BY_RISK[risk], ctx(make_config(autonomy_level=autonomy.value)))
        assert verdict.outcome is not Outcome.REFUSE, (autonomy, risk, verdict.reason)


@pytest.mark.parametrize(
    ("action", "risk"),
    [
        (RestartUnit(unit="nginx.service"), Risk.LOW),
        (StartUnit(unit="ollama.service"), Risk.LOW),
        (ResetFailed(unit="backup.service"), Risk.LOW),
        (RestartUnit(unit="backup.timer"), Risk.LOW),
        (RestartUnit(unit="multi-user.target"), Risk.FORBIDDEN),
        (RestartUnit(unit="backup.target"), Risk.FORBIDDEN),
        (RestartUnit(unit="home.mount"), Risk.HIGH),
        (StartUnit(unit="swapfile.swap"), Risk.HIGH),
        (RestartUnit(unit="user.slice"), Risk.FORBIDDEN),
        (Investigate(diagnostic=DiskUsage()), Risk.LOW),
        (JournalVacuum(max_size_mb=200), Risk.LOW),
        (NixGc(), Risk.LOW),
        (NixGc(older_than_days=30), Risk.MEDIUM),
        (NixRebuild(mode="dry-build"), Risk.LOW),
        (NixRebuild(mode="switch"), Risk.HIGH),
        (NixRebuild(mode="boot"), Risk.HIGH),
        (NixRollback(), Risk.HIGH),
        (ConfigChange(path="/etc/nixos/configuration.nix", diff="-a\n+b"), Risk.HIGH),
    ],
)
def test_invariant_2_risk_is_computed_from_action_and_target(
    make_config: Callable[..., Config], action: Action, risk: Risk
) -> None:
    got, why = risk_of(action, make_config())
    assert got is risk
    assert why


def test_invariant_2_risk_has_no_input_from_the_model() -> None:
    """The action types carry no risk field a model could fill."""
    for action in BY_RISK.values():
        assert "risk" not in type(action).model_fields


PROTECTED = [
    "sshd.service",
    "ssh.service",
    "sshd@42-10.0.0.1:22.service",
    "systemd-networkd.service",
    "NetworkManager.service",
    "systemd-resolved.service",
    "wpa_supplicant.service",
    "dbus.service",
    "dbus-broker.service",
    "systemd-journald.service",
    "systemd-logind.service",
    "systemd-udevd.service",
    "nix-daemon.service",
    "macha-autonomous.service",
    "dhcpcd.service",
]


@pytest.mark.parametrize("unit", PROTECTED)
@pytest.mark.parametrize("autonomy", list(AutonomyLevel))
@pytest.mark.parametrize("kind", [RestartUnit, StartUnit, ResetFailed])
def test_invariant_3_protected_units_refused_at_every_level(
    make_config: Callable[..., Config],
    unit: str,
    autonomy: AutonomyLevel,
    kind: type[RestartUnit | StartUnit | ResetFailed],
) -> None:
    cfg = make_config(autonomy_level=autonomy.value)
    action = kind(unit=unit)
    assert judge(action, ctx(cfg)).outcome is Outcome.REFUSE
    approved = judge(action, ctx(cfg), approved=True, problem_present=True)
    assert approved.outcome is Outcome.REFUSE
    assert "protected" in approved.reason


@pytest.mark.parametrize(
    "unit",
    ["fussh.service", "my-sshd-exporter.service", "dbus-monitor-x.service", "ollama.service"],
)
def test_invariant_3_protection_is_never_by_substring(
    make_config: Callable[..., Config], unit: str
) -> None:
    cfg = make_config(autonomy_level="auto-safe")
    assert judge(RestartUnit(unit=unit), ctx(cfg)).outcome is Outcome.EXECUTE


def test_invariant_3_user_globs_protect_exactly(make_config: Callable[..., Config]) -> None:
    cfg = make_config(autonomy_level="auto-full", protected_units=["postgresql*.service"])
    assert judge(RestartUnit(unit="postgresql.service"), ctx(cfg)).outcome is Outcome.REFUSE
    assert judge(RestartUnit(unit="postgresql-14.service"), ctx(cfg)).outcome is Outcome.REFUSE
    assert judge(RestartUnit(unit="mypostgresql.service"), ctx(cfg)).outcome is Outcome.EXECUTE


def test_rate_limit_per_target(make_config: Callable[..., Config]) -> None:
    cfg = make_config(autonomy_level="auto-safe", max_actions_per_target_per_hour=3)
    action = RestartUnit(unit="nginx.service")
    two = full_limits(action, 2)
    assert judge(action, ctx(cfg, two)).outcome is Outcome.EXECUTE
    three = full_limits(action, 3)
    verdict = judge(action, ctx(cfg, three))
    assert verdict.outcome is Outcome.REFUSE
    assert verdict.rate_limited
    assert "nginx.service" in verdict.reason
    # another unit is not limited by nginx's restarts
    assert judge(RestartUnit(unit="other.service"), ctx(cfg, three)).outcome is Outcome.EXECUTE
    # outside the hour window they no longer count
    old = tuple(Execution(e.kind, e.target, e.at - timedelta(hours=2)) for e in three)
    assert judge(action, ctx(cfg, old)).outcome is Outcome.EXECUTE


def test_rate_limit_counts_every_verb_on_one_unit(make_config: Callable[..., Config]) -> None:
    """systemd's reset-failed + start after it gave up counts like a restart (issue 5)."""
    cfg = make_config(autonomy_level="auto-safe", max_actions_per_target_per_hour=3)
    recent = (
        Execution("restart_unit", "nginx.service", NOW - timedelta(minutes=1)),
        Execution("start_unit", "nginx.service", NOW - timedelta(minutes=2)),
        Execution("reset_failed", "nginx.service", NOW - timedelta(minutes=3)),
    )
    verdict = judge(ResetFailed(unit="nginx.service"), ctx(cfg, recent))
    assert verdict.rate_limited
    assert "unit actions on nginx.service" in verdict.reason


def test_rate_limit_global(make_config: Callable[..., Config]) -> None:
    cfg = make_config(autonomy_level="auto-safe", max_actions_per_hour=10)
    recent = tuple(
        Execution("restart_unit", f"u{i}.service", NOW - timedelta(minutes=i)) for i in range(10)
    )
    verdict = judge(RestartUnit(unit="new.service"), ctx(cfg, recent))
    assert verdict.outcome is Outcome.REFUSE
    assert "global limit" in verdict.reason


def test_investigations_are_not_rate_limited(make_config: Callable[..., Config]) -> None:
    cfg = make_config(autonomy_level="auto-safe", max_actions_per_hour=0)
    verdict = judge(Investigate(diagnostic=DiskUsage()), ctx(cfg))
    assert verdict.outcome is Outcome.EXECUTE


def test_invariant_5_approval_reruns_policy(make_config: Callable[..., Config]) -> None:
    cfg = make_config(autonomy_level="suggest")
    action = RestartUnit(unit="nginx.service")
    assert judge(action, ctx(cfg), approved=True).outcome is Outcome.EXECUTE
    limited = judge(action, ctx(cfg, full_limits(action, 3)), approved=True)
    assert limited.outcome is Outcome.REFUSE
    assert limited.rate_limited
    gone = judge(action, ctx(cfg), approved=True, problem_present=False)
    assert gone.outcome is Outcome.REFUSE
    assert "no longer there" in gone.reason
    observe = judge(action, ctx(make_config(autonomy_level="observe")), approved=True)
    assert observe.outcome is Outcome.RECORD


def test_config_change_is_queued_never_executed(make_config: Callable[..., Config]) -> None:
    change = ConfigChange(path="/etc/nixos/configuration.nix", diff="+services.x.enable = true;")
    for autonomy in AutonomyLevel:
        verdict = judge(change, ctx(make_config(autonomy_level=autonomy.value)))
        assert verdict.outcome is not Outcome.EXECUTE


def test_breaker_never_raises_autonomy(make_config: Callable[..., Config]) -> None:
    for autonomy in (AutonomyLevel.OBSERVE, AutonomyLevel.SUGGEST):
        cfg = make_config(autonomy_level=autonomy.value)
        assert effective_autonomy(cfg, BreakerState(True, 9, "x")) is autonomy


def test_held_for_human_only_ever_turns_execute_into_queue() -> None:
    from macha_obs.policy.judge import held_for_human

    run = Verdict(
        outcome=Outcome.EXECUTE, risk=Risk.LOW, reason="r", autonomy=AutonomyLevel.AUTO_SAFE
    )
    held = held_for_human(run, "3 hosts acted within the hour")
    assert held.outcome is Outcome.QUEUE
    assert held.reason == "queued for a human: 3 hosts acted within the hour"
    assert (held.risk, held.autonomy) == (run.risk, run.autonomy)
    for outcome in (Outcome.QUEUE, Outcome.RECORD, Outcome.REFUSE):
        other = run.model_copy(update={"outcome": outcome})
        assert held_for_human(other, "x") is other  # never toward permission
