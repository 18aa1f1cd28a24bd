"""DESIGN.md invariant 11: nothing an alert, a finding, a model or an approval says makes the
sidecar act on a unit whose blast radius is the host: systemd.special(7), targets, and
the protected classes (remote access, firewalls, consoles, polkit, udev, resolvers,
network managers, nix, upgrades, the sidecar). Refused at every autonomy level, before
the executor is even asked for the unit's state.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from macha_obs.agent.runbooks import runbook_proposals
from macha_obs.config import AutonomyLevel, Config
from macha_obs.intake.incidents import IncidentStore
from macha_obs.models import (
    Action,
    Alert,
    ExecutionResult,
    Finding,
    FindingKind,
    Incident,
    Outcome,
    Proposal,
    ResetFailed,
    RestartUnit,
    Risk,
    StartUnit,
    UnitState,
)
from macha_obs.policy.judge import PolicyContext, judge
from macha_obs.policy.risk import risk_of
from macha_obs.policy.scope import Confirmation, Scope
from macha_obs.protected import PROTECTED_CLASSES
from macha_obs.remediate.remediator import Remediator
from macha_obs.store import Store
from tests.test_policy import NOW

ROOT = Path(__file__).resolve().parents[1]


def _words(text: str) -> list[str]:
    return text.split()


# systemd.special(7), systemd 252 (Debian 12) and later: every unit it names.
SPECIAL_UNITS = _words("""
-.mount -.slice app.slice background.slice basic.target blockdev@dev-mapper-x.target
bluetooth.target boot-complete.target cryptsetup-pre.target cryptsetup.target
ctrl-alt-del.target dbus.service dbus.socket default.target display-manager.service
emergency.target emergency.service exit.target factory-reset.target final.target
first-boot-complete.target getty-pre.target getty.target graphical-session-pre.target
graphical-session.target graphical.target halt.target hibernate.target hybrid-sleep.target
init.scope initrd-fs.target initrd-root-device.target initrd-root-fs.target
initrd-usr-fs.target initrd.target integritysetup-pre.target integritysetup.target
kbrequest.target kexec.target local-fs-pre.target local-fs.target machine.slice
machines.target multi-user.target network-online.target network-pre.target network.target
nss-lookup.target nss-user-lookup.target paths.target poweroff.target printer.target
reboot.target remote-cryptsetup.target remote-fs-pre.target remote-fs.target
remote-veritysetup.target rescue.target rescue.service rpcbind.target runlevel0.target
runlevel1.target runlevel2.target runlevel3.target runlevel4.target runlevel5.target
runlevel6.target session.slice shutdown.target sigpwr.target sleep.target slices.target
smartcard.target sockets.target soft-reboot.target sound.target suspend-then-hibernate.target
suspend.target swap.target sysinit.target syslog.socket sysroot-usr.mount sysroot.mount
system-update-cleanup.service system-update-pre.target system-update.target system.slice
systemd-logind.service systemd-machined.service systemd-nspawn@web.service
systemd-journald.service systemd-udevd.service systemd-networkd.service
systemd-resolved.service sysusr-usr.mount time-set.target time-sync.target timers.target
umount.target usb-gadget.target user.slice user@1000.service veritysetup-pre.target
veritysetup.target xdg-desktop-autostart.target
""")

# What cuts access or control of the host, as NixOS and Debian name it (issue 9's list).
ACCESS_UNITS = _words("""
ssh.service sshd.service sshd.socket sshd@0-10.0.0.1:22-10.0.0.2:5555.service
tailscaled.service wg-quick-wg0.service wg-quick@wg0.service wireguard-wg0.service
openvpn-office.service openvpn@client.service zerotierone.service zerotier-one.service
netbird.service nebula@mesh.service tinc.vpn.service dropbear.service
firewall.service nftables.service iptables.service ip6tables.service firewalld.service
ufw.service netfilter-persistent.service polkit.service getty@tty1.service
serial-getty@ttyS0.service autovt@tty2.service console-getty.service udev.service
NetworkManager.service NetworkManager-wait-online.service networking.service
dhcpcd.service wpa_supplicant.service network-setup.service network-addresses-eth0.service
unbound.service dnsmasq.service named.service nscd.service resolvconf.service
nix-daemon.service nix-daemon.socket nixos-upgrade.service unattended-upgrades.service
macha-autonomous.service macha-autonomous-privileged@nix_gc.service macha-obs.service
sssd.service
""")

LEVELS = list(AutonomyLevel)
KINDS: list[Callable[..., RestartUnit | StartUnit | ResetFailed]] = [
    RestartUnit,
    StartUnit,
    ResetFailed,
]


def test_the_special_list_is_the_man_page() -> None:
    """The man page on this machine names nothing the list above misses."""
    import gzip
    import re

    page = Path("/usr/share/man/man7/systemd.special.7.gz")
    if not page.exists():  # Debian's systemd package ships it; docs may be excluded
        return
    text = gzip.decompress(page.read_bytes()).decode().replace("\\-", "-").replace("\\&", "")
    named = set(
        re.findall(r"^([A-Za-z0-9@_.:-]+\.(?:target|service|socket|slice|scope|mount))", text, re.M)
    )
    covered = {u for u in named if "@" not in u}
    cfg = Config()
    assert {u for u in covered if not cfg.is_protected(u)} == set()


@pytest.mark.parametrize("unit", SPECIAL_UNITS + ACCESS_UNITS)
def test_invariant_11_refused_at_every_level_approved_or_not(unit: str) -> None:
    scope = Scope(units=frozenset({unit}), alerted=frozenset({unit}))
    for level in LEVELS:
        ctx = PolicyContext(config=Config(autonomy_level=level), now=NOW)
        for kind in KINDS:
            for approved in (False, True):
                verdict = judge(
                    kind(unit=unit),
                    ctx,
                    approved=approved,
                    scope=scope,
                    problem=Confirmation.confirmed(),
                )
                assert verdict.outcome is Outcome.REFUSE, (unit, level, kind, verdict.reason)
                assert verdict.risk is Risk.FORBIDDEN


def test_every_class_has_a_reason_and_the_reason_reaches_the_verdict() -> None:
    cfg = Config()
    for cls in PROTECTED_CLASSES:
        assert cls.why
        assert cls.units
    risk, why = risk_of(RestartUnit(unit="tailscaled.service"), cfg)
    assert risk is Risk.FORBIDDEN
    assert "remote-access" in why


def test_the_json_is_the_one_source() -> None:
    data = json.loads((ROOT / "macha_obs" / "protected_units.json").read_text())
    units = [u for c in data["classes"] for u in c["units"]]
    assert tuple(units) == Config().protected_units


def test_mounts_and_swaps_may_be_queued_never_executed_automatically() -> None:
    for unit in ("data.mount", "home.automount", "swapfile.swap"):
        risk, _ = risk_of(StartUnit(unit=unit), Config())
        assert risk is Risk.HIGH
        for level in LEVELS:
            ctx = PolicyContext(config=Config(autonomy_level=level), now=NOW)
            got = judge(
                StartUnit(unit=unit),
                ctx,
                scope=Scope(units=frozenset({unit})),
                problem=Confirmation.confirmed(),
            )
            assert got.outcome is not Outcome.EXECUTE
            expected = Outcome.RECORD if level is AutonomyLevel.OBSERVE else Outcome.QUEUE
            assert got.outcome is expected


# ---- property: names generated inside every glob class


def _instances(pattern: str) -> st.SearchStrategy[str]:
    """Unit names that match a protected glob: each `*` filled with unit-name text."""
    filler = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,12}", fullmatch=True)
    parts = pattern.split("*")
    return st.lists(filler, min_size=len(parts) - 1, max_size=len(parts) - 1).map(
        lambda fills: "".join(p + f for p, f in zip(parts, [*fills, ""], strict=True))
    )


GLOBS = [p for c in PROTECTED_CLASSES for p in c.units if "*" in p]
NAMES = st.sampled_from(GLOBS).flatmap(_instances)


@settings(max_examples=300, deadline=None)
@given(NAMES, st.sampled_from(LEVELS), st.sampled_from(KINDS), st.booleans())
def test_invariant_11_property_every_name_in_a_protected_class_is_refused(
    unit: str,
    level: AutonomyLevel,
    kind: Callable[..., RestartUnit | StartUnit | ResetFailed],
    approved: bool,
) -> None:
    assert any(fnmatch.fnmatchcase(unit, g) for g in GLOBS)
    try:
        action = kind(unit=unit)
    except ValueError:
        return  # not a valid unit name at all: rejected before the policy
    ctx = PolicyContext(config=Config(autonomy_level=level), now=NOW)
    scope = Scope(units=frozenset({unit}), alerted=frozenset({unit}))
    got = judge(action, ctx, approved=approved, scope=scope, problem=Confirmation.confirmed())
    assert got.outcome is Outcome.REFUSE


# ---- through every door: an alert, a finding, a model answer, an approval


class NeverAsked:
    """An executor that fails the test if anything asks it anything."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def run(self, action: Action) -> ExecutionResult:
        self.calls.append(f"run {action}")
        raise AssertionError(f"executor ran {action}")

    def unit_state(self, unit: str) -> UnitState:
        self.calls.append(f"state {unit}")
        return UnitState(name=unit, load_state="loaded", active_state="failed", sub_state="failed")


