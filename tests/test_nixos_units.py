"""The units and the polkit rule the NixOS module renders: `systemd-analyze verify` and
`security` on the unit files, the rule run in node against a table of requests, the config
model's protected units, Python's fnmatch and the privileged instance grammar. The same
units under a real systemd and polkitd: tests/test_nixos_lab.py."""

from __future__ import annotations

import fnmatch
import random
import re
from pathlib import Path
from typing import Any

import pytest

from macha_obs import config as config_mod
from macha_obs.execute.privileged import parse_instance
from tests.harness.nix_support import (
    ALERTMANAGER_ON,
    DOCS,
    PRIVILEGED,
    SEED_EXAMPLE,
    SERVICE,
    WITH_ALERTMANAGER,
    eval_module,
    exposure,
    polkit,
    render_unit,
    systemd_analyze,
)


@pytest.fixture(scope="module")
def docs() -> str:
    return DOCS.read_text()


# ------------------------------------------------------------------ systemd units


@pytest.fixture(scope="module")
def units(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The daemon's unit and an instance of the privileged template, as NixOS writes them."""
    root = tmp_path_factory.mktemp("units")
    exe = root / "pkg" / "bin" / "macha-obs"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    result = eval_module(
        {**SEED_EXAMPLE, "webhookTokenFile": "/run/secrets/t"}, pkg_path=str(root / "pkg")
    )
    services = result["config"]["systemd"]["services"]
    paths = {
        SERVICE: root / f"{SERVICE}.service",
        PRIVILEGED: root / f"{PRIVILEGED}@nix-gc-older-than-14d.service",
    }
    paths[SERVICE].write_text(render_unit(services[SERVICE]))
    paths[PRIVILEGED].write_text(render_unit(services[f"{PRIVILEGED}@"]))
    # the default, no webhookTokenFile: the daemon without LoadCredential=, and what the
    # module adds to Alertmanager's unit (ordering, the generated token's credential)
    # over a stand-in for the unit NixOS renders for it
    default = eval_module(
        {**SEED_EXAMPLE, **WITH_ALERTMANAGER},
        other=ALERTMANAGER_ON,
        pkg_path=str(root / "pkg"),
    )["config"]["systemd"]["services"]
    generated = root / "generated"
    generated.mkdir()
    paths["default"] = generated / f"{SERVICE}.service"
    paths["default"].write_text(render_unit(default[SERVICE]))
    paths["alertmanager"] = generated / "alertmanager.service"
    paths["alertmanager"].write_text(render_unit(alertmanager_unit(default["alertmanager"], exe)))
    return paths


def alertmanager_unit(added: dict[str, Any], exe: Path) -> dict[str, Any]:
    """What the module adds to Alertmanager, over a stand-in for NixOS's own unit (without
    NixOS' default PATH: the stand-in packages on it do not exist here)."""
    return {
        **added,
        "environment": {},
        "path": [],
        "description": "Alertmanager (a stand-in for the unit NixOS renders)",
        "serviceConfig": {"ExecStart": str(exe), **added["serviceConfig"]},
    }


@pytest.mark.parametrize("unit", [SERVICE, PRIVILEGED, "default", "alertmanager"])
def test_units_pass_systemd_analyze_verify(units: dict[str, Path], unit: str) -> None:
    done = systemd_analyze("verify", "--man=no", str(units[unit]))
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # unknown keys are only warned about


def test_daemon_unit_hardening(units: dict[str, Path], docs: str) -> None:
    text = units[SERVICE].read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=60s",
        "User=macha-autonomous",
        "StateDirectory=macha-autonomous",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=true",
        "NoNewPrivileges=true",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
        "RestrictAddressFamilies=AF_UNIX",
        "MemoryMax=512M",
        "ExecStart="
        + str(units[SERVICE].parent / "pkg/bin/macha-obs")
        + " --config /etc/macha-obs/config.toml serve",
    ):
        assert line in text.splitlines(), line
    assert not re.search(r"^(User=root|AmbientCapabilities=.+)", text, re.M)
    score, verdict = exposure(units[SERVICE])
    assert score <= 2.0, f"{SERVICE}: exposure {score} {verdict}"
    # the README reports the measured figure
    assert f"| `{SERVICE}.service` | {score} {verdict} |" in docs


