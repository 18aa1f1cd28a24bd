"""Learning from the operator, in the store and the policy: the outcome record derived
from the queue and the ledger (idempotent, bounded), suppression (invariant 14), per-action
trust and its validator, the metrics. The lab-systemd operator run is test_learn_operator.py.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from macha_obs.config import AutonomyLevel, ConfigError, validate
from macha_obs.metrics.learning import LearnCollector, LearnState
from macha_obs.models import (
    Action,
    ActionStatus,
    Alert,
    ExecutionResult,
    Finding,
    FindingKind,
    FixKey,
    Incident,
    JournalVacuum,
    NixGc,
    NixRollback,
    Outcome,
    ResetFailed,
    RestartUnit,
    Risk,
    Signature,
    StartUnit,
    Verdict,
    investigation_instead,
    signature_of,
    suppression_of,
)
from macha_obs.policy.judge import BreakerState, PolicyContext, judge, trusted_entry
from macha_obs.policy.scope import Confirmation, Scope
from macha_obs.remediate.learn import (
    candidates,
    describe_history,
    history_line,
    learned,
    render_json,
)
from macha_obs.store import Retention, Store
from macha_obs.store.outcomes_sync import OUTCOMES_MAX_ROWS

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def failed_unit_incident(unit: str) -> Incident:
    failed = Finding(kind=FindingKind.UNIT_FAILED, subject=unit, unit=unit, summary="failed")
    return Incident(id="i", source="finding", findings=[failed])


# ---------------------------------------------------------------- signatures


def test_signature_names_the_problem_and_the_unit_or_mount() -> None:
    unit = "nginx.service"
    incident = failed_unit_incident(unit)
    assert str(signature_of(incident, RestartUnit(unit=unit))) == "unit_failed:nginx.service"
    disk = Finding(kind=FindingKind.DISK_FILLING, subject="/var", summary="92% full")
    space = Incident(id="d", source="finding", findings=[disk])
    assert str(signature_of(space, JournalVacuum())) == "disk_filling:/var"
    alert = Alert.model_validate(
        {"status": "firing", "labels": {"alertname": "NginxDown", "unit": unit},
         "startsAt": "2026-11-25T10:00:00Z"}
    )  # fmt: skip
    alerted = Incident(id="a", source="alert", alerts=[alert])
    assert str(signature_of(alerted, RestartUnit(unit=unit))) == "NginxDown:nginx.service"
    assert str(signature_of(Incident(id="m", source="manual"), NixGc())) == "manual"
    assert Signature.parse("unit_failed:getty@tty1.service").subject == "getty@tty1.service"


# ---------------------------------------------------------------- the derived record


def test_outcomes_are_derived_from_queue_and_ledger_once_whatever_runs_twice(
    tmp_path: Path,
) -> None:
    clock = Clock()
    with Store(tmp_path, clock=clock) as store:
        action = RestartUnit(unit="web.service")
        approval = store.approvals.enqueue("inc", action, risk=Risk.LOW, reason="r", ttl=600)
        store.outcomes.note_shadow(approval.id, Outcome.EXECUTE)
        action_id = store.ledger.record_intent("inc", action, approval_id=approval.id, by="alice")
        store.ledger.record_outcome(
            action_id, ActionStatus.SUCCEEDED, ExecutionResult(ok=True, verified=True)
        )
        rejected = store.approvals.enqueue("inc", action, risk=Risk.LOW, reason="r", ttl=600)
        store.outcomes.note_shadow(rejected.id, Outcome.EXECUTE)
        store.approvals.reject_approval(rejected.id, "alice", "maintenance window")
        auto = store.ledger.record_intent("inc", action)
        store.ledger.record_outcome(auto, ActionStatus.FAILED, ExecutionResult(ok=False))
        expired = store.approvals.enqueue("inc", action, risk=Risk.LOW, reason="r", ttl=10)
        clock.now += 60
        store.approvals.expire_approvals()
        gone = store.approvals.enqueue("inc", action, risk=Risk.LOW, reason="r", ttl=600)
        store.approvals.cancel_approval(gone.id, "the problem is gone: web.service is active")
        assert expired.id != gone.id

        assert store.outcomes.learn_sync() > 0
        assert store.outcomes.learn_sync() == 0  # idempotent: nothing counted twice
        [record] = store.outcomes.fix_records()
        assert (str(record.signature), str(record.fix)) == (
            "manual:web.service",
            "restart_unit web.service",
        )
        counts = record.model_dump(include={
            "proposed", "auto_executed", "approved", "rejected", "expired",
            "fixed_elsewhere", "verified", "failed_verification"})  # fmt: skip
        assert counts == {
            "proposed": 5, "auto_executed": 1, "approved": 1, "rejected": 1, "expired": 1,
            "fixed_elsewhere": 1, "verified": 1, "failed_verification": 1,
        }  # fmt: skip
        assert record.rejection_reasons == ("maintenance window",)
        shadow = {
            (k, label): v for m, k, label, _u, v in store.outcomes.learn_totals() if m == "shadow"
        }
        # approved what auto-safe would run: agreed; rejected it: disagreed
        assert shadow == {("restart_unit", "true"): 1, ("restart_unit", "false"): 1}
        line = describe_history(record)
        assert line == (
            "manual:web.service: approved once before, rejected once (last: maintenance "
            "window), ran automatically once, verified 1/2, expired once, fixed without "
            "the sidecar once"
        )


def test_a_crash_mid_sync_counts_nothing_and_the_next_sync_counts_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(tmp_path) as store:
        approval = store.approvals.enqueue(
            "inc", StartUnit(unit="a.service"), risk=Risk.LOW, reason="r", ttl=60
        )
        store.approvals.reject_approval(approval.id, "bob", "no")
        from macha_obs.store import outcomes_sync as outcomes

        class Crash(Exception):
            pass

        original = outcomes._total

        def crashing(*args: object, **kwargs: object) -> None:
            raise Crash

        monkeypatch.setattr(outcomes, "_total", crashing)
        with pytest.raises(Crash):
            store.outcomes.learn_sync()
        monkeypatch.setattr(outcomes, "_total", original)
        assert store.query("SELECT COUNT(*) AS n FROM fix_outcomes")[0]["n"] == 0
        [record] = store.outcomes.fix_records()
        assert (record.proposed, record.rejected) == (1, 1)


def test_the_learning_tables_stay_bounded_under_a_long_history(tmp_path: Path) -> None:
    clock = Clock()
    with Store(tmp_path, clock=clock) as store:
        total = OUTCOMES_MAX_ROWS + 300
        with store.transaction() as cur:  # a long history: one item per unit, all decided
            for i in range(total):
                cur.execute(
                    "INSERT INTO approvals(id, incident_id, action, kind, target, risk, reason,"
                    " status, created_at, expires_at, decided_at, decided_by, note)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (i, f"inc{i}", RestartUnit(unit=f"u{i}.service").model_dump_json(),
                     "restart_unit", f"u{i}.service", "low", "r", "rejected",
                     clock.now + i, clock.now + i + 60, clock.now + i, "bob", "no"),
                )  # fmt: skip
        report = store.retain(Retention())
        assert report.learned == 300
        rows = store.query("SELECT COUNT(*) AS n FROM fix_outcomes")[0]["n"]
        assert rows == OUTCOMES_MAX_ROWS
        # the oldest went; the totals behind the counters did not
        assert (
            store.query("SELECT MIN(target) AS t FROM fix_outcomes WHERE target = 'u0.service'")[0][
                "t"
            ]
            is None
        )
        rejected = sum(
            v for m, _k, label, _u, v in store.outcomes.learn_totals() if label == "rejected"
        )
        assert rejected == total
        # a year later, everything unseen since goes; the counters stay monotonic
        clock.now += 367 * 86400
        store.retain(Retention())
        assert store.query("SELECT COUNT(*) AS n FROM fix_outcomes")[0]["n"] == 0
        assert store.query("SELECT COUNT(*) AS n FROM learn_events")[0]["n"] == 0
        assert (
            sum(v for m, _k, label, _u, v in store.outcomes.learn_totals() if label == "rejected")
            == total
        )


def test_an_older_database_gains_the_learning_columns(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "state.db")
    from macha_obs.store import approvals, ledger

    db.executescript(approvals.DDL + ledger.DDL)
    db.close()
    with Store(tmp_path) as store:
        store.approvals.enqueue(
            "inc", RestartUnit(unit="a.service"), risk=Risk.LOW, reason="r", ttl=60
        )
        assert [r.proposed for r in store.outcomes.fix_records()] == [1]


# ---------------------------------------------------------------- suppression (invariant 14)


def test_invariant_14_suppression_only_ever_moves_toward_safety(tmp_path: Path) -> None:
    """Rejected three times within the window: not proposed as an action (recorded,
    never executed or queued), until the window passes or a person clears it. A refusal
    stays a refusal; nothing the sidecar learns ever widens what runs."""
    from macha_obs.policy.judge import suppressed_verdict

    signature, fix = (
        Signature(problem="unit_failed", subject="w.service"),
        FixKey(kind="restart_unit", target="w.service"),
    )
    window = timedelta(days=7)
    times = [NOW - timedelta(days=6), NOW - timedelta(days=2), NOW - timedelta(hours=1)]
    found = suppression_of(signature, fix, rejections=times, failures=[], after_rejections=3,
                           after_failures=3, window=window, now=NOW)  # fmt: skip
    assert found is not None
    assert found.until == times[-1] + window
    assert "rejected 3 times within 7 days (threshold 3)" in found.why
    # two within the window are not enough; the window passing lifts it
    assert suppression_of(signature, fix, rejections=times[1:], failures=[], after_rejections=3,
                          after_failures=3, window=window, now=NOW) is None  # fmt: skip
    assert suppression_of(signature, fix, rejections=times, failures=[], after_rejections=3,
                          after_failures=3, window=window, now=found.until) is None  # fmt: skip
    for outcome in Outcome:
        verdict = judge_verdict(outcome)
        suppressed = suppressed_verdict(verdict, found, RestartUnit(unit="w.service"))
        if outcome in (Outcome.EXECUTE, Outcome.QUEUE):
            assert suppressed.outcome is Outcome.RECORD
            assert "investigate instead (journal_tail w.service)" in suppressed.reason
            assert "`macha-obs learn clear unit_failed:w.service` lifts it" in suppressed.reason
        else:
            assert suppressed is verdict
    assert investigation_instead(NixGc()).kind == "investigate"
    # the store agrees, and a person's clear lifts it (audited)
    clock = Clock(NOW.timestamp())
    with Store(tmp_path, clock=clock) as store:
        cfg = validate({"state_dir": str(tmp_path)})
        for at in times:
            clock.now = at.timestamp()
            item = store.approvals.enqueue(
                "inc", RestartUnit(unit="w.service"), risk=Risk.LOW, reason="r", ttl=60
            )
            store.approvals.reject_approval(item.id, "bob", "not now")
        clock.now = NOW.timestamp()
        [active] = store.outcomes.suppressions(cfg)
        assert (str(active.signature), str(active.fix)) == (
            "manual:w.service",
            "restart_unit w.service",
        )
        assert store.outcomes.clear_suppression(Signature.parse("manual:w.service"), "bob") == 3
        assert store.outcomes.suppressions(cfg) == []
        assert store.outcomes.fix_records()[0].rejected == 3  # the history stays
        assert '"event": "learn_cleared"' in store.audit.decisions_log.read_text()


def judge_verdict(outcome: Outcome) -> Verdict:
    return Verdict(outcome=outcome, risk=Risk.LOW, reason="r", autonomy=AutonomyLevel.SUGGEST)


# ---------------------------------------------------------------- per-action trust


def test_trusted_actions_refuses_protected_unknown_and_whole_kind_entries() -> None:
    def refused(entry: str) -> str:
        with pytest.raises(ConfigError) as err:
            validate({"trusted_actions": [entry], "protected_units": ["billing-*.service"]})
        return str(err.value)

    assert "sshd.service names protected units (remote-access:" in refused(
        "restart_unit:sshd.service"
    )
    assert "dbus.service names protected units (systemd-special:" in refused(
        "start_unit:dbus.service"
    )
    assert "billing-api.service names protected units (configured:" in refused(
        "restart_unit:billing-api.service"
    )
    assert "*.service names protected units" in refused("restart_unit:*.service")
    assert "an autonomy level, not per-action trust" in refused("restart_unit:*")
    assert "an autonomy level, not per-action trust" in refused("restart_unit")
    assert "unknown action kind 'reboot'" in refused("reboot")
    assert "always a human's decision" in refused("nix_rollback")
    assert "mounts and swaps" in refused("restart_unit:data.mount")
    assert "acts on the whole host" in refused("journal_vacuum:/var")
    cfg = validate(
        {
            "trusted_actions": (
                "restart_unit:nginx.service,journal_vacuum,restart_unit:worker-*.service"
            )
        }
    )
    assert cfg.trusted_actions == (
        "restart_unit:nginx.service",
        "journal_vacuum",
        "restart_unit:worker-*.service",
    )


def test_a_trusted_action_executes_in_suggest_and_nothing_else_does() -> None:
    cfg = validate(
        {
            "autonomy_level": "suggest",
            "trusted_actions": ["restart_unit:nginx.service", "journal_vacuum"],
        }
    )
    ctx = PolicyContext(config=cfg, now=NOW)
    scope = Scope(
        units=frozenset({"nginx.service", "app.service"}),
        kinds=frozenset({FindingKind.DISK_FILLING}),
    )
    failed = Confirmation.confirmed("failed")

    def run(
        action: Action, problem: Confirmation = failed, context: PolicyContext = ctx
    ) -> Verdict:
        return judge(action, context, scope=scope, problem=problem)

    trusted = run(RestartUnit(unit="nginx.service"))
    assert trusted.outcome is Outcome.EXECUTE
    assert "trusted by a person (trusted_actions 'restart_unit:nginx.service'" in trusted.reason
    assert run(JournalVacuum()).outcome is Outcome.EXECUTE
    assert run(RestartUnit(unit="app.service")).outcome is Outcome.QUEUE  # not trusted
    assert run(StartUnit(unit="nginx.service")).outcome is Outcome.QUEUE  # another verb
    assert run(NixRollback()).outcome is Outcome.QUEUE
    # the scope lock, the problem test, the start-limit hold, the breaker and a pause still apply
    assert run(RestartUnit(unit="other.service")).outcome is Outcome.REFUSE
    gone = Confirmation(False, "active")
    assert run(RestartUnit(unit="nginx.service"), problem=gone).outcome is Outcome.REFUSE
    limit = Confirmation.confirmed("start limit", start_limit=True)
    assert run(ResetFailed(unit="nginx.service"), problem=limit).outcome is Outcome.QUEUE
    broken = PolicyContext(config=cfg, now=NOW, breaker=BreakerState(True, 3, "3 failures"))
    held = run(RestartUnit(unit="nginx.service"), context=broken)
    assert held.outcome is Outcome.QUEUE
    assert "waits for the breaker" in held.reason
    # observe acts on nothing, trusted or not (invariant 4)
    watch = PolicyContext(
        config=cfg.model_copy(update={"autonomy_level": AutonomyLevel.OBSERVE}), now=NOW
    )
    assert run(RestartUnit(unit="nginx.service"), context=watch).outcome is Outcome.RECORD
    assert trusted_entry(RestartUnit(unit="nginx.service"), cfg) == "restart_unit:nginx.service"


def test_candidates_name_the_exact_line_and_never_a_protected_or_trusted_fix(
    tmp_path: Path,
) -> None:
    with Store(tmp_path) as store:
        for unit in ("nginx.service", "nginx.service", "nginx.service", "api.service"):
            item = store.approvals.enqueue(
                "inc", RestartUnit(unit=unit), risk=Risk.LOW, reason="r", ttl=60
            )
            action_id = store.ledger.record_intent(
                "inc", item.action, approval_id=item.id, by="alice"
            )
            store.ledger.record_outcome(
                action_id, ActionStatus.SUCCEEDED, ExecutionResult(ok=True, verified=True)
            )
        cfg = validate({"state_dir": str(tmp_path)})
        [candidate] = candidates(store.outcomes.fix_records(), cfg)
        assert candidate.describe() == (
            "restart_unit nginx.service: approved 3/3, verified 3/3 - to allow it, add "
            '`trusted_actions = ["restart_unit:nginx.service"]` to your config, or in NixOS '
            "`services.macha-autonomous.settings.trusted_actions = "
            '[ "restart_unit:nginx.service" ];`'
        )
        trusted = validate(
            {"state_dir": str(tmp_path), "trusted_actions": ["restart_unit:nginx.service"]}
        )
        assert candidates(store.outcomes.fix_records(), trusted) == []
        shown = render_json(learned(store.outcomes, cfg))
        assert shown["candidates"][0]["entry"] == "restart_unit:nginx.service"
        line = history_line(store, store.approvals.enqueue("inc", RestartUnit(unit="nginx.service"),
                                                 risk=Risk.LOW, reason="r", ttl=60))  # fmt: skip
        assert line == "manual:nginx.service: approved 3 times before, verified 3/3"


# ---------------------------------------------------------------- metrics


def test_learning_metrics_are_counters_from_persisted_totals() -> None:
    state = LearnState(
        totals=(("shadow", "restart_unit", "true", "a.service", 3),
                ("shadow", "restart_unit", "false", "b.service", 1),
                ("outcome", "restart_unit", "approved", "a.service", 3),
                ("outcome", "restart_unit", "approved", "b.service", 2)),
        suppressed=1,
    )  # fmt: skip
    registry = CollectorRegistry()
    registry.register(LearnCollector(lambda: state))
    text = generate_latest(registry).decode()
    assert 'macha_shadow_decisions_total{agreed="true",kind="restart_unit"} 3.0' in text
    assert 'macha_shadow_decisions_total{agreed="false",kind="journal_vacuum"} 0.0' in text
    assert 'macha_learn_outcomes_total{kind="restart_unit",outcome="approved"} 5.0' in text
    assert "unit=" not in text  # no unit label unless asked
    assert "macha_suppressed_fixes 1.0" in text
    labelled = CollectorRegistry()
    labelled.register(LearnCollector(lambda: state, unit_label=True))
    text = generate_latest(labelled).decode()
    assert (
        'macha_learn_outcomes_total{kind="restart_unit",outcome="approved",unit="b.service"} 2.0'
        in text
    )
