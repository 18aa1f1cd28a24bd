"""The exposure collector against the lab systemd: its services, and a runner that enters it.

systemd-analyze refuses to talk to a systemd that is not this machine's PID 1 (its
`sd_booted()` looks for /run/systemd/system), so DBUS_SYSTEM_BUS_ADDRESS alone cannot
point it at the lab: the runner runs the real systemd-analyze inside the lab's
namespaces (lab.run's nsenter recipe), where the lab's systemd is PID 1 and its bus the
default one. Everything else (the unit table over D-Bus, /proc) is the collector's own.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping, Sequence

from macha_obs.collect.exposure import Runner
from macha_obs.collect.exposure_listeners import listening_units
from tests.harness.labsd import LabSystemd, wait_until
from tests.harness.systemd_fixtures import UnitFactory

PORT_OPEN, PORT_HARD, PORT_LOOP = 18461, 18462, 18463
OPEN = "labsd-expo-open.service"  # unhardened, listens on every address
HARDENED = "labsd-expo-hard.service"  # hardened, listens on every address
LOOPBACK = "labsd-expo-loop.service"  # unhardened, listens on 127.0.0.1 only

_SERVE = "ExecStart=/usr/bin/python3 -m http.server --bind {address} {port}\n"
UNHARDENED_TEXT = "[Service]\n" + _SERVE
# the catalogue's settings and more of what systemd-analyze weighs: scores 3.0 OK
HARDENING = (
    "DynamicUser=yes\nNoNewPrivileges=yes\nProtectSystem=strict\nProtectHome=yes\n"
    "PrivateTmp=yes\nPrivateDevices=yes\nProtectKernelTunables=yes\nProtectKernelModules=yes\n"
    "ProtectKernelLogs=yes\nProtectControlGroups=yes\nProtectClock=yes\nProtectHostname=yes\n"
    "RestrictAddressFamilies=AF_INET AF_INET6\nRestrictNamespaces=yes\nRestrictRealtime=yes\n"
    "RestrictSUIDSGID=yes\nLockPersonality=yes\nSystemCallArchitectures=native\n"
    "CapabilityBoundingSet=\nUMask=0077\n"
)
HARDENED_TEXT = UNHARDENED_TEXT + HARDENING

_OVERALL = re.compile(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?) ")


def unit_texts() -> dict[str, str]:
    return {
        OPEN: UNHARDENED_TEXT.format(address="0.0.0.0", port=PORT_OPEN),
        HARDENED: HARDENED_TEXT.format(address="0.0.0.0", port=PORT_HARD),
        LOOPBACK: UNHARDENED_TEXT.format(address="127.0.0.1", port=PORT_LOOP),
    }


def lab_runner(lab: LabSystemd) -> Runner:
    """The collector's runner, entering the lab (the bus address means nothing inside)."""

    def run(
        argv: Sequence[str], env: Mapping[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        inner = {k: v for k, v in env.items() if k != "DBUS_SYSTEM_BUS_ADDRESS"}
        enter = ["nsenter", "-t", str(lab.pid), "-m", "-u", "-i", "-n", "-p", "--"]
        return subprocess.run(
            [*enter, *argv],
            env=inner,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    return run


def analyze_overall(lab: LabSystemd, unit: str) -> float:
    """systemd-analyze's own overall score for `unit`, read off its last line here."""
    out = lab.run("systemd-analyze", "security", "--no-pager", unit).stdout
    found = _OVERALL.search(out)
    assert found is not None, out[-300:]
    assert found[1] == unit, out[-300:]
    return float(found[2])


def start_services(lab: LabSystemd, unit_factory: UnitFactory) -> None:
    for name, text in unit_texts().items():
        unit_factory(name, text)
    lab.run("systemctl", "start", *unit_texts())
    every = set(unit_texts())
    for name in every:
        lab.wait_for_state(name, "active")
    # listening is an event: wait for each socket, not for time
    assert wait_until(lambda: listening_units(every) == {OPEN, HARDENED}, timeout=20)
