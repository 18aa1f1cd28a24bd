"""Backups that ran, on literals: systemd's rows parsed, the timer's period, what is
remembered across a reboot, the findings, the metrics, the config, the runbooks, and the
policy that never starts a backup by itself unless a person trusted that very unit."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from macha_obs.agent.runbooks import runbook_proposals
from macha_obs.collect.backups import (
    DAY,
    BackupsCollector,
    Remembered,
    expected_interval,
    parse_run,
    parse_runs,
    remember,
    summarize_backups,
    timer_interval,
)
from macha_obs.collect.meta import MemoryMeta
from macha_obs.config import AutonomyLevel, Config, load
from macha_obs.metrics import build_registry
from macha_obs.models import (
    Alert,
    BackupsReading,
    Finding,
    FindingKind,
    Incident,
    IntervalSource,
    Investigate,
    JournalTail,
    Outcome,
    RestartUnit,
    StartUnit,
    UnitStatus,
)
from macha_obs.models import Snapshot as SnapshotModel
from macha_obs.policy.judge import PolicyContext, judge
from macha_obs.policy.scope import Confirmation, Scope
from macha_obs.setup.rules import render
from tests.harness.receiver_support import alert

US = 1_000_000
T0 = 1_764_000_000.0
DEMO = "restic-backups-demo.service"


def row(name: str = DEMO, **props: Any) -> dict[str, Any]:
    """A row of the D-Bus child's unit_runs, as systemd 252 answers for a oneshot."""
    base: dict[str, Any] = {
        "name": name,
        "timers": [],
        "LoadState": "loaded",
        "ActiveState": "inactive",
        "SubState": "dead",
        "InactiveEnterTimestamp": 0,
        "InactiveExitTimestamp": 0,
        "ActiveEnterTimestamp": 0,
        "Result": "success",
        "ExecMainStatus": 0,
        "ExecMainExitTimestamp": 0,
        "ExecMainStartTimestamp": 0,
    }
    return base | props


def ran(at: float, *, ok: bool = True, **props: Any) -> dict[str, Any]:
    failed = {"ActiveState": "failed", "SubState": "failed", "Result": "exit-code"}
    return row(
        ExecMainExitTimestamp=int(at * US),
        InactiveExitTimestamp=int((at - 5) * US),
        InactiveEnterTimestamp=int(at * US),
        ExecMainStatus=0 if ok else 1,
        **({} if ok else failed),
        **props,
    )


def daily_timer(**props: Any) -> dict[str, Any]:
    timer: dict[str, Any] = {
        "name": "restic-backups-demo.timer",
        "LastTriggerUSec": 0,
        "NextElapseUSecRealtime": 0,
        "RandomizedDelayUSec": 0,
        "TimersCalendar": [["OnCalendar", "*-*-* 00:00:00"]],
        "TimersMonotonic": [],
    }
    return timer | props


# ------------------------------------------------------------------ parsing


def test_a_failed_oneshot_is_a_failed_run() -> None:
    run = parse_run(ran(T0, ok=False))
    assert (run.success, run.last_run, run.exit_status, run.result) == (False, T0, 1, "exit-code")
    assert not run.running


def test_a_successful_run_and_a_unit_that_never_ran() -> None:
    assert parse_run(ran(T0)).success is True
    never = parse_run(row())
    assert (never.success, never.last_run, never.exit_status) == (None, None, None)


def test_a_run_that_failed_before_its_main_process_is_dated_by_its_end() -> None:
    # ExecStartPre failed: no ExecMainExitTimestamp, but it left inactive and came back
    failed = row(
        ActiveState="failed",
        Result="exit-code",
        InactiveExitTimestamp=int((T0 - 1) * US),
        InactiveEnterTimestamp=int(T0 * US),
    )
    run = parse_run(failed)
    assert (run.success, run.last_run) == (False, T0)


def test_a_running_backup_is_running() -> None:
    assert parse_run(row(ActiveState="activating", SubState="start")).running


def test_parse_runs_keeps_matching_rows_once_and_skips_bad_ones() -> None:
    rows = [
        ran(T0),
        ran(T0),  # an alias's row names the same unit
        row("nginx.service"),  # the child matched on an alias; the canonical name does not
        row("restic-backups-gone.service", LoadState="not-found"),
        {"name": "../etc.service"},
        {"nope": 1},
    ]
    runs = parse_runs(rows, ("restic-backups-*.service",))
    assert [r.unit for r in runs] == [DEMO]


