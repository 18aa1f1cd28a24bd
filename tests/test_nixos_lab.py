"""The units, polkit rule, config and CLI wrappers the NixOS module renders, installed in
a throw-away container with a real systemd, dbus-daemon and polkitd (tests/harness/labsd.py),
with this checkout's venv as the package: the daemon runs hardened and unprivileged,
polkit holds its user to its verbs, the privileged template runs as the daemon asks, and
the wrappers run as the service user."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import pytest

from macha_obs.config import split_host_port
from tests.harness.labsd import LabSystemd, checkout_dropin, wait_until
from tests.harness.nix_support import (
    ALERTMANAGER_ON,
    PRIVILEGED,
    SEED_EXAMPLE,
    SERVICE,
    WITH_ALERTMANAGER,
    eval_module,
    need,
    render_unit,
    to_toml,
)
from tests.test_nixos_units import alertmanager_unit

# ------------------------------------------------------------------ the module in a container

BUSCTL = (
    "busctl", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
    "org.freedesktop.systemd1.Manager",
)  # fmt: skip
LAB_UID = 4711


@dataclass
class ModuleLab:
    """A LabSystemd with what the module installs: the daemon's user, the polkit rule,
    /etc/macha-obs/config.toml, the state directory, the two units and the CLI wrappers."""

    systemd: LabSystemd
    tools: dict[str, str]
    port: int

    @classmethod
    def install(cls, lab: LabSystemd, result: Mapping[str, Any], apps: Sequence[str]) -> Self:
        etc = lab.root / "etc"
        with (etc / "passwd").open("a") as passwd:
            passwd.write(f"{SERVICE}:x:{LAB_UID}:{LAB_UID}::/var/lib/{SERVICE}:/bin/false\n")
        with (etc / "group").open("a") as group:
            group.write(f"{SERVICE}:x:{LAB_UID}:\n")
        files = result["config"]["environment"]["etc"]
        rules = etc / "polkit-1" / "rules.d"
        rules.mkdir(parents=True, exist_ok=True)
        rule = files["polkit-1/rules.d/60-macha-autonomous.rules"]["text"]
        (rules / "60-macha-autonomous.rules").write_text(rule)
        settings = files["macha-obs/config.toml"]["source"]["toml"]
        (etc / "macha-obs").mkdir(exist_ok=True)
        (etc / "macha-obs" / "config.toml").write_text(to_toml(settings))
        # what StateDirectory= makes, for the CLI tools before the daemon first ran
        state = lab.root / "var" / "lib" / SERVICE
        state.mkdir(parents=True, exist_ok=True)
        os.chown(state, LAB_UID, LAB_UID)
        state.chmod(0o750)

        # Only for this machine: the checkout and its venv wherever they are (the unit's
        # sandbox as shipped); PATH: the stub packages' paths mean nothing here.
        test_only = checkout_dropin() + "Environment=PATH=/usr/bin:/bin\n"
        services = result["config"]["systemd"]["services"]
        for name in (SERVICE, f"{PRIVILEGED}@"):
            lab.write_unit(f"{name}.service", render_unit(services[name]), reload=False)
            lab.write_unit(f"{name}.service.d/test-only.conf", test_only, reload=False)
        for app in apps:
            lab.write_unit(app, "[Service]\nExecStart=/bin/sleep infinity\n", reload=False)
        lab.daemon_reload()
        tools = {t["name"]: t["text"] for t in result["config"]["environment"]["systemPackages"]}
        return cls(lab, tools, split_host_port(settings["listen_address"])[1])

    def as_daemon_user(self, *busctl_args: str) -> subprocess.CompletedProcess[str]:
        """A call on systemd's Manager as the daemon's user: polkit decides."""
        become = ("setpriv", f"--reuid={SERVICE}", f"--regid={SERVICE}", "--clear-groups")
        return self.systemd.run(*become, *BUSCTL, *busctl_args, check=False)

    def tool(self, name: str, *args: str) -> str:
        """A CLI wrapper from environment.systemPackages, run as root; its stdout."""
        # the stub packages' coreutils and util-linux are the container's own
        script = self.tools[name].replace("/stub/coreutils/bin/", "/usr/bin/")
        script = script.replace("/stub/util-linux/bin/", "/usr/bin/")
        done = self.systemd.run("/bin/sh", "-c", script, name, *args, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def show(self, unit: str, prop: str) -> str:
        return self.systemd.run("systemctl", "show", "-p", prop, "--value", unit).stdout.strip()

    def daemon_log(self) -> str:
        return self.systemd.journal(f"{SERVICE}.service")

    def actions(self) -> str:
        """The daemon's action ledger (actions.jsonl); empty before its first action."""
        return self.systemd.run("cat", f"/var/lib/{SERVICE}/actions.jsonl", check=False).stdout

    def recorded(self, unit: str, timeout: float = 60.0) -> bool:
        """Whether the ledger names `unit` within `timeout`: a restart is written there
        once verified, after the unit is seen active again."""
        return wait_until(lambda: unit in self.actions(), timeout)

    @contextlib.contextmanager
    def running_daemon(self, timeout: float = 60.0) -> Iterator[None]:
        """The daemon started and ready (READY=1); stopped (SIGTERM) and inactive after."""
        unit = f"{SERVICE}.service"
        self.systemd.run("systemctl", "start", "--no-block", unit)
        seen = ("", "")

        def settled() -> bool:
            nonlocal seen
            seen = self.systemd.unit_state(unit)
            # a daemon that exits is restarted (Restart=on-failure): auto-restart is a failure
            return seen[0] in ("active", "failed") or seen[1] == "auto-restart"

        try:
            wait_until(settled, timeout)
            assert seen[0] == "active", f"{unit} is {seen}:\n{self.daemon_log()}"
            yield
        finally:
            self.systemd.run("systemctl", "stop", unit, check=False)
            self.systemd.wait_for_state(unit, ("inactive", "failed"), timeout=timeout)


