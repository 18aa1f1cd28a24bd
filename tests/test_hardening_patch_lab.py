"""Hardening and tuning patches against a real systemd (the lab): verified by the real
systemd-analyze, a transient copy started over the lab's bus, scored before and after,
queued, exported - and never applied by the sidecar."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from macha_obs.agent.runbooks import runbook_proposals
from macha_obs.cli import approve_main
from macha_obs.collect.systemd import oom_at_limit
from macha_obs.config import Config
from macha_obs.execute.runner import subprocess_runner
from macha_obs.execute.transient import Systemd
from macha_obs.models import (
    Action,
    ApprovalStatus,
    ExecutionResult,
    HardeningKey,
    HardeningSetting,
    HardenUnit,
    Incident,
    Outcome,
    Proposal,
    TuneUnit,
    UnitState,
)
from macha_obs.policy.scope import Scope
from macha_obs.remediate.hardening import HardeningChecker
from macha_obs.remediate.patches import PatchRefused
from macha_obs.remediate.remediator import Remediator
from macha_obs.store import Store
from macha_obs.systemd.bus import IsolatedBus
from tests.harness.labsd import LabSystemd, wait_until
from tests.harness.nix_support import need
from tests.harness.systemd_fixtures import UnitFactory

pytestmark = pytest.mark.systemd

WEB = "macha-lab-web.service"
WEB_UNIT = """\
[Unit]
Description=A deliberately unhardened listening service