def test_globs_match_the_whole_canonical_name_not_a_substring() -> None:
    rows = [ran(T0, name="xrestic-backups-a.service"), ran(T0, name="restic-backups-a.service")]
    assert [r.unit for r in parse_runs(rows, ("restic-backups-*.service",))] == [
        "restic-backups-a.service"
    ]


# ------------------------------------------------------------------ the expected interval


@pytest.mark.parametrize(
    ("timer", "seconds"),
    [
        (daily_timer(), DAY),
        (daily_timer(TimersCalendar=[["OnCalendar", "*-*-* 02:30:00"]]), DAY),
        (daily_timer(TimersCalendar=[["OnCalendar", "*-*-* *:00:00"]]), 3600.0),
        (daily_timer(TimersCalendar=[["OnCalendar", "Mon *-*-* 00:00:00"]]), 7 * DAY),
        # borgmatic's timer on Debian: daily, RandomizedDelaySec=3h
        (daily_timer(RandomizedDelayUSec=3 * 3600 * US), DAY + 3 * 3600),
        (
            daily_timer(
                TimersCalendar=[],
                TimersMonotonic=[["OnBootUSec", 60 * US], ["OnUnitActiveUSec", 2 * 3600 * US]],
            ),
            2 * 3600.0,
        ),
        # a form with no plain period: from its last trigger to its next
        (
            daily_timer(
                TimersCalendar=[["OnCalendar", "Mon,Thu *-*-* 00:00:00"]],
                LastTriggerUSec=int(T0 * US),
                NextElapseUSecRealtime=int((T0 + 3 * DAY) * US),
            ),
            3 * DAY,
        ),
        (daily_timer(TimersCalendar=[["OnCalendar", "Mon,Thu *-*-* 00:00:00"]]), None),
    ],
)
def test_timer_interval(timer: dict[str, Any], seconds: float | None) -> None:
    assert timer_interval(timer) == seconds


def test_expected_interval_config_then_timer_then_a_day() -> None:
    timed = parse_run(ran(T0, timers=[daily_timer(RandomizedDelayUSec=3600 * US)]))
    assert timed.timer == "restic-backups-demo.timer"
    assert expected_interval(timed, {}) == (DAY + 3600, IntervalSource.TIMER)
    weekly = {"restic-backups-*.service": 7 * DAY}
    assert expected_interval(timed, weekly) == (7 * DAY, IntervalSource.CONFIG)
    assert expected_interval(parse_run(ran(T0)), {}) == (DAY, IntervalSource.DEFAULT)


# ------------------------------------------------------------------ remembering


def test_the_last_success_survives_systemd_forgetting_it() -> None:
    known = remember(Remembered(first_seen=T0), parse_run(ran(T0 + 100)))
    assert (known.last_run, known.last_run_success, known.last_success) == (
        T0 + 100,
        True,
        T0 + 100,
    )
    # a reboot: systemd says the unit never ran; what was remembered stays
    after = remember(Remembered.decode(known.encode(), T0 + 9999), parse_run(row()))
    assert after == known
    # a failed run later: the last run fails, the last success stays where it was
    failed = remember(after, parse_run(ran(T0 + 200, ok=False)))
    assert (failed.last_run_success, failed.last_success) == (False, T0 + 100)
    # an older run systemd still reports never moves anything back
    assert remember(failed, parse_run(ran(T0 + 50))) == failed


def test_unreadable_memory_starts_from_now() -> None:
    assert Remembered.decode("{not json", T0) == Remembered(first_seen=T0)
    assert Remembered.decode(None, T0) == Remembered(first_seen=T0)


