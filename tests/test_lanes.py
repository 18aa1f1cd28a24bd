"""The orchestrator's state machine and its two lanes, through a recording executor.

No systemd: the executor seam records what would run (tests/harness/recording.py) and
the model is a chat client the test holds on a threading.Event. Proven here: a fix the
runbooks know runs while a model call is still in flight; the model's answer adds to it
but never runs it twice; what waits for a human is queued once, with the incident
marked analysed; and the orchestrator hands every queue, ledger and executor matter to
the remediator.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from macha_obs import orchestrator as orchestrator_mod
from macha_obs.agent.analyze import Analyzer
from macha_obs.config import AnalysisMode, Config
from macha_obs.intake.incidents import IncidentStore
from macha_obs.lanes import needs_model
from macha_obs.models import (
    ActionStatus,
    ApprovalStatus,
    Assessment,
    Decision,
    DecisionSource,
    RestartUnit,
)
from macha_obs.orchestrator import Orchestrator
from macha_obs.remediate.remediator import Remediator
from macha_obs.store import Store
from macha_obs.systemd.events import UnitEvent
from tests.harness.recording import BlockedChat, RecordingExecutor
from tests.harness.stack import poll
from tests.test_agent import answer

RESTART_WEB = {"kind": "restart_unit", "unit": "web.service"}
LOOK_AT_WEB = {"kind": "investigate", "tool": "journal_tail", "unit": "web.service"}


@dataclass
class Rig:
    orchestrator: Orchestrator
    executor: RecordingExecutor
    chat: BlockedChat
    store: Store

    def fail(self, unit: str) -> None:
        """systemd says `unit` entered failed (the D-Bus event path)."""
        self.orchestrator.note_unit_event(UnitEvent(unit, "failed", "failed", at=0.0))

    def audit(self, name: str = "decisions.jsonl") -> list[dict[str, object]]:
        path = self.store.state_dir / name
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def rig(make_config: Callable[..., Config], tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(reply: str = answer(RESTART_WEB), **overrides: object) -> Rig:
        settings: dict[str, object] = {
            "autonomy_level": "auto-safe",
            "analysis": "llm-first",
            "max_actions_per_target_per_hour": 100,
            **overrides,
        }
        cfg = make_config(**settings)
        store = Store(cfg.state_dir)
        incidents = IncidentStore(store)
        executor = RecordingExecutor()
        chat = BlockedChat(reply)
        analyzer = Analyzer(
            mode=cfg.analysis, client=chat, hostname="testhost", audit=store.audit.audit_decision
        )
        remediator = Remediator(cfg, store, executor, scope_of=incidents.scope_of)
        orchestrator = Orchestrator(
            cfg, store, incidents, analyzer, remediator, snapshot=lambda: None
        )
        made.append(Rig(orchestrator, executor, chat, store))
        return made[-1]

    yield make
    for r in made:
        r.chat.release.set()
        r.orchestrator.stop(timeout=5)
        r.store.close()


def test_event_path_fix_runs_while_the_model_is_busy_with_another_incident(
    rig: Callable[..., Rig],
) -> None:
    r = rig()
    r.orchestrator.start()
    r.fail("db.service")
    assert r.chat.asked.wait(timeout=30)  # the model is now held on db.service's analysis
    r.fail("web.service")

    assert poll(lambda: r.executor.fixed("web.service"), timeout=30)
    assert not r.chat.release.is_set()  # ... and the model has still not answered
    assert r.chat.calls == 1
    assert r.orchestrator.analysis.busy()
    web = [a for a in r.store.ledger.list_actions() if a.action.target == "web.service"]
    assert [a.status for a in web] == [ActionStatus.SUCCEEDED]

    r.chat.release.set()
    assert poll(lambda: not r.orchestrator.incidents.pending_analysis(), timeout=30)
    # the model proposed the same restart of web.service: judged before, not run again
    assert [a.target for a in r.executor.ran].count("web.service") == 1


def test_without_a_model_the_runbooks_answer_is_the_analysis_carried_out_whole(
    rig: Callable[..., Rig],
) -> None:
    r = rig(analysis="runbooks-only")
    r.fail("web.service")
    report = r.orchestrator.run_cycle("event")
    assert r.chat.calls == 0
    [(_, decision)] = report.analysed
    assert decision.source is DecisionSource.RUNBOOKS
    [(_, proposal, handled)] = report.handled
    assert proposal.action == RestartUnit(unit="web.service")
    assert handled.result is not None
    assert handled.result.verified
    assert r.orchestrator.incidents.pending_analysis() == []
    # invariant 10: the decision before its verdict, the verdict before the intent
    events = [e["event"] for e in r.audit()]
    assert events == ["decision", "verdict"]
    assert [e["event"] for e in r.audit("actions.jsonl")] == ["intent", "outcome"]


def test_the_models_answer_adds_to_the_fast_lane_and_never_repeats_it(
    rig: Callable[..., Rig],
) -> None:
    r = rig(reply=answer(RESTART_WEB, LOOK_AT_WEB))
    r.chat.release.set()  # inline: the cycle runs both lanes in order
    r.fail("web.service")
    report = r.orchestrator.run_cycle("event")
    kinds = [a.kind for a in r.executor.ran]
    assert kinds == ["restart_unit", "investigate"]  # the fast fix first, then the model's
    [fast, full] = [d for _, d in report.analysed]
    assert (fast.source, full.source) == (DecisionSource.RUNBOOKS, DecisionSource.LLM)
    decisions = [e for e in r.audit() if e["event"] == "decision"]
    assert [d.get("lane") for d in decisions] == ["fast", None]
    verdicts = [e["label"] for e in r.audit() if e["event"] == "verdict"]
    assert verdicts.count("restart_unit web.service") == 1  # judged once
    assert r.orchestrator.incidents.pending_analysis() == []


def test_in_suggest_the_fast_lanes_verdict_is_queued_once_with_the_analysis(
    rig: Callable[..., Rig],
) -> None:
    r = rig(autonomy_level="suggest")
    r.chat.release.set()
    r.fail("web.service")
    r.orchestrator.run_cycle("event")
    assert r.executor.ran == []
    [item] = r.store.approvals.list_approvals({ApprovalStatus.PENDING})
    assert item.action == RestartUnit(unit="web.service")
    assert r.orchestrator.incidents.pending_analysis() == []  # settled with the queue
    verdicts = [e for e in r.audit() if e["event"] == "verdict"]
    assert [v["outcome"] for v in verdicts] == ["queue"]


def test_fix_that_fails_is_escalated_by_the_remediator_and_reported(
    rig: Callable[..., Rig],
) -> None:
    r = rig(analysis="runbooks-only", breaker_threshold=1)
    r.executor.holds = False
    r.fail("web.service")
    report = r.orchestrator.run_cycle("event")
    [approval_id] = report.escalated
    [item] = r.store.approvals.list_approvals({ApprovalStatus.PENDING})
    assert item.id == approval_id
    assert r.orchestrator.stats.escalations == 1
    assert r.orchestrator.remediator.breaker().open


def test_unit_systemd_is_restarting_is_left_to_systemd(rig: Callable[..., Rig]) -> None:
    r = rig(analysis="runbooks-only")
    r.executor.states["web.service"] = "activating"
    r.fail("web.service")
    report = r.orchestrator.run_cycle("event")
    assert report.deferred
    assert r.executor.ran == []
    assert r.orchestrator.incidents.pending_analysis()  # its failed event wakes us again


@pytest.mark.parametrize(
    ("mode", "has_model", "assessment", "proposals", "asks"),
    [
        (AnalysisMode.RUNBOOKS_ONLY, True, Assessment.FAILING, 1, False),
        (AnalysisMode.LLM_FIRST, False, Assessment.FAILING, 1, False),
        (AnalysisMode.LLM_FIRST, True, Assessment.FAILING, 1, True),
        (AnalysisMode.RUNBOOKS_FIRST, True, Assessment.FAILING, 1, False),
        (AnalysisMode.RUNBOOKS_FIRST, True, Assessment.UNKNOWN, 1, True),
        (AnalysisMode.RUNBOOKS_FIRST, True, Assessment.FAILING, 0, True),
    ],
)
def test_which_analyses_ask_the_model(
    mode: AnalysisMode, has_model: bool, assessment: Assessment, proposals: int, asks: bool
) -> None:
    restart = {"action": RESTART_WEB, "reason": "r"}
    runbooks = Decision.model_validate(
        {
            "incident_id": "i",
            "assessment": assessment,
            "summary": "s",
            "proposals": [restart] * proposals,
            "source": "runbooks",
        }
    )
    assert needs_model(mode, has_model, runbooks) is asks


def test_the_orchestrator_never_touches_the_queue_the_ledger_or_the_executor() -> None:
    """It triages and hands on: these are the remediator's (and verify.py's)."""
    tree = ast.parse(Path(orchestrator_mod.__file__).read_text())
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    forbidden = {
        "executor",
        "enqueue",
        "get_approval",
        "list_approvals",
        "cancel_approval",
        "expire_approvals",
        "record_intent",
        "record_outcome",
        "record_verification",
        "open_breaker",
        "reset_breaker",
    }
    assert used & forbidden == set()