[Service]
Environment=MACHA_LAB_MODE=web
ExecStart=/usr/bin/python3 -c "import os, runpy, sys; \
assert os.environ['MACHA_LAB_MODE'] == 'web', 'no environment'; \
sys.argv = ['http.server', '18080', '--bind', '0.0.0.0']; \
runpy.run_module('http.server', run_name='__main__')"
"""
HOG = "macha-lab-hog.service"
HOG_UNIT = """\
[Service]
MemoryMax=20M
ExecStart=/usr/bin/python3 -c "import signal; signal.pause()"
"""
PROPOSED = (
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
)


class NothingRuns:
    """The executor seam: a settings patch must never reach it."""

    def run(self, action: Action) -> ExecutionResult:
        raise AssertionError(f"executed {action!r}")

    def unit_state(self, unit: str) -> UnitState:
        raise AssertionError(f"looked up {unit}")


def harden(unit: str = WEB) -> HardenUnit:
    settings = tuple(HardeningSetting(key=HardeningKey(k), value=v) for k, v in PROPOSED)
    return HardenUnit(unit=unit, settings=settings)


def checker(lab: LabSystemd, config_dir: Path | None = None) -> HardeningChecker:
    return HardeningChecker(config_dir, address=lab.bus_address, root=lab.root, window=1.0)


def started(lab: LabSystemd, unit_factory: UnitFactory, name: str, text: str) -> None:
    unit_factory(name, text)
    lab.run("systemctl", "start", name)
    lab.wait_for_state(name, "active")


def properties(lab: LabSystemd, unit: str) -> dict[str, object]:
    facts = Systemd(subprocess_runner, address=lab.bus_address).facts(unit)
    return {"dropins": facts.dropins, "memory_max": facts.memory_max, "exec": facts.exec_start}


def test_invariant_4_an_unhardened_listener_gets_a_checked_patch_queued_never_applied(
    systemd_container: LabSystemd,
    unit_factory: UnitFactory,
    make_config: Callable[..., Config],
) -> None:
    lab = systemd_container
    started(lab, unit_factory, WEB, WEB_UNIT)
    before = properties(lab, WEB)
    cfg = make_config(autonomy_level="auto-full")
    rem = Remediator(cfg, Store(cfg.state_dir), NothingRuns(), hardening=checker(lab))
    handled = rem.handle("inc-1", Proposal(action=harden(), reason="exposed"), Scope())

    assert handled.verdict.outcome is Outcome.QUEUE, handled.verdict.reason
    reason = handled.verdict.reason
    assert "verify: systemd-analyze verify passed" in reason
    assert (
        "stayed active 1s in a sandbox (PrivateNetwork=yes, PrivateTmp=yes, "
        "ProtectSystem=strict, ProtectHome=read-only), as did an unchanged copy"
    ) in reason
    assert "exposure 9.6 UNSAFE -> " in reason
    after_score = float(reason.split("exposure 9.6 UNSAFE -> ")[1].split()[0])
    assert after_score < 9.6
    assert handled.approval is not None
    assert handled.approval.risk.value == "high"

    # the real unit is untouched: no drop-in in the lab's /etc, same properties, running
    assert not (lab.root / "etc/systemd/system" / f"{WEB}.d").exists()
    assert properties(lab, WEB) == before
    assert lab.unit_state(WEB) == ("active", "running")
    # the transient copy is gone
    listed = lab.run("systemctl", "list-units", "--all", "--no-legend", "macha-check-*").stdout
    assert listed.strip() == ""

    env = {"MACHA_STATE_DIR": str(cfg.state_dir), "MACHA_CONFIG": ""}
    shown = CliRunner().invoke(approve_main, ["show", str(handled.approval.id)], env=env)
    assert shown.exit_code == 0, shown.output
    assert "setting:   ProtectSystem=strict: " in shown.output
    assert f"patch:     the drop-in /etc/systemd/system/{WEB}.d/50-macha-hardening.conf" in (
        shown.output
    )
    exported = CliRunner().invoke(approve_main, ["export", str(handled.approval.id)], env=env)
    assert exported.exit_code == 0, exported.output
    assert exported.stdout_bytes.decode() == harden().dropin()

    # approving marks it read; nothing runs (NothingRuns would raise)
    decided = rem.approve(handled.approval.id, "alice")
    assert decided.approval is not None
    assert decided.approval.status is ApprovalStatus.ACKNOWLEDGED
    assert not (lab.root / "etc/systemd/system" / f"{WEB}.d").exists()
    assert properties(lab, WEB) == before


def test_the_exported_dropin_applied_by_a_person_hardens_the_real_unit(
    systemd_container: LabSystemd, unit_factory: UnitFactory
) -> None:
    """What the person applies is what was checked: the real unit, restarted with the
    exported drop-in, runs and scores as the copy did."""
    lab = systemd_container
    started(lab, unit_factory, WEB, WEB_UNIT)
    report = checker(lab).check(harden())
    unit_factory(f"{WEB}.d/50-macha-hardening.conf", harden().dropin())
    lab.run("systemctl", "restart", WEB)
    lab.wait_for_state(WEB, "active")
    shown = lab.run("systemctl", "show", "-p", "NoNewPrivileges,ProtectSystem", WEB).stdout
    assert "NoNewPrivileges=yes" in shown
    assert "ProtectSystem=strict" in shown
    assert report.after is not None
    assert report.after.score < 9.6


def test_a_dropin_that_fails_verify_is_refused_with_its_reason(
    systemd_container: LabSystemd, unit_factory: UnitFactory, make_config: Callable[..., Config]
) -> None:
    """A unit whose ExecStart cannot run under the new settings' verify: the real
    systemd-analyze says why, and nothing is queued."""
    lab = systemd_container
    broken = "macha-lab-broken.service"
    unit_factory(broken, "[Service]\nExecStart=/nonexistent/macha-lab-binary\n")
    cfg = make_config(autonomy_level="auto-full")
    rem = Remediator(cfg, Store(cfg.state_dir), NothingRuns(), hardening=checker(lab))
    handled = rem.handle("inc-2", Proposal(action=harden(broken)), Scope())
    assert handled.verdict.outcome is Outcome.REFUSE
    assert "systemd-analyze verify refuses the drop-in" in handled.verdict.reason
    assert "/nonexistent/macha-lab-binary" in handled.verdict.reason
    assert handled.approval is None
    assert rem.store.approvals.list_approvals(None) == []


def test_a_copy_the_new_settings_stop_is_refused(
    systemd_container: LabSystemd, unit_factory: UnitFactory
) -> None:
    """The unchanged copy stays active in the read-only sandbox; the copy with the new
    settings (ProtectHome=yes hides /root, which this service reads) stops: refused, with
    what the copy became."""
    lab = systemd_container
    reader = "macha-lab-reader.service"
    marker = lab.root / "root" / "macha-lab-reader"
    marker.write_text("read me")
    text = (
        "[Service]\nExecStart=/bin/sh -c 'while test -r /root/macha-lab-reader; do sleep 1; done'\n"
    )
    started(lab, unit_factory, reader, text)
    hide_home = HardenUnit(
        unit=reader,
        settings=(HardeningSetting(key=HardeningKey.PROTECT_HOME, value="yes"),),
    )
    with pytest.raises(PatchRefused, match=r"did not stay active: (failed|inactive)/.*unchanged"):
        checker(lab).check(hide_home)
    listed = lab.run("systemctl", "list-units", "--all", "--no-legend", "macha-check-*").stdout
    assert listed.strip() == ""  # both copies stopped


def test_a_unit_the_sandbox_stops_even_unchanged_is_not_tried(
    systemd_container: LabSystemd, unit_factory: UnitFactory
) -> None:
    """A service that writes its state at start cannot run in the read-only sandbox even
    unchanged: the copy proves nothing about the settings, and it never wrote the real
    service's files. The other checks stand."""
    lab = systemd_container
    writer = "macha-lab-writer.service"
    text = (
        "[Service]\nExecStart=/usr/bin/python3 -c "
        "\"import pathlib, signal; pathlib.Path('/var/lib/macha-lab-w').write_text('x'); "
        'signal.pause()"\n'
    )
    started(lab, unit_factory, writer, text)
    written = lab.root / "var/lib/macha-lab-w"
    assert wait_until(written.exists, timeout=20)
    written.unlink()  # what the real service wrote
    report = checker(lab).check(harden(writer))
    assert report.copy.startswith(
        "not tried: even unchanged, a copy does not stay active in the read-only sandbox ("
    )
    assert report.verify == "systemd-analyze verify passed"
    assert not written.exists()  # no copy wrote it