def test_privileged_unit_is_a_typed_oneshot(units: dict[str, Path], docs: str) -> None:
    text = units[PRIVILEGED].read_text().splitlines()
    assert "Type=oneshot" in text
    exec_start = next(line for line in text if line.startswith("ExecStart="))
    assert exec_start.endswith("/bin/macha-obs privileged %i")
    assert "X-RestartIfChanged=false" in text
    assert 'Environment="NIX_REMOTE=daemon"' in text  # builds and gc happen in nix-daemon
    path = next(line for line in text if line.startswith('Environment="PATH='))
    assert "/stub/nixos-rebuild/bin" in path
    assert not any(line.startswith("User=") for line in text)  # root, deliberately
    score, verdict = exposure(units[PRIVILEGED])
    assert score < 9.0
    assert f"| `{PRIVILEGED}@….service` | {score} {verdict} |" in docs


# ------------------------------------------------------------------ polkit


MANAGE = "org.freedesktop.systemd1.manage-units"


def _rule(protected: list[str] | None = None) -> str:
    result = eval_module({"enable": True, "protectedUnits": protected or []})
    text: str = result["config"]["environment"]["etc"][
        "polkit-1/rules.d/60-macha-autonomous.rules"
    ]["text"]
    return text


def _q(unit: str, verb: str, user: str = SERVICE, action: str = MANAGE) -> dict[str, Any]:
    return {"user": user, "id": action, "details": {"unit": unit, "verb": verb}}


POLKIT_CASES = [
    # the verbs it uses, on units that are not protected
    (_q("nginx.service", "start"), "YES"),
    (_q("nginx.service", "restart"), "YES"),
    (_q("nginx.service", "reset-failed"), "YES"),
    (_q("ollama.service", "restart"), "YES"),
    (_q("fussh.service", "restart"), "YES"),  # a glob, not a substring
    (_q("backup.timer", "start"), "YES"),
    # verbs it never uses
    (_q("nginx.service", "stop"), "NO"),
    (_q("nginx.service", "reload"), "NO"),
    (_q("nginx.service", "try-restart"), "NO"),
    (_q("nginx.service", "kill"), "NO"),
    (_q("nginx.service", "clean"), "NO"),
    (_q("nginx.service", ""), "NO"),
    # protected, built in
    (_q("sshd.service", "restart"), "NO"),
    (_q("sshd@22-10.0.0.1:22-10.0.0.2:5555.service", "restart"), "NO"),
    (_q("systemd-journald.service", "restart"), "NO"),
    (_q("systemd-logind.service", "start"), "NO"),
    (_q("dbus.service", "restart"), "NO"),
    (_q("nix-daemon.service", "restart"), "NO"),
    (_q("NetworkManager-wait-online.service", "start"), "NO"),
    (_q("network-online.target", "start"), "NO"),
    (_q("user@1000.service", "restart"), "NO"),
    (_q("-.mount", "start"), "NO"),
    (_q("macha-autonomous.service", "restart"), "NO"),
    (_q("", "start"), "NO"),
    # protected by the user (postgresql.service, k3s*.service)
    (_q("postgresql.service", "restart"), "NO"),
    (_q("k3s-agent.service", "start"), "NO"),
    (_q("k3.service", "start"), "YES"),
    # the privileged helper: start, with an instance from the grammar only
    (_q(f"{PRIVILEGED}@nix-gc.service", "start"), "YES"),
    (_q(f"{PRIVILEGED}@nix-gc-older-than-14d.service", "start"), "YES"),
    (_q(f"{PRIVILEGED}@journal-vacuum-500M.service", "start"), "YES"),
    (_q(f"{PRIVILEGED}@nixos-rebuild-switch.service", "start"), "YES"),
    (_q(f"{PRIVILEGED}@nixos-rollback.service", "start"), "YES"),
    (_q(f"{PRIVILEGED}@nix-gc.service", "restart"), "NO"),
    (_q(f"{PRIVILEGED}@nix-gc.service", "reset-failed"), "NO"),
    (_q(f"{PRIVILEGED}@nix-gc.socket", "start"), "NO"),
    (_q(f"{PRIVILEGED}@nix-gc-older-than-0d.service", "start"), "NO"),
    (_q(f"{PRIVILEGED}@nixos-rebuild-build-vm.service", "start"), "NO"),
    (_q(f"{PRIVILEGED}@rm\\x20-rf.service", "start"), "NO"),
    (_q(f"{PRIVILEGED}@.service", "start"), "NO"),
    (_q(f"{PRIVILEGED}.service", "start"), "NO"),
    # everything else systemd offers is refused to it
    (_q("nginx.service", "start", action="org.freedesktop.systemd1.manage-unit-files"), "NO"),
    (_q("", "", action="org.freedesktop.systemd1.reload-daemon"), "NO"),
    (_q("", "", action="org.freedesktop.systemd1.set-environment"), "NO"),
    # not its business: other users, other actions
    (_q("sshd.service", "restart", user="alice"), "NOT_HANDLED"),
    (_q("", "", action="org.freedesktop.login1.reboot"), "NOT_HANDLED"),
]


