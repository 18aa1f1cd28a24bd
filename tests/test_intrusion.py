"""Intrusion signs on literals and fixture data: which journal line is an auth failure,
/proc/net parsing, the baseline diff, the burst window, the setid scan, the bad baseline,
the metrics' labels, and the runbooks' answer (a look, never an action)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from macha_obs.agent.runbooks import runbook_proposals
from macha_obs.collect.intrusion import AuthFailureTap, IntrusionCollector
from macha_obs.collect.journal import JournalCollector, parse_entries
from macha_obs.collect.meta import MemoryMeta
from macha_obs.collect.posture import (
    BaselineError,
    SetidScanner,
    enabled_units,
    load_baseline,
    parse_proc_net,
    save_baseline,
)
from macha_obs.metrics import build_registry, scrape_text
from macha_obs.models import (
    AUTH_SERVICES,
    FindingKind,
    Incident,
    Investigate,
    Listener,
    PostureBaseline,
    PostureNow,
    Snapshot,
    auth_failure_service,
    posture_diff,
)
from macha_obs.statedir import StateDir
from tests.harness.eyes_support import fixture_text
from tests.harness.real import unavailable

# ------------------------------------------------------------------ auth failure lines

FAILURES = [
    ("sshd", "", "Failed password for root from 203.0.113.9 port 50022 ssh2", "sshd"),
    ("sshd", "", "Failed password for invalid user admin from 203.0.113.9 port 1 ssh2", "sshd"),
    ("sshd-session", "", "Invalid user oracle from 203.0.113.9 port 40110", "sshd"),
    ("sshd", "", "pam_unix(sshd:auth): authentication failure; logname= uid=0 rhost=x", "sshd"),
    (
        "sshd",
        "",
        "Connection closed by authenticating user root 203.0.113.9 port 2 [preauth]",
        "sshd",
    ),
    ("", "sshd", "error: PAM: Authentication failure for alice from 203.0.113.9", "sshd"),
    ("sudo", "", "alice : 3 incorrect password attempts ; TTY=pts/0 ; COMMAND=/bin/sh", "sudo"),
    ("sudo", "", "pam_unix(sudo:auth): authentication failure; logname=alice uid=1000", "sudo"),
    ("sudo", "", "mallory : user NOT in sudoers ; TTY=pts/1 ; COMMAND=/bin/id", "sudo"),
    ("su", "", "FAILED SU (to root) alice on pts/0", "su"),
    ("su", "", "pam_unix(su:auth): authentication failure; logname=alice uid=1000", "su"),
    ("su", "", "pam_unix(su-l:auth): authentication failure; logname=bob uid=1001", "su"),
]
NOT_FAILURES = [
    ("sshd", "", "Accepted publickey for alice from 203.0.113.9 port 2 ssh2"),
    ("sshd", "", "Server listening on 0.0.0.0 port 22."),
    ("sudo", "", "alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/bin/ls"),
    ("su", "", "(to root) alice on pts/0"),
    ("nginx", "nginx", "Failed password for root from 203.0.113.9"),  # not an auth service
    ("", "", "authentication failure"),
]


@pytest.mark.parametrize(("identifier", "comm", "message", "service"), FAILURES)
def test_auth_failure_lines_are_counted_for_their_service(
    identifier: str, comm: str, message: str, service: str
) -> None:
    assert auth_failure_service(identifier, comm, message) == service


@pytest.mark.parametrize(("identifier", "comm", "message"), NOT_FAILURES)
def test_other_lines_are_not_auth_failures(identifier: str, comm: str, message: str) -> None:
    assert auth_failure_service(identifier, comm, message) is None


def _jline(i: int, identifier: str, message: str) -> str:
    return json.dumps(
        {
            "__CURSOR": f"c{i}",
            "PRIORITY": "5",
            "SYSLOG_IDENTIFIER": identifier,
            "_COMM": identifier,
            "MESSAGE": message,
        }
    )


class Journal:
    """Plays journalctl after a cursor (the journal collector's seam)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, argv: Sequence[str], timeout: float) -> str:
        cursor = next((a.split("=", 1)[1] for a in argv if a.startswith("--after-cursor=")), None)
        cursors = [json.loads(line)["__CURSOR"] for line in self.lines]
        start = cursors.index(cursor) + 1 if cursor in cursors else 0
        return "\n".join(self.lines[start:])


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_parse_entries_keeps_identifier_and_comm() -> None:
    (entry,) = parse_entries(_jline(1, "sshd", "Invalid user x from 1.2.3.4"))
    assert (entry.identifier, entry.comm) == ("sshd", "sshd")


def _collector(tap: AuthFailureTap, tmp_path: Path, **kw: object) -> IntrusionCollector:
    state = tmp_path / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    return IntrusionCollector(
        tap,
        state_dir=state,
        unit_files=UnitFiles([]),
        setid_dirs=(),
        **kw,  # type: ignore[arg-type]
    )


class UnitFiles:
    def __init__(self, rows: list[tuple[str, str]]) -> None:
        self.rows = rows

    def list_unit_files(self) -> list[tuple[str, str]]:
        return list(self.rows)


def test_failures_counted_once_from_the_journal_read_and_a_burst_is_a_finding(
    tmp_path: Path,
) -> None:
    clock, journal = Clock(), Journal()
    tap = AuthFailureTap(clock=clock)
    reader = JournalCollector(MemoryMeta(), fetch=journal, sinks=(tap,), initial_entries=1000)
    intrusion = _collector(tap, tmp_path, auth_burst=5, auth_window=600.0)
    # the first read (no cursor yet) is the journal's tail: history, not counted
    journal.lines = [_jline(99, "sshd", "Failed password for root from 10.9.9.9 port 22")]
    reader.collect()
    assert intrusion.collect()[0].auth_failures_total == {"sshd": 0, "sudo": 0, "su": 0}
    journal.lines += [
        _jline(i, "sshd", f"Failed password for root from 10.0.0.{i} port 22") for i in range(4)
    ]
    journal.lines.append(_jline(4, "sudo", "alice : 3 incorrect password attempts ; TTY=pts/0"))
    reader.collect()
    reading, findings = intrusion.collect()
    assert reading.auth_failures_total == {"sshd": 4, "sudo": 1, "su": 0}
    assert findings == []  # 4 < 5
    reader.collect()  # nothing new: nothing counted twice
    assert intrusion.collect()[0].auth_failures_total["sshd"] == 4
    journal.lines.append(_jline(5, "sshd", "Invalid user guest from 10.0.0.9 port 22"))
    reader.collect()
    reading, findings = intrusion.collect()
    assert [(f.kind, f.subject) for f in findings] == [(FindingKind.AUTH_FAILURES, "sshd")]
    assert reading.auth_failures_window["sshd"] == 5
    clock.now += 601  # the burst left the window; the counter stays
    reading, findings = intrusion.collect()
    assert (reading.auth_failures_window["sshd"], reading.auth_failures_total["sshd"]) == (0, 5)
    assert findings == []


def test_no_username_or_address_in_any_label(tmp_path: Path) -> None:
    journal = Journal()
    tap = AuthFailureTap()
    reader = JournalCollector(MemoryMeta(), fetch=journal, sinks=(tap,), initial_entries=1000)
    journal.lines = [_jline(99, "sshd", "Server listening on 0.0.0.0 port 22.")]
    reader.collect()  # the cursor is set: what follows is counted
    journal.lines += [_jline(i, ident, msg) for i, (ident, _c, msg, _s) in enumerate(FAILURES)]
    reader.collect()
    reading, findings = _collector(tap, tmp_path, auth_burst=1).collect()
    snapshot = Snapshot(taken_at=1.0, hostname="h", intrusion=reading, findings=findings)
    text = scrape_text(build_registry(lambda: snapshot, process=False)).decode()
    for secret in ("root", "alice", "bob", "mallory", "oracle", "admin", "203.0.113", "pts/"):
        assert secret not in text
    labels = {
        line.split("{", 1)[1].split("}", 1)[0]
        for line in text.splitlines()
        if line.startswith("macha_auth_failures_total{")
    }
    assert labels == {f'service="{s}"' for s in AUTH_SERVICES}


# ------------------------------------------------------------------ /proc/net

PROC_TCP = fixture_text("intrusion/tcp")
PROC_TCP6 = fixture_text("intrusion/tcp6")
PROC_UDP = fixture_text("intrusion/udp")


def test_parse_proc_net_listeners_only() -> None:
    tcp = parse_proc_net(PROC_TCP, "tcp")
    assert [(x.key, inode) for x, inode in tcp] == [
        ("tcp 127.0.0.1:8080", 1111),
        ("tcp 0.0.0.0:22", 2222),
    ]
    tcp6 = parse_proc_net(PROC_TCP6, "tcp6")
    assert [x.key for x, _ in tcp6] == ["tcp6 [::1]:22", "tcp6 127.0.0.1:9000"]
    # UDP: bound and unconnected; an ephemeral port is a client's, not a service's
    udp = parse_proc_net(PROC_UDP, "udp", ephemeral=(32768, 60999))
    assert [x.key for x, _ in udp] == ["udp 0.0.0.0:53"]


def test_enabled_units_from_list_unit_files() -> None:
    rows = [
        ("/etc/systemd/system/a.service", "enabled"),
        ("/usr/lib/systemd/system/b.service", "disabled"),
        ("/run/systemd/system/c.timer", "enabled-runtime"),
        ("/usr/lib/systemd/system/d.service", "static"),
    ]
    assert enabled_units(rows) == ["a.service", "c.timer"]


def test_posture_diff_is_what_is_new() -> None:
    old = Listener(proto="tcp", address="0.0.0.0", port=22, unit="sshd.service")
    baseline = PostureBaseline(
        accepted_at=1.0, listeners=[old], enabled_units=["a.service"], setid_files=["/bin/su"]
    )
    now = PostureNow(
        # the same socket, now held by another unit: not new; a new one is
        listeners=[
            old.model_copy(update={"unit": ""}),
            Listener(proto="udp", address="::", port=53),
        ],
        enabled_units=["b.service"],
        setid_files=["/bin/su", "/usr/local/bin/x"],
    )
    diff = posture_diff(baseline, now)
    assert [x.key for x in diff.listeners] == ["udp [::]:53"]
    assert (diff.enabled_units, diff.setid_files) == (["b.service"], ["/usr/local/bin/x"])
    # the bus did not answer now (or at accept time): units are not compared
    assert (
        posture_diff(baseline, now.model_copy(update={"enabled_units": None})).enabled_units is None
    )


# ------------------------------------------------------------------ setid scan


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_setid_scan_rereads_a_dir_only_when_it_changed(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "plain").write_text("x")
    ticks = Ticks()
    scanner = SetidScanner([bin_dir, tmp_path / "missing"], monotonic=ticks)
    assert scanner.files() == []
    assert scanner.files() == []
    assert scanner.scans == 1
    planted = bin_dir / "planted"
    planted.write_text("x")
    planted.chmod(0o4755)
    (bin_dir / "link").symlink_to("/usr/bin/passwd")  # never followed
    os.utime(bin_dir, ns=(1, 1))  # a different mtime for certain, whatever the clock's grain
    assert scanner.files() == [str(planted)]
    assert scanner.scans == 2
    # `chmod g+s` on an existing file changes no directory's mtime: found at the hourly read
    (bin_dir / "plain").chmod(0o2755)
    assert scanner.files() == [str(planted)]
    ticks.now += 3601
    assert scanner.files() == [str(bin_dir / "plain"), str(planted)]


# ------------------------------------------------------------------ the baseline


def test_no_baseline_no_posture_findings_and_no_posture_series(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "s").write_text("x")
    (bin_dir / "s").chmod(0o4755)
    collector = IntrusionCollector(
        AuthFailureTap(),
        state_dir=tmp_path,
        unit_files=UnitFiles([("/etc/x.service", "enabled")]),
        setid_dirs=[bin_dir],
    )
    reading, findings = collector.collect()
    assert findings == []
    assert reading.baseline_at is None
    assert reading.new_setid_files is None
    snapshot = Snapshot(taken_at=1.0, hostname="h", intrusion=reading)
    registry = build_registry(lambda: snapshot, process=False)
    assert registry.get_sample_value("macha_posture_baseline_timestamp_seconds") is None
    assert registry.get_sample_value("macha_posture_unaccepted_listeners") is None
    assert registry.get_sample_value("macha_auth_failures_total", {"service": "su"}) == 0


def test_changes_after_the_baseline_are_findings_each_investigated_only(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    units = UnitFiles([("/etc/systemd/system/a.service", "enabled")])
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    save_baseline(
        state,
        PostureBaseline(accepted_at=1000.0, listeners=[], enabled_units=["a.service"]),
    )
    assert stat.S_IMODE(os.stat(StateDir(state).posture_baseline).st_mode) == 0o600
    units.rows.append(("/etc/systemd/system/backdoor.service", "enabled"))
    (bin_dir / "sh2").write_text("x")
    (bin_dir / "sh2").chmod(0o4755)
    collector = IntrusionCollector(
        AuthFailureTap(), state_dir=state, unit_files=units, setid_dirs=[bin_dir]
    )
    reading, findings = collector.collect()
    kinds = {f.kind: f for f in findings}
    assert kinds[FindingKind.NEW_ENABLED_UNIT].subject == "backdoor.service"
    assert kinds[FindingKind.NEW_SETID_FILE].subject == str(bin_dir / "sh2")
    # the baseline holds no listener: whatever listens here now is unaccepted
    assert len(reading.unaccepted_listeners or []) == reading.listeners
    assert reading.baseline_at == 1000.0
    incident = Incident(id="i1", source="finding", findings=findings)
    proposals, _ = runbook_proposals(incident)
    assert proposals
    assert all(isinstance(p.action, Investigate) for p in proposals)


def test_runbooks_only_look_at_intrusion_signs() -> None:
    from macha_obs.models import Finding

    findings = [
        Finding(kind=FindingKind.AUTH_FAILURES, subject="sshd", summary="s",
                details={"service": "sshd"}),
        Finding(kind=FindingKind.AUTH_FAILURES, subject="sudo", summary="s",
                details={"service": "sudo"}),
        Finding(kind=FindingKind.NEW_LISTENER, subject="tcp 0.0.0.0:4444", summary="s",
                details={"owner": "evil.service"}),
        Finding(kind=FindingKind.NEW_ENABLED_UNIT, subject="evil.service", summary="s"),
        Finding(kind=FindingKind.NEW_SETID_FILE, subject="/usr/bin/x", summary="s"),
    ]  # fmt: skip
    proposals, _ = runbook_proposals(Incident(id="i2", source="finding", findings=findings))
    assert all(isinstance(p.action, Investigate) for p in proposals)
    tools = sorted(p.action.diagnostic.tool for p in proposals if isinstance(p.action, Investigate))
    assert tools == ["journal_tail", "listening_sockets", "top_processes", "unit_status"]


def test_a_corrupt_baseline_is_reported_and_left_as_it_is(tmp_path: Path) -> None:
    path = StateDir(tmp_path).posture_baseline
    path.write_bytes(b'{"version": 1, "accepted_at": "yesterday"}')
    path.chmod(0o600)
    with pytest.raises(BaselineError, match="accepted_at"):
        load_baseline(tmp_path)
    reading, findings = IntrusionCollector(
        AuthFailureTap(), state_dir=tmp_path, unit_files=UnitFiles([]), setid_dirs=[]
    ).collect()
    assert "not a posture baseline" in reading.baseline_error
    assert reading.baseline_at is None
    assert findings == []
    assert path.read_bytes() == b'{"version": 1, "accepted_at": "yesterday"}'


def test_a_symlinked_baseline_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious")
    state = tmp_path / "state"
    state.mkdir()
    StateDir(state).posture_baseline.symlink_to(target)
    with pytest.raises(BaselineError, match="symlink"):
        load_baseline(state)
    with pytest.raises(BaselineError, match="not a regular file"):
        save_baseline(state, PostureBaseline(accepted_at=1.0))
    assert target.read_text() == "precious"


def test_a_baseline_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        unavailable("chown to another user needs root")
    path = StateDir(tmp_path).posture_baseline
    path.write_text(PostureBaseline(accepted_at=1.0).model_dump_json())
    os.chown(path, 65534, 65534)
    with pytest.raises(BaselineError, match="belongs to uid 65534"):
        load_baseline(tmp_path)