def test_oneshot_is_not_tried_and_says_so(
    systemd_container: LabSystemd, unit_factory: UnitFactory
) -> None:
    lab = systemd_container
    once = "macha-lab-once.service"
    unit_factory(once, "[Service]\nType=oneshot\nExecStart=/usr/bin/true\n")
    report = checker(lab).check(harden(once))
    assert report.copy == "not tried: Type=oneshot: only simple and exec services are copied"
    assert report.verify == "systemd-analyze verify passed"


def test_a_memory_raise_starts_from_the_limit_systemd_reports(
    systemd_container: LabSystemd, unit_factory: UnitFactory
) -> None:
    """This lab cannot OOM-kill (see test_hardening_patch.py's note): the finding is fed
    from the real unit's MemoryMax; the raise is checked against it."""
    lab = systemd_container
    started(lab, unit_factory, HOG, HOG_UNIT)
    limit = 20 * 1024 * 1024
    assert properties(lab, HOG)["memory_max"] == limit
    good = TuneUnit(unit=HOG, memory_max=30 * 1024 * 1024, raised_from=limit)
    report = checker(lab).check(good)
    assert report.verify == "systemd-analyze verify passed"
    assert report.copy.startswith("macha-check-macha-lab-hog-")
    stale = TuneUnit(unit=HOG, memory_max=24 * 1024 * 1024, raised_from=16 * 1024 * 1024)
    with pytest.raises(PatchRefused, match=r"MemoryMax is 20.0 MiB now, not the 16.0 MiB"):
        checker(lab).check(stale)
    assert json.dumps(properties(lab, HOG)["dropins"]) == "[]"


def test_a_unit_at_its_memory_limit_gets_a_checked_tuning_patch_queued(
    systemd_container: LabSystemd,
    unit_factory: UnitFactory,
    make_config: Callable[..., Config],
) -> None:
    """The finding from the real unit's properties, read over the lab's bus by the
    sidecar's own D-Bus child (MemoryMax=20M); only Result=oom-kill and the restart count
    are set by the test, because this lab cannot enforce MemoryMax (see
    test_hardening_patch.py). The raise is then checked against the real unit, queued,
    and exported as a drop-in."""
    lab = systemd_container
    started(lab, unit_factory, HOG, HOG_UNIT)
    bus = IsolatedBus(lab.bus_address)
    try:
        real = bus.unit_state(HOG)
    finally:
        bus.close()
    assert real.memory_max == 20 * 1024 * 1024
    killed = real.model_copy(update={"result": "oom-kill", "n_restarts": 2})
    finding = oom_at_limit(killed, 0)
    assert finding is not None
    incident = Incident(id="inc-oom", source="finding", findings=[finding])
    proposals, _ = runbook_proposals(incident)
    tune = next(p for p in proposals if isinstance(p.action, TuneUnit))
    cfg = make_config(autonomy_level="auto-full")
    rem = Remediator(cfg, Store(cfg.state_dir), NothingRuns(), hardening=checker(lab))
    handled = rem.handle(incident.id, tune, Scope())
    assert handled.verdict.outcome is Outcome.QUEUE, handled.verdict.reason
    assert "verify: systemd-analyze verify passed" in handled.verdict.reason
    assert handled.approval is not None
    env = {"MACHA_STATE_DIR": str(cfg.state_dir), "MACHA_CONFIG": ""}
    shown = CliRunner().invoke(approve_main, ["show", str(handled.approval.id)], env=env)
    assert "setting:   MemoryMax 20.0 MiB -> 30.0 MiB: " in shown.output
    exported = CliRunner().invoke(approve_main, ["export", str(handled.approval.id)], env=env)
    assert "[Service]\nMemoryMax=31457280\n" in exported.stdout_bytes.decode()
    assert properties(lab, HOG)["memory_max"] == 20 * 1024 * 1024  # never applied by us


def test_on_nixos_the_lab_check_adds_the_checked_diff(
    systemd_container: LabSystemd, unit_factory: UnitFactory, tmp_path: Path
) -> None:
    need("nix-instantiate")
    lab = systemd_container
    started(lab, unit_factory, WEB, WEB_UNIT)
    config_dir = tmp_path / "nixos"
    config_dir.mkdir()
    (config_dir / "configuration.nix").write_text('{ ... }:\n{\n  networking.hostName = "h";\n}\n')
    report = checker(lab, config_dir).check(harden())
    assert (
        report.nixos == "the diff of configuration.nix applies and parses (nix-instantiate --parse)"
    )
    (config_dir / "configuration.nix").write_text("{ ... }:\n{\n  broken = ;\n}\n")
    with pytest.raises(PatchRefused, match=r"configuration\.nix does not parse after the patch"):
        checker(lab, config_dir).check(harden())