# ------------------------------------------------------------------ real systemd and polkit


@pytest.fixture(scope="module")
def lab(systemd_available: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleLab]:
    """A container of its own (real systemd, dbus-daemon, polkitd) with what the module
    installs, rendered with this checkout's venv as the package."""
    need("busctl")
    if not Path("/usr/lib/polkit-1/polkitd").exists():
        need("polkitd")  # fails under CI, skips elsewhere: apt-get install polkitd
    settings = {
        **SEED_EXAMPLE,
        "checkInterval": 2,
        "protectedUnits": ["postgresql.service"],
        "settings": {"llm_enabled": False},
    }
    result = eval_module(settings, pkg_path=sys.prefix)
    systemd = LabSystemd(workdir=tmp_path_factory.mktemp("nixos-lab"))
    systemd.start()
    try:
        lab = ModuleLab.install(systemd, result, apps=("lab-app.service", "postgresql.service"))
        yield lab
    finally:
        leftovers = systemd.stop()
        assert not leftovers, leftovers


REAL_POLKIT_CASES = [
    ("StartUnit", "lab-app.service", "allowed"),
    ("RestartUnit", "lab-app.service", "allowed"),
    ("ResetFailedUnit", "lab-app.service", "allowed"),
    ("StopUnit", "lab-app.service", "denied"),
    ("ReloadOrRestartUnit", "lab-app.service", "denied"),
    ("TryRestartUnit", "lab-app.service", "denied"),
    ("RestartUnit", "postgresql.service", "denied"),  # protectedUnits
    ("StartUnit", f"{SERVICE}.service", "denied"),  # built in: the sidecar itself
    ("RestartUnit", "systemd-journald.service", "denied"),
    ("ResetFailedUnit", "dbus.service", "denied"),
    ("RestartUnit", f"{PRIVILEGED}@nix-gc.service", "denied"),
    ("StartUnit", f"{PRIVILEGED}@journal-vacuum-1M.service", "denied"),
    ("StartUnit", f"{PRIVILEGED}@nixos-rebuild-build-vm.service", "denied"),
]


