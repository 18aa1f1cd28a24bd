"""Judged once from facts gathered once (issue 22): one decision about one action asks
the policy for its risk once and systemd for the unit's state once, and the scope lock,
the verdict and the shadow (what auto-safe would have done) all rest on those facts.

A fix judged in one pass and carried out in another (the lanes') is asked again just
before the side effect: a second decision, by design (invariant 12: at decision time
and again just before execution).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from macha_obs import config as config_mod
from macha_obs.config import Config
from macha_obs.models import Action, Outcome, Proposal, RestartUnit, Risk
from macha_obs.policy.risk import risk_of
from macha_obs.policy.scope import Scope
from macha_obs.remediate.remediator import Remediator
from macha_obs.store import Store
from tests.harness.recording import RecordingExecutor

UNIT = "web.service"
SCOPE = Scope(units=frozenset({UNIT, "sshd.service"}))


class CountingRisk:
    """The policy's risk_of, counting what it was asked."""

    def __init__(self) -> None:
        self.asked: list[Action] = []

    def __call__(self, action: Action, config: Config) -> tuple[Risk, str]:
        self.asked.append(action)
        return risk_of(action, config)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path) as opened:
        yield opened


def remediator(store: Store, autonomy: str) -> tuple[Remediator, CountingRisk, RecordingExecutor]:
    cfg = config_mod.validate({"state_dir": str(store.state_dir), "autonomy_level": autonomy})
    counting, executor = CountingRisk(), RecordingExecutor()
    rem = Remediator(cfg, store, executor, scope_of=lambda _ids: SCOPE, risk=counting)
    return rem, counting, executor


def verdict_lines(store: Store) -> list[dict[str, object]]:
    lines = store.audit.decisions_log.read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == "verdict"]


def test_a_decision_with_its_shadow_asks_for_the_risk_and_the_state_once(store: Store) -> None:
    rem, counting, executor = remediator(store, "suggest")
    verdict = rem.decide("inc", Proposal(action=RestartUnit(unit=UNIT)), SCOPE)
    assert verdict.outcome is Outcome.QUEUE
    assert verdict.risk is Risk.LOW
    assert counting.asked == [RestartUnit(unit=UNIT)]
    assert executor.looked_up == [UNIT]
    # the shadow judged the same facts: auto-safe would have restarted the failed unit
    assert verdict_lines(store)[-1]["shadow_auto_safe"] == "execute"


def test_a_fix_decided_and_run_at_once_is_judged_once(store: Store) -> None:
    rem, counting, executor = remediator(store, "auto-safe")
    handled = rem.handle("inc", Proposal(action=RestartUnit(unit=UNIT)), SCOPE)
    assert handled.result is not None
    assert handled.result.ok
    assert counting.asked == [RestartUnit(unit=UNIT)]
    assert executor.looked_up == [UNIT]


def test_a_judged_fix_run_later_gathers_its_facts_again(store: Store) -> None:
    rem, counting, executor = remediator(store, "auto-safe")
    proposal = Proposal(action=RestartUnit(unit=UNIT))
    verdict = rem.decide("inc", proposal, SCOPE)
    ((_, handled),) = rem.act("inc", [(proposal, verdict)], SCOPE, alert_driven=False, settle=None)
    assert handled.result is not None
    assert handled.result.ok
    assert len(counting.asked) == 2  # when decided, and again just before it ran
    assert executor.looked_up == [UNIT, UNIT]


def test_an_approval_is_judged_once(store: Store) -> None:
    rem, counting, executor = remediator(store, "suggest")
    rem.handle("inc", Proposal(action=RestartUnit(unit=UNIT)), SCOPE)
    (pending,) = store.approvals.list_approvals()
    counting.asked.clear()
    executor.looked_up.clear()
    handled = rem.approve(pending.id, by="tester")
    assert handled.verdict.outcome is Outcome.EXECUTE
    assert counting.asked == [RestartUnit(unit=UNIT)]
    assert executor.looked_up == [UNIT]


def test_a_protected_unit_is_judged_once_and_never_looked_at(store: Store) -> None:
    rem, counting, executor = remediator(store, "suggest")
    verdict = rem.decide("inc", Proposal(action=RestartUnit(unit="sshd.service")), SCOPE)
    assert verdict.outcome is Outcome.REFUSE
    assert verdict.risk is Risk.FORBIDDEN
    assert len(counting.asked) == 1
    assert executor.looked_up == []
