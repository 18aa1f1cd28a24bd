"""Did the fix work (verify.py), through a recording executor: no systemd, a real ledger.

The breaker's rule, state and reset; what counts as a verification; escalation of a fix
that did not hold; alert-driven fixes waiting for their alert to resolve. Tests named
`test_invariant_N_*` prove DESIGN.md invariants.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from macha_obs.config import AutonomyLevel, Config
from macha_obs.intake.incidents import IncidentStore
from macha_obs.models import (
    ActionStatus,
    ApprovalStatus,
    ExecutionResult,
    Finding,
    FindingKind,
    Investigate,
    JournalTail,
    Outcome,
    Proposal,
    RestartUnit,
)
from macha_obs.policy.judge import effective_autonomy
from macha_obs.remediate.remediator import Remediator
from macha_obs.remediate.verify import Breaker, Verifier, breaker_rule
from macha_obs.store import Store
from tests.harness.recording import RecordingExecutor

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


class Clock:
    """Starts at the store's own time (it stamps the ledger); moved by the test."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "state") as store:
        yield store


def failing_incident(store: Store, unit: str) -> str:
    finding = Finding(kind=FindingKind.UNIT_FAILED, subject=unit, unit=unit, summary="failed")
    incident_id, _ = IncidentStore(store).open_for_findings(unit, [finding])
    return incident_id


def remediator(
    cfg: Config, store: Store, executor: RecordingExecutor, clock: Clock | None = None
) -> Remediator:
    return Remediator(
        cfg, store, executor, scope_of=IncidentStore(store).scope_of, clock=clock or Clock()
    )


def actions_log(store: Store) -> list[dict[str, object]]:
    return [json.loads(x) for x in store.audit.actions_log.read_text().splitlines()]


def test_invariant_7_breaker_rule_opens_after_k_failures_in_the_window(
    make_config: Callable[..., Config],
) -> None:
    cfg = make_config(autonomy_level="auto-full", breaker_threshold=3, breaker_window=3600)
    failures = [NOW - timedelta(minutes=m) for m in (1, 2)]
    assert not breaker_rule(failures, opened=False, config=cfg, now=NOW).open
    failures.append(NOW - timedelta(minutes=3))
    state = breaker_rule(failures, opened=False, config=cfg, now=NOW)
    assert state.open
    assert effective_autonomy(cfg, state) is AutonomyLevel.SUGGEST
    # old failures outside the window do not count ...
    old = [NOW - timedelta(hours=3)] * 5
    assert not breaker_rule(old, opened=False, config=cfg, now=NOW).open
    # ... but once opened (persisted), it stays open until a human resets it
    assert breaker_rule(old, opened=True, config=cfg, now=NOW).open


def test_invariant_7_breaker_opens_persists_and_only_a_reset_closes_it(
    make_config: Callable[..., Config], ledger: Store
) -> None:
    cfg = make_config(autonomy_level="auto-safe", breaker_threshold=2)
    verifier = Verifier(cfg, ledger)
    failed = ExecutionResult(ok=True, verified=False, detail="failed again")
    for action_id in (1, 2):
        verifier.record(RestartUnit(unit="web.service"), action_id, failed)
    assert verifier.breaker.state().open
    assert [e["event"] for e in actions_log(ledger)] == ["breaker_open"]
    assert Breaker(cfg, ledger).state().open  # a new process reads it from the ledger
    Breaker(cfg, ledger).reset("alice")
    state = Breaker(cfg, ledger).state()
    assert not state.open
    assert state.failures == 0  # failures before the reset no longer count
    last = actions_log(ledger)[-1]
    assert (last["event"], last["by"]) == ("breaker_reset", "alice")


def test_diagnostic_is_never_a_verification(
    make_config: Callable[..., Config], ledger: Store
) -> None:
    cfg = make_config(breaker_threshold=1)
    verifier = Verifier(cfg, ledger)
    look = Investigate(diagnostic=JournalTail(unit="web.service"))
    verifier.record(look, 1, ExecutionResult(ok=False, detail="journal unreadable"))
    assert ledger.verifications.failed_verifications() == []
    assert not verifier.breaker.state().open


def test_fix_that_does_not_hold_is_escalated_and_feeds_the_breaker(
    make_config: Callable[..., Config], ledger: Store
) -> None:
    cfg = make_config(autonomy_level="auto-safe", breaker_threshold=1)
    executor = RecordingExecutor(holds=False)
    rem = remediator(cfg, ledger, executor)
    incident_id = failing_incident(ledger, "web.service")
    scope = IncidentStore(ledger).scope_of([incident_id])

    handled = rem.handle(incident_id, Proposal(action=RestartUnit(unit="web.service")), scope)

    assert handled.verdict.outcome is Outcome.EXECUTE
    assert handled.result is not None
    assert not handled.result.verified
    assert handled.escalation is not None
    [pending] = ledger.approvals.list_approvals({ApprovalStatus.PENDING})
    assert pending.id == handled.escalation.id
    assert pending.reason.startswith("escalated: automatic restart_unit web.service failed")
    [record] = ledger.ledger.list_actions()
    assert record.status is ActionStatus.FAILED
    assert rem.breaker().open
    # the next attempt is capped at suggest: queued (the same pending item), not run
    again = rem.handle(incident_id, Proposal(action=RestartUnit(unit="web.service")), scope)
    assert again.verdict.outcome is Outcome.QUEUE
    assert len(executor.ran) == 1


def test_alert_driven_fix_waits_for_its_alert_and_is_escalated_when_it_stays(
    make_config: Callable[..., Config], ledger: Store
) -> None:
    cfg = make_config(autonomy_level="auto-safe", alert_verify_window=60)
    clock = Clock()
    rem = remediator(cfg, ledger, RecordingExecutor(), clock)
    incident_id = failing_incident(ledger, "web.service")
    scope = IncidentStore(ledger).scope_of([incident_id])
    proposal = Proposal(action=RestartUnit(unit="web.service"))

    handled = rem.carry_out(incident_id, proposal, scope, alert_driven=True)

    assert handled.escalation is None
    assert [w.incident_id for w in rem.verifier.watching] == [incident_id]
    assert rem.settle_verifications(lambda _id: True) == []  # within its window: waits
    clock.now += 61
    [escalated] = rem.settle_verifications(lambda _id: True)  # the alert still fires
    assert "the alert did not resolve within 60s" in escalated.reason
    assert rem.verifier.watching == []
    assert len(ledger.verifications.failed_verifications()) == 1
    # the learning record counts it against the fix too: it ran, held, then did not
    [record] = [r for r in ledger.outcomes.fix_records() if r.fix.kind == "restart_unit"]
    assert (record.auto_executed, record.verified, record.failed_verification) == (1, 1, 1)


def test_alert_driven_fix_whose_alert_resolved_is_done(
    make_config: Callable[..., Config], ledger: Store
) -> None:
    cfg = make_config(autonomy_level="auto-safe")
    rem = remediator(cfg, ledger, RecordingExecutor())
    incident_id = failing_incident(ledger, "web.service")
    scope = IncidentStore(ledger).scope_of([incident_id])
    rem.carry_out(
        incident_id, Proposal(action=RestartUnit(unit="web.service")), scope, alert_driven=True
    )
    assert rem.settle_verifications(lambda _id: False) == []
    assert rem.verifier.watching == []
    assert actions_log(ledger)[-1]["event"] == "alert_resolved"
    assert ledger.verifications.failed_verifications() == []
