"""Intrusion signs against the lab's real systemd: SSH/sudo/su failure lines planted in its
real journal move the counters (no username or address in any label), and a unit enabled
after the baseline a person accepted (the real CLI process) becomes a finding."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from macha_obs.collect.base import collect_all
from macha_obs.collect.intrusion import AuthFailureTap, IntrusionCollector
from macha_obs.collect.journal import CURSOR_KEY, JournalCollector
from macha_obs.collect.meta import MemoryMeta
from macha_obs.collect.posture import fetch_listeners, socket_owners
from macha_obs.collect.setup import build_collectors
from macha_obs.config import Config
from macha_obs.metrics import build_registry, scrape_text
from macha_obs.models import FindingKind
from macha_obs.systemd.bus import IsolatedBus
from tests.harness.labsd import LabSystemd, wait_until
from tests.harness.systemd_fixtures import UnitFactory

pytestmark = pytest.mark.systemd

MACHA_OBS = str(Path(sys.executable).parent / "macha-obs")


@pytest.fixture
def lab_bus(systemd_container: LabSystemd) -> Iterator[IsolatedBus]:
    bus = IsolatedBus(systemd_container.bus_address, timeout=10.0)
    yield bus
    bus.close()


def cli_env(lab: LabSystemd, state: Path, setid: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MACHA_")}
    return base | {
        "MACHA_STATE_DIR": str(state),
        "MACHA_SYSTEMD_BUS_ADDRESS": lab.bus_address,
        "MACHA_POSTURE_SETID_DIRS": str(setid),
    }


PLANTED = [
    ("sshd", "Failed password for root from 198.51.100.7 port 4242 ssh2"),
    ("sshd", "Invalid user eve from 198.51.100.7 port 4243"),
    ("sshd", "Connection closed by authenticating user mallory 198.51.100.8 port 1 [preauth]"),
    ("sudo", "alice : 3 incorrect password attempts ; TTY=pts/0 ; PWD=/ ; COMMAND=/bin/sh"),
    ("su", "FAILED SU (to root) alice on pts/0"),
    ("sshd", "Accepted publickey for alice from 198.51.100.9 port 5 ssh2"),  # no failure
]


def test_planted_auth_failures_in_the_lab_journal_move_the_counters(
    systemd_container: LabSystemd, lab_bus: IsolatedBus, tmp_path: Path
) -> None:
    lab = systemd_container
    tap = AuthFailureTap()
    reader = JournalCollector(MemoryMeta(), journal_dir=lab.journal_dir, sinks=(tap,), timeout=20)
    intrusion = IntrusionCollector(
        tap, state_dir=tmp_path, unit_files=lab_bus, setid_dirs=(), auth_burst=3
    )
    reader.collect()  # the cursor now sits at the tail: older lines are not this test's
    marker = f"intr-{os.getpid()}-{id(tap)}"
    for identifier, message in PLANTED:
        # logger sends to the lab's /dev/log with the identifier sshd/sudo/su would use
        lab.run("logger", "-t", identifier, f"{message} {marker}")
    assert wait_until(lambda: lab.journal(None, "-g", marker).count(marker) == 6, timeout=15)
    snapshot = collect_all([reader, intrusion], hostname="lab")
    assert snapshot.intrusion is not None
    assert snapshot.intrusion.auth_failures_total == {"sshd": 3, "sudo": 1, "su": 1}
    burst = [f for f in snapshot.findings if f.kind is FindingKind.AUTH_FAILURES]
    assert [f.subject for f in burst] == ["sshd"]
    registry = build_registry(lambda: snapshot, process=False)
    assert registry.get_sample_value("macha_auth_failures_total", {"service": "sshd"}) == 3
    text = scrape_text(registry).decode()
    for secret in ("root", "alice", "eve", "mallory", "198.51.100", "pts/0", marker):
        assert secret not in text, secret
    # read again: nothing new, nothing counted twice
    again = collect_all([reader, intrusion], hostname="lab")
    assert again.intrusion is not None
    assert again.intrusion.auth_failures_total == {"sshd": 3, "sudo": 1, "su": 1}


def test_a_unit_enabled_after_accept_becomes_new_enabled_unit(
    systemd_container: LabSystemd,
    unit_factory: UnitFactory,
    lab_bus: IsolatedBus,
    tmp_path: Path,
) -> None:
    lab = systemd_container
    unit = unit_factory(
        "labsd-intr-enabled.service",
        "[Service]\nType=oneshot\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
    )
    state, setid = tmp_path / "state", tmp_path / "bin"
    state.mkdir(mode=0o700)
    setid.mkdir()
    env = cli_env(lab, state, setid)
    done = subprocess.run(
        [MACHA_OBS, "posture", "accept", "--yes"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "enabled units: " in done.stdout
    collector = IntrusionCollector(
        AuthFailureTap(), state_dir=state, unit_files=lab_bus, setid_dirs=[setid]
    )
    # just accepted: nothing enabled is new (listeners other processes open meanwhile may be)
    kinds = {f.kind for f in collector.collect()[1]}
    assert FindingKind.NEW_ENABLED_UNIT not in kinds
    lab.run("systemctl", "enable", unit)
    try:
        fresh = IntrusionCollector(
            AuthFailureTap(), state_dir=state, unit_files=lab_bus, setid_dirs=[setid]
        )
        snapshot = collect_all([fresh], hostname="lab")
        found = [f for f in snapshot.findings if f.kind is FindingKind.NEW_ENABLED_UNIT]
        assert [f.subject for f in found] == [unit]
        registry = build_registry(lambda: snapshot, process=False)
        assert registry.get_sample_value("macha_posture_new_enabled_units") == 1
        live = subprocess.run(
            [MACHA_OBS, "posture", "--live"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert live.returncode == 0, live.stderr
        assert f"newly enabled units: 1\n    {unit}" in live.stdout
    finally:
        lab.run("systemctl", "disable", unit, check=False)


def test_the_daemons_collectors_share_one_journal_read(
    systemd_container: LabSystemd, lab_bus: IsolatedBus, tmp_path: Path
) -> None:
    """build_collectors wires the intrusion collector to the journal collector's read:
    the daemon opens no second cursor, and the counters move all the same."""
    lab = systemd_container
    cfg = Config(
        journal_dir=lab.journal_dir,
        systemd_bus_address=lab.bus_address,
        state_dir=tmp_path,
        posture_setid_dirs=(),
    )
    meta = MemoryMeta()
    wanted = ("journal", "intrusion")
    collectors = [c for c in build_collectors(cfg, meta, lab_bus) if c.name in wanted]
    assert [c.name for c in collectors] == list(wanted)  # the journal is read first
    collect_all(collectors, hostname="lab")
    cursor = meta.get_meta(CURSOR_KEY)
    marker = f"wired-{os.getpid()}-{id(meta)}"
    lab.run("logger", "-t", "sshd", f"Invalid user nobody2 from 192.0.2.1 port 9 {marker}")
    assert wait_until(lambda: marker in lab.journal(None, "-g", marker), timeout=15)
    snapshot = collect_all(collectors, hostname="lab")
    assert snapshot.intrusion is not None
    assert snapshot.intrusion.auth_failures_total["sshd"] == 1
    assert meta.get_meta(CURSOR_KEY) != cursor  # one cursor, moved by the one read


def test_a_new_listeners_owner_is_the_unit_that_holds_it(
    systemd_container: LabSystemd, unit_factory: UnitFactory
) -> None:
    """The lab's own network namespace (/proc/PID/net of its PID 1), and its unit's cgroup
    as this host sees it: the socket is attributed to the service that listens."""
    lab = systemd_container
    code = (
        "import signal, socket; s = socket.socket(); s.bind(('127.0.0.1', 4455)); s.listen(); "
        "signal.pause()"
    )
    unit = unit_factory(
        "labsd-intr-listen.service", f'[Service]\nExecStart={sys.executable} -c "{code}"\n'
    )
    lab_proc = Path(f"/proc/{lab.pid}")
    assert not any(x.key == "tcp 127.0.0.1:4455" for x, _ in fetch_listeners(lab_proc))
    lab.run("systemctl", "start", unit)

    def listening() -> dict[str, int]:
        return {x.key: inode for x, inode in fetch_listeners(lab_proc)}

    assert wait_until(lambda: "tcp 127.0.0.1:4455" in listening(), timeout=15)
    inode = listening()["tcp 127.0.0.1:4455"]
    assert socket_owners([inode]) == {inode: unit}