def alert_about(unit: str) -> Alert:
    return Alert.model_validate(
        {
            "status": "firing",
            "labels": {"alertname": "UnitFailed", "unit": unit},
            "startsAt": "2026-11-25T10:00:00Z",
        }
    )


@pytest.mark.parametrize(
    "unit",
    ["reboot.target", "poweroff.target", "emergency.target", "tailscaled.service",
     "wg-quick-wg0.service", "nftables.service", "polkit.service", "getty@tty1.service",
     "nixos-upgrade.service", "dbus.service"],
)  # fmt: skip
def test_invariant_11_no_door_leads_to_the_executor(tmp_path: Path, unit: str) -> None:
    """The issue's reproductions: an ordinary UnitFailed alert (or finding, or model
    answer, or a queued item a human approves) naming the unit, at auto-full."""
    cfg = Config(autonomy_level=AutonomyLevel.AUTO_FULL, state_dir=tmp_path)
    executor = NeverAsked()
    with Store(tmp_path) as store:
        incidents = IncidentStore(store)
        rem = Remediator(cfg, store, executor, scope_of=incidents.scope_of)
        finding = Finding(kind=FindingKind.UNIT_FAILED, subject=unit, unit=unit, summary="x")
        by_alert = Incident(id="a", source="alert", alerts=[alert_about(unit)])
        by_finding = Incident(id="f", source="finding", findings=[finding])
        for incident in (by_alert, by_finding):
            proposals, _ = runbook_proposals(incident)
            assert proposals
            for proposal in proposals:
                handled = rem.handle(incident.id, proposal, Scope.of([incident]))
                assert handled.verdict.outcome is not Outcome.EXECUTE
        # a model's answer: the same typed action, judged the same way
        model = Proposal(action=RestartUnit(unit=unit), reason="the model says so")
        assert rem.handle("a", model, Scope.of([by_alert])).verdict.outcome is Outcome.REFUSE
        # an approval of an item queued before (an older config): refused, not run
        incident_id, _ = incidents.open_for_findings(unit, [finding])
        store.approvals.enqueue(
            incident_id, RestartUnit(unit=unit), risk=Risk.LOW, reason="r", ttl=60
        )
        # (the runbooks' read-only look at the protected unit is queued for a person too)
        [item] = [a for a in store.approvals.list_approvals() if a.action == RestartUnit(unit=unit)]
        approved = rem.approve(item.id, "alice")
        assert approved.verdict.outcome is Outcome.REFUSE
        assert store.ledger.list_actions() == []
    # refused before the executor was even asked for the unit's state
    assert executor.calls == []


def test_the_readme_lists_every_class_and_unit() -> None:
    readme = (ROOT / "README.md").read_text()
    for cls in PROTECTED_CLASSES:
        row = next((line for line in readme.splitlines() if line.startswith(f"| {cls.name} |")), "")
        assert row, f"README has no row for {cls.name}"
        for unit in cls.units:
            assert f"`{unit}`" in row, (cls.name, unit)