@pytest.mark.systemd
def test_real_polkit_holds_the_daemons_user_to_its_verbs(lab: ModuleLab) -> None:
    """systemd asks polkitd, polkitd runs the rendered rule: as the daemon's user."""
    wrong = []
    for method, unit, want in REAL_POLKIT_CASES:
        args = (
            (method, "s", unit) if method == "ResetFailedUnit" else (method, "ss", unit, "replace")
        )
        done = lab.as_daemon_user(*args)
        got = "allowed" if done.returncode == 0 else "denied"
        # NO from the rule is "Access denied"; a request the rule did not handle would fall
        # through to polkit's default: "Interactive authentication required"
        if got != want or (got == "denied" and "Access denied" not in done.stderr):
            wrong.append((method, unit, want, done.returncode, done.stderr.strip()))
    # everything else systemd offers is refused outright
    others: list[tuple[str, ...]] = [
        ("Reload",),
        ("EnableUnitFiles", "asbb", "1", "lab-app.service", "false", "true"),
    ]
    for other in others:
        done = lab.as_daemon_user(*other)
        if done.returncode == 0 or "Access denied" not in done.stderr:
            wrong.append((other[0], "", "denied", done.returncode, done.stderr.strip()))
    assert not wrong
    # and root is not this rule's business
    root = lab.systemd.run(*BUSCTL, "RestartUnit", "ss", "postgresql.service", "replace")
    assert root.returncode == 0, root.stderr


@pytest.mark.systemd
def test_privileged_unit_runs_hardened_as_the_daemon_asks(lab: ModuleLab) -> None:
    """The daemon's user starts journal-vacuum-16M; root runs `macha-obs privileged` in
    the rendered sandbox, and it succeeds."""
    unit = f"{PRIVILEGED}@journal-vacuum-16M.service"
    done = lab.as_daemon_user("StartUnit", "ss", unit, "replace")
    assert done.returncode == 0, done.stderr
    state = lab.systemd.wait_for_state(unit, ("inactive", "failed"), timeout=60)
    log = lab.systemd.journal(unit)
    assert state[0] == "inactive", log
    assert lab.show(unit, "Result") == "success", log
    assert "journalctl --vacuum-size=16M" in log


@pytest.mark.systemd
def test_daemon_unit_runs_hardened(lab: ModuleLab) -> None:
    """The rendered daemon unit, with every hardening line, runs the real daemon: it gets
    ready (Type=notify), answers /healthz as its own user, and stops cleanly on SIGTERM."""
    with lab.running_daemon():
        health = lab.systemd.run(
            "/usr/bin/python3", "-c",
            "import urllib.request as u;"
            f"print(u.urlopen('http://127.0.0.1:{lab.port}/healthz', timeout=10).status)",
            check=False,
        )  # fmt: skip
        assert health.stdout.strip() == "200", health.stderr + lab.daemon_log()
        pid = lab.show(f"{SERVICE}.service", "MainPID")
        assert lab.systemd.run("stat", "-c", "%U", f"/proc/{pid}").stdout.strip() == SERVICE
    assert lab.systemd.unit_state(f"{SERVICE}.service")[0] == "inactive", lab.daemon_log()


@pytest.mark.systemd
def test_cli_tools_run_as_the_service_user_on_its_config_and_state(lab: ModuleLab) -> None:
    """Run as root with no flags, `macha-approve` and `macha-obs` drop to the daemon's user
    and read /etc/macha-obs/config.toml and its state directory; nothing root-owned stays."""
    assert json.loads(lab.tool("macha-approve", "list", "--json")) == []
    shown = json.loads(lab.tool("macha-obs", "config", "show", "--json"))
    assert shown["state_dir"] == f"/var/lib/{SERVICE}"
    assert shown["privileged_unit"] == PRIVILEGED
    strangers = lab.systemd.run("find", f"/var/lib/{SERVICE}", "-not", "-user", SERVICE)
    assert strangers.stdout.split() == []


