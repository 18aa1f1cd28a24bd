"""`macha-obs posture` and `posture accept`, run as the real CLI process against the lab's
systemd: a listener or a setuid file that appears after `accept` is a finding, the gauge
and a line of the view; a bad baseline is a clear error and nothing is lost; the view
reads the daemon's snapshot and never creates the state dir."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from macha_obs.cli.posture import backups_lines, render_text
from macha_obs.collect.base import collect_all
from macha_obs.collect.intrusion import AuthFailureTap, IntrusionCollector
from macha_obs.collect.snapshots import write_snapshot
from macha_obs.metrics import build_registry
from macha_obs.models import FindingKind
from macha_obs.statedir import StateDir
from macha_obs.systemd.bus import IsolatedBus
from tests.harness.eyes_support import fixture_snapshot
from tests.harness.labsd import LabSystemd

MACHA_OBS = str(Path(sys.executable).parent / "macha-obs")


class Host:
    """A state dir, a setid dir the config scans, and the CLI pointed at the lab's bus."""

    def __init__(self, lab: LabSystemd, tmp: Path) -> None:
        self.lab = lab
        self.state = tmp / "state"
        self.setid = tmp / "bin"
        self.setid.mkdir()
        base = {k: v for k, v in os.environ.items() if not k.startswith("MACHA_")}
        self.env = base | {
            "MACHA_STATE_DIR": str(self.state),
            "MACHA_SYSTEMD_BUS_ADDRESS": lab.bus_address,
            "MACHA_POSTURE_SETID_DIRS": str(self.setid),
        }

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [MACHA_OBS, "posture", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def collector(self, bus: IsolatedBus) -> IntrusionCollector:
        return IntrusionCollector(
            AuthFailureTap(), state_dir=self.state, unit_files=bus, setid_dirs=[self.setid]
        )


@pytest.fixture
def host(systemd_container: LabSystemd, tmp_path: Path) -> Host:
    return Host(systemd_container, tmp_path)


@pytest.fixture
def bus(systemd_container: LabSystemd) -> IsolatedBus:
    return IsolatedBus(systemd_container.bus_address, timeout=10.0)


@pytest.mark.systemd
def test_a_listener_after_accept_is_new_listener_and_the_gauge(
    host: Host, bus: IsolatedBus
) -> None:
    host.state.mkdir(mode=0o700)
    accepted = host.cli("accept", "--yes")
    assert accepted.returncode == 0, accepted.stderr
    assert "accepted by" in accepted.stdout
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        key = f"tcp 127.0.0.1:{server.getsockname()[1]}"
        snapshot = collect_all([host.collector(bus)], hostname="lab")
        new = {f.subject: f for f in snapshot.findings if f.kind is FindingKind.NEW_LISTENER}
        assert key in new
        registry = build_registry(lambda: snapshot, process=False)
        assert (registry.get_sample_value("macha_posture_unaccepted_listeners") or 0) >= 1
        assert registry.get_sample_value("macha_posture_baseline_timestamp_seconds")
        view = host.cli("--live", "--json")
        assert view.returncode == 0, view.stderr
        shown = json.loads(view.stdout)["intrusion"]
        assert key in {
            f"{x['proto']} {x['address']}:{x['port']}" for x in shown["unaccepted_listeners"]
        }
        assert shown["auth_failures_total"] is None  # unknown live, not zero
    after = collect_all([host.collector(bus)], hostname="lab")
    assert key not in {f.subject for f in after.findings}


@pytest.mark.systemd
def test_a_setuid_file_planted_after_accept_is_new_setid_file(host: Host, bus: IsolatedBus) -> None:
    host.state.mkdir(mode=0o700)
    (host.setid / "ok").write_text("#!/bin/sh\n")
    (host.setid / "ok").chmod(0o4755)
    assert host.cli("accept", "--yes").returncode == 0
    planted = host.setid / "planted"
    planted.write_text("#!/bin/sh\n")
    planted.chmod(0o6755)
    snapshot = collect_all([host.collector(bus)], hostname="lab")
    found = [f.subject for f in snapshot.findings if f.kind is FindingKind.NEW_SETID_FILE]
    assert found == [str(planted)]
    registry = build_registry(lambda: snapshot, process=False)
    assert registry.get_sample_value("macha_posture_new_setid_files") == 1
    # the view reads the daemon's newest snapshot (read-only), and says so
    write_snapshot(host.state, snapshot, retention=3)
    view = host.cli()
    assert view.returncode == 0, view.stderr
    assert "posture (from the snapshot of " in view.stdout
    assert (
        "auth failures since the sidecar started: sshd 0 (0 in 10m), sudo 0 (0 in 10m), su 0"
        in view.stdout
    )
    assert f"new setuid/setgid files: 1\n    {planted}" in view.stdout
    # accepting again takes it in, and says what is new since the last baseline
    again = host.cli("accept", "--yes")
    assert f"setuid/setgid files: 1\n    {planted}" in again.stdout.split("new since")[1]
    kinds = {f.kind for f in collect_all([host.collector(bus)], hostname="lab").findings}
    assert FindingKind.NEW_SETID_FILE not in kinds


@pytest.mark.systemd
def test_no_baseline_says_so_and_the_view_never_creates_the_state_dir(host: Host) -> None:
    view = host.cli("--live")
    assert view.returncode == 0, view.stderr
    assert "baseline: no baseline (`macha-obs posture accept` makes one)" in view.stdout
    assert not host.state.exists()
    # accept needs the state dir the daemon makes: a clear error, nothing made
    accept = host.cli("accept", "--yes")
    assert accept.returncode == 2
    assert accept.stderr.startswith("error: no state dir at ")
    assert not host.state.exists()


@pytest.mark.systemd
def test_a_corrupt_baseline_is_a_clear_error_and_is_only_replaced_by_accept(
    host: Host,
) -> None:
    host.state.mkdir(mode=0o700)
    path = StateDir(host.state).posture_baseline
    path.write_text("{not json")
    path.chmod(0o600)
    view = host.cli("--live")
    assert view.returncode == 0, view.stderr
    assert "baseline: UNREADABLE: " in view.stdout
    assert "is not a posture baseline" in view.stdout
    assert path.read_text() == "{not json"  # the view touched nothing
    # without --yes and no one to say yes: nothing is written
    declined = host.cli("accept")
    assert "nothing accepted" in declined.stdout
    assert path.read_text() == "{not json"
    accepted = host.cli("accept", "--yes")
    assert accepted.returncode == 0, accepted.stderr
    assert "the current baseline is unreadable" in accepted.stderr
    assert json.loads(path.read_text())["version"] == 1


@pytest.mark.systemd
def test_a_symlinked_baseline_is_refused_and_its_target_kept(host: Host, tmp_path: Path) -> None:
    host.state.mkdir(mode=0o700)
    target = tmp_path / "precious"
    target.write_text("do not overwrite")
    StateDir(host.state).posture_baseline.symlink_to(target)
    accept = host.cli("accept", "--yes")
    assert accept.returncode == 1
    assert accept.stderr.splitlines()[-1].startswith("error: ")
    assert "not a regular file" in accept.stderr
    assert "Traceback" not in accept.stderr
    assert target.read_text() == "do not overwrite"
    view = host.cli("--live")
    assert "baseline: UNREADABLE: " in view.stdout
    assert "symlink" in view.stdout


def test_the_view_shows_a_section_per_posture_reading_of_the_snapshot(tmp_path: Path) -> None:
    """The daemon's snapshot (the fixture: exposure and intrusion readings), read-only."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    snapshot = fixture_snapshot()
    write_snapshot(state, snapshot, retention=3)
    before = sorted(p.name for p in state.iterdir())
    env = {k: v for k, v in os.environ.items() if not k.startswith("MACHA_")}
    done = subprocess.run(
        [MACHA_OBS, "posture"],
        env=env | {"MACHA_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.index("\nexposure (systemd-analyze security, run ") < out.index("\nintrusion signs")
    assert "  app.service" in out
    assert "9.6 UNSAFE   75 unsafe  listens beyond loopback" in out
    assert "sshd 42 (12 in 10m), sudo 3 (0 in 10m), su 0 (0 in 10m)" in out
    assert "  unaccepted listeners: 1\n    tcp 0.0.0.0:8080 (app.service)" in out
    assert out.index("\nintrusion signs") < out.index("\nbackups (late after their interval")
    failed = next(line for line in out.splitlines() if "restic-backups-offsite" in line)
    assert "every 1d (timer)" in failed
    assert "last run FAILED (exit-code)" in failed
    assert sorted(p.name for p in state.iterdir()) == before  # nothing written
    as_json = subprocess.run(
        [MACHA_OBS, "posture", "--json"],
        env=env | {"MACHA_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = json.loads(as_json.stdout)
    assert found["source"] == "snapshot"
    assert set(found) == {"source", "taken_at", "exposure", "intrusion", "backups"}
    assert found["intrusion"]["auth_failures_total"] == {"sshd": 42, "sudo": 3, "su": 0}


class Backups(BaseModel):
    """A posture reading this view has no layout for (a build's newer field, say)."""

    last_success: dict[str, float]
    note: str


def test_a_reading_without_a_layout_is_shown_field_by_field() -> None:
    reading = Backups(last_success={"restic-backups-home.service": 1.0}, note="\x1b[31mred")
    text = render_text({"source": "snapshot", "taken_at": 0.0, "backups": reading}, now=0.0)
    assert text.splitlines()[1:] == [
        "backups",
        '  last_success: {"restic-backups-home.service": 1.0}',
        '  note: "\\u001b[31mred"',
    ]


def test_the_backups_section_puts_the_late_first_and_says_why() -> None:
    snapshot = fixture_snapshot()
    assert snapshot.backups is not None
    now = 1764000200.0  # the fixture's time: borgmatic succeeded 2 h ago, restic failed
    lines = backups_lines(snapshot.backups, now)
    assert lines[0] == "backups (late after their interval plus 6h)"
    # restic last succeeded 2d ago on a daily timer, 6 h grace: late, and its last run failed
    assert lines[1].split()[:2] == ["restic-backups-offsite.service", "LATE"]
    assert "last success 2d ago, every 1d (timer)  last run FAILED (exit-code)" in lines[1]
    assert lines[2].split()[:2] == ["borgmatic.service", "ok"]
    assert "last success 2h ago" in lines[2]
    never = snapshot.backups.units[0].model_copy(update={"last_success": None})
    reading = snapshot.backups.model_copy(update={"units": [never]})
    assert "never seen succeed (watched 11d)" in backups_lines(reading, now)[1]