def test_polkit_rule_allows_only_what_the_daemon_does() -> None:
    rule = _rule(["postgresql.service", "k3s*.service"])
    decisions = polkit(rule, [q for q, _ in POLKIT_CASES])["decisions"]
    wrong = [
        (q["details"], q["id"], q["user"], want, got)
        for (q, want), got in zip(POLKIT_CASES, decisions, strict=True)
        if want != got
    ]
    assert not wrong


def test_polkit_rule_protects_exactly_what_the_daemon_protects() -> None:
    """Every unit the config model calls protected is refused, and only those."""
    rule = _rule(["postgresql.service", "k3s*.service"])
    cfg = config_mod.validate({"protected_units": ["postgresql.service", "k3s*.service"]})
    rnd = random.Random(6)
    stems = ["ssh", "sshd", "systemd-journald", "systemd-x", "dbus", "network", "nix-daemon",
             "NetworkManager", "user", "macha-autonomous", "macha-obs", "k3s", "postgresql",
             "nginx", "ollama", "wpa_supplicant", "init", "-", "system"]  # fmt: skip
    tails = ["", "-a", "@1", "@x-y", "-wait-online", "d", "s"]
    kinds = [".service", ".socket", ".target", ".timer", ".path", ".scope", ".slice", ".mount"]
    units = sorted(
        {f"{stem}{tail}{kind}" for stem in stems for tail in tails for kind in kinds}
        | {rnd.choice(stems) + rnd.choice(tails) + rnd.choice(kinds) for _ in range(200)}
    )
    units = [u for u in units if not u.startswith(f"{PRIVILEGED}@")]
    decisions = polkit(rule, [_q(u, "restart") for u in units])["decisions"]
    wrong = [
        u for u, got in zip(units, decisions, strict=True) if (got == "NO") != cfg.is_protected(u)
    ]
    assert not wrong


def test_polkit_globs_match_like_fnmatchcase() -> None:
    """The rule's glob → RegExp agrees with Python's fnmatchcase, edge cases included."""
    rnd = random.Random(20261125)
    pattern_chars = "ab-.@*?[]!\\^&~|z"
    name_chars = "ab-.@[]!\\^&z\n"
    cases = [
        ("*", ""),
        ("[]]", "]"),
        ("[!]]", "a"),
        ("[z-a]", "b"),
        ("[!z-a]", "b"),
        ("[a-]", "-"),
        ("[^a]", "^"),
        ("[", "["),
        ("a[", "a["),
        ("**.service", "x.service"),
        ("network*.target", "network-online.target"),
        ("sshd@*.service", "sshd@.service"),
    ]
    for _ in range(5000):
        pattern = "".join(rnd.choice(pattern_chars) for _ in range(rnd.randint(0, 7)))
        name = "".join(rnd.choice(name_chars) for _ in range(rnd.randint(0, 6)))
        cases.append((pattern, name))
    got = polkit(_rule(), globs=cases)["globs"]
    wrong = [
        (p, n, g) for (p, n), g in zip(cases, got, strict=True) if g != fnmatch.fnmatchcase(n, p)
    ]
    assert not wrong


def test_polkit_instance_grammar_is_the_python_grammar() -> None:
    """The rule accepts exactly the instances `macha-obs privileged` parses."""
    numbers = [str(n) for n in (0, 1, 7, 9, 10, 14, 99, 100, 999, 1000, 3650, 9999, 10000)]
    numbers += ["00", "01", "007", "1234567", "12345678", "-1", "1.5", "", "x"]
    instances = ["nix-gc", "nixos-rollback", "nixos-rebuild-build", "nix-gc-", "NIX-GC"]
    instances += [f"nixos-rebuild-{m}" for m in ("dry-build", "test", "switch", "boot", "")]
    instances += [f"nix-gc-older-than-{n}d" for n in numbers]
    instances += [f"journal-vacuum-{n}M" for n in numbers]
    instances += [f"journal-vacuum-{n}G" for n in ("1", "10")]
    instances += [f"nix-gc-keep-{n}" for n in [*numbers, "2", "1001"]]
    instances += [f"nixos-activate-{n}" for n in [*numbers, "999999", "1000000"]]
    instances += [i + suffix for i in ("nix-gc", "nixos-rollback") for suffix in ("\n", " ", "x")]

    def python_accepts(instance: str) -> bool:
        try:
            parse_instance(instance)
        except ValueError:
            return False
        return True

    decisions = polkit(_rule(), [_q(f"{PRIVILEGED}@{i}.service", "start") for i in instances])
    wrong = [
        i
        for i, got in zip(instances, decisions["decisions"], strict=True)
        if (got == "YES") != python_accepts(i)
    ]
    assert not wrong