@pytest.mark.systemd
def test_macha_check_takes_its_own_options_through_the_wrapper(lab: ModuleLab) -> None:
    """`macha-check --autonomy-level observe`, run as root through the rendered wrapper:
    the console script parses its options (no "No such option"), drops to the service
    user and runs one cycle on the service's config and state, acting on nothing."""

    before = lab.actions()
    out = lab.tool("macha-check", "--autonomy-level", "observe")
    assert out.startswith("findings: "), out
    assert "policy: execute" not in out, out
    assert lab.actions() == before
    strangers = lab.systemd.run("find", f"/var/lib/{SERVICE}", "-not", "-user", SERVICE)
    assert strangers.stdout.split() == []


@pytest.mark.systemd
def test_daemon_restarts_a_failed_unit_through_polkit(lab: ModuleLab) -> None:
    """auto-safe, unprivileged, hardened: a killed unit is restarted by the daemon."""
    app = "lab-app.service"
    lab.systemd.run("systemctl", "start", app)
    with lab.running_daemon():
        # the daemon may restart it before anyone sees it failed: a new MainPID says it did
        old = lab.show(app, "MainPID")

        def restarted() -> bool:
            return lab.systemd.unit_state(app)[0] == "active" and lab.show(app, "MainPID") != old

        lab.systemd.run("systemctl", "kill", "--signal=SIGKILL", app)
        assert wait_until(restarted, timeout=120), lab.daemon_log()
        assert lab.recorded(app), lab.actions() + lab.daemon_log()


@pytest.mark.systemd
def test_alertmanager_gets_the_token_the_daemon_generated(lab: ModuleLab) -> None:
    """A first boot with no webhookTokenFile: starting Alertmanager pulls in the daemon
    (Wants=), waits for its READY=1 (After=), by which time the daemon, as its own user,
    has written a 0600 token; systemd copies that file into Alertmanager's credentials."""
    result = eval_module({**SEED_EXAMPLE, **WITH_ALERTMANAGER}, other=ALERTMANAGER_ON)
    units = result["config"]["systemd"]["services"]
    # a stand-in that keeps what Alertmanager would read as credentials_file
    saw = "/run/alertmanager-saw-token"
    shell = f'cat "$$CREDENTIALS_DIRECTORY/macha-webhook-token" > {saw}'  # $$: for sh
    stand_in = alertmanager_unit(units["alertmanager"], Path("/bin/sh"))
    stand_in["serviceConfig"] = {
        **stand_in["serviceConfig"],
        "Type": "oneshot",
        "RemainAfterExit": True,
        "ExecStart": f"/bin/sh -c '{shell}'",
    }
    lab.systemd.write_unit("alertmanager.service", render_unit(stand_in))
    # systemd hands credentials over by moving a mount out of the service's namespace: a
    # booted host's / is shared (systemd makes it so outside containers), the lab's is not
    lab.systemd.run("mount", "--make-rshared", "/")
    token = f"/var/lib/{SERVICE}/webhook.token"
    lab.systemd.run("rm", "-f", token, saw)
    daemon = f"{SERVICE}.service"
    try:
        done = lab.systemd.run(
            "systemctl", "start", "alertmanager.service", check=False, timeout=120
        )
        assert done.returncode == 0, done.stderr + lab.systemd.journal("alertmanager.service")
        assert lab.systemd.unit_state(daemon)[0] == "active", lab.daemon_log()
        owner_mode = lab.systemd.run("stat", "-c", "%U %a", token).stdout.split()
        assert owner_mode == [SERVICE, "600"]
        generated = lab.systemd.run("cat", token).stdout
        assert len(generated.strip()) >= 43
        assert lab.systemd.run("cat", saw).stdout == generated
        # the daemon says where its token is, never what it is
        assert token in lab.daemon_log()
        assert generated.strip() not in lab.daemon_log()
    finally:
        lab.systemd.run("systemctl", "stop", "alertmanager.service", daemon, check=False)
        lab.systemd.wait_for_state(daemon, ("inactive", "failed"), timeout=60)
        lab.systemd.run("rm", "-f", saw)