class Runs:
    """The D-Bus child's seam (collect/backups.py `UnitRuns`), answering scripted rows."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.asked: list[list[str]] = []

    def unit_runs(self, patterns: list[str], timeout: float | None = None) -> list[Any]:
        del timeout
        self.asked.append(patterns)
        return self.rows


def test_never_succeeded_counts_from_first_seen_and_findings_follow() -> None:
    now = [T0]
    bus = Runs([row()])
    meta = MemoryMeta()
    collector = BackupsCollector(
        meta, patterns=("restic-backups-*.service",), grace=6 * 3600, bus=bus, clock=lambda: now[0]
    )
    reading, findings = collector.collect()
    assert bus.asked == [["restic-backups-*.service"]]
    assert findings == []
    assert reading.units[0].first_seen == T0
    now[0] = T0 + DAY + 6 * 3600 + 1  # past a day and the grace, never a success
    reading, findings = collector.collect()
    assert [(f.kind, f.unit) for f in findings] == [(FindingKind.BACKUP_STALE, DEMO)]
    assert findings[0].details["never_succeeded"] is True
    # a success: fresh; a failure after it: failed, not stale
    bus.rows = [ran(now[0])]
    assert collector.collect()[1] == []
    bus.rows = [ran(now[0] + 10, ok=False)]
    now[0] += 20
    reading, findings = collector.collect()
    assert [f.kind for f in findings] == [FindingKind.BACKUP_FAILED]
    # a new collector on the same store (a restart): the same memory
    again = BackupsCollector(
        meta, patterns=("restic-backups-*.service",), grace=6 * 3600, bus=Runs([row()]),
        clock=lambda: now[0],
    )  # fmt: skip
    remembered = ("last_run", "last_run_success", "last_success", "first_seen")
    (before,), (after,) = reading.units, again.collect()[0].units
    assert after.model_dump(include=set(remembered)) == before.model_dump(include=set(remembered))
    assert (after.result, after.exit_status) == ("", None)  # systemd no longer knows that run


def test_no_patterns_asks_nothing() -> None:
    bus = Runs([ran(T0)])
    collector = BackupsCollector(MemoryMeta(), patterns=(), grace=0, bus=bus)
    assert collector.collect() == (BackupsReading(), [])
    assert bus.asked == []


def test_metrics_say_never_by_absence() -> None:
    collector = BackupsCollector(
        MemoryMeta(), patterns=("*.service",), grace=60,
        bus=Runs([row(), ran(T0, name="b.service")]), clock=lambda: T0,
    )  # fmt: skip
    reading, _ = collector.collect()
    snapshot = SnapshotModel(taken_at=T0, hostname="h", backups=reading)
    get = build_registry(lambda: snapshot, process=False).get_sample_value
    assert get("macha_backup_last_success_timestamp_seconds", {"unit": DEMO}) is None
    assert get("macha_backup_last_run_success", {"unit": DEMO}) is None
    assert get("macha_backup_first_seen_timestamp_seconds", {"unit": DEMO}) == T0
    assert get("macha_backup_expected_interval_seconds", {"unit": DEMO}) == DAY
    assert get("macha_backup_last_success_timestamp_seconds", {"unit": "b.service"}) == T0
    assert get("macha_backup_last_run_timestamp_seconds", {"unit": "b.service"}) == T0
    assert get("macha_backup_last_run_success", {"unit": "b.service"}) == 1.0


def test_summarize_leaves_a_running_backup_alone() -> None:
    collector = BackupsCollector(
        MemoryMeta(), patterns=("*",), grace=0,
        bus=Runs([row(ActiveState="activating", SubState="start")]), clock=lambda: T0,
    )  # fmt: skip
    reading, _ = collector.collect()
    assert summarize_backups(reading, T0 + 10 * DAY) == []


# ------------------------------------------------------------------ config and rules


def test_config_defaults_and_validation() -> None:
    cfg = Config()
    assert cfg.backup_units == (
        "restic-backups-*.service",
        "borgbackup-job-*.service",
        "borgmatic.service",
        "btrbk.service",
    )
    assert cfg.backup_grace == 6 * 3600
    env = load(
        environ={
            "MACHA_BACKUP_UNITS": "my-backup.service,restic-backups-*.service",
            "MACHA_BACKUP_INTERVALS": '{"my-backup.service": 604800}',
            "MACHA_BACKUP_GRACE": "3600",
        }
    )
    assert env.backup_units == ("my-backup.service", "restic-backups-*.service")
    assert env.backup_intervals == {"my-backup.service": 604800.0}
    for bad in (
        {"backup_units": ["a b.service"]},
        {"backup_intervals": {"x.service": 1}},
        {"backup_intervals": {"x.service": True}},
        {"backup_intervals": {"x.service": float("nan")}},
        {"backup_intervals": ["x.service"]},
        {"backup_grace": -1},
    ):
        with pytest.raises(ValidationError):
            Config.model_validate(bad)


def test_the_stale_rule_takes_the_grace_from_the_config() -> None:
    text = render(Config(backup_grace=3600))["macha.yml"]
    assert "> macha_backup_expected_interval_seconds + 3600\n" in text
    assert "plus 1 hour of grace" in text


# ------------------------------------------------------------------ runbooks and policy


def backup_incident(*kinds: FindingKind) -> Incident:
    findings = [Finding(kind=k, subject=DEMO, unit=DEMO, summary=k.value) for k in kinds]
    return Incident(id="i1", source="finding", findings=findings)


def test_a_failed_backup_is_investigated_and_rerun_never_restarted() -> None:
    incident = backup_incident(FindingKind.UNIT_FAILED, FindingKind.BACKUP_FAILED)
    proposals, _ = runbook_proposals(incident)
    assert [p.action for p in proposals] == [
        Investigate(diagnostic=JournalTail(unit=DEMO)),
        StartUnit(unit=DEMO),
    ]


def test_the_rules_alerts_lead_to_the_same_runbooks() -> None:
    """MachaBackupFailed and MachaUnitFailed from Alertmanager about one backup unit: the
    `macha_finding` label says it is a backup, so it is re-run, never restarted."""
    labels = {"unit": DEMO, "instance": "testhost"}
    failed = alert("MachaBackupFailed", macha_finding="backup_failed", **labels)
    alerts = [Alert.model_validate(a) for a in (alert("MachaUnitFailed", **labels), failed)]
    proposals, kinds = runbook_proposals(Incident(id="i2", source="alert", alerts=alerts))
    assert kinds == [FindingKind.UNIT_FAILED, FindingKind.BACKUP_FAILED]
    assert [p.action for p in proposals] == [
        Investigate(diagnostic=JournalTail(unit=DEMO)),
        StartUnit(unit=DEMO),
    ]
    assert Scope.of([Incident(id="i2", source="alert", alerts=alerts)]).units == {DEMO}


def test_a_stale_backup_is_only_looked_at() -> None:
    proposals, _ = runbook_proposals(backup_incident(FindingKind.BACKUP_STALE))
    assert [p.action for p in proposals] == [Investigate(diagnostic=UnitStatus(unit=DEMO))]


def verdict(action: Any, **config: Any) -> Any:
    from datetime import UTC, datetime

    ctx = PolicyContext(config=Config.model_validate(config), now=datetime.now(UTC))
    scope = Scope(units=frozenset({action.unit}))
    return judge(action, ctx, scope=scope, problem=Confirmation.confirmed())


@pytest.mark.parametrize("level", list(AutonomyLevel))
@pytest.mark.parametrize("action", [StartUnit(unit=DEMO), RestartUnit(unit=DEMO)])
def test_invariant_4_a_backup_never_starts_by_itself_at_any_autonomy_level(
    level: AutonomyLevel, action: Any
) -> None:
    outcome = verdict(action, autonomy_level=level).outcome
    expected = Outcome.RECORD if level is AutonomyLevel.OBSERVE else Outcome.QUEUE
    assert outcome is expected
    # an ordinary service at the same level is judged by the matrix alone
    other = verdict(StartUnit(unit="web.service"), autonomy_level=level).outcome
    auto = level in (AutonomyLevel.AUTO_SAFE, AutonomyLevel.AUTO_FULL)
    assert other is (Outcome.EXECUTE if auto else expected)


def test_invariant_14_a_backup_starts_only_when_trusted_by_its_exact_name() -> None:
    start = StartUnit(unit=DEMO)
    exact = verdict(start, autonomy_level="suggest", trusted_actions=[f"start_unit:{DEMO}"])
    assert exact.outcome is Outcome.EXECUTE
    # a glob that covers it does not count for a backup; nor does another verb's trust
    for trust in ("start_unit:restic-backups-*", f"restart_unit:{DEMO}"):
        held = verdict(start, autonomy_level="auto-full", trusted_actions=[trust])
        assert held.outcome is Outcome.QUEUE, trust
        assert f"trusted_actions names 'start_unit:{DEMO}' exactly" in held.reason
    # a person's approval runs it
    from datetime import UTC, datetime

    ctx = PolicyContext(config=Config(), now=datetime.now(UTC))
    approved = judge(
        start, ctx, approved=True, scope=Scope(units=frozenset({DEMO})),
        problem=Confirmation.confirmed(),
    )  # fmt: skip
    assert approved.outcome is Outcome.EXECUTE
