"""The collection cycle, snapshot files and the collection thread."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from macha_obs.collect import CollectionLoop, collect_all, latest_snapshot, write_snapshot
from macha_obs.collect.snapshots import snapshot_files, snapshot_name
from macha_obs.models import BootReading, Finding, FindingKind, Snapshot


class Fixed:
    """A collector with a canned outcome."""

    def __init__(
        self, name: str, *, error: Exception | None = None, block: threading.Event | None = None
    ) -> None:
        self.name = name
        self.error = error
        self.block = block
        self.calls = 0

    def collect(self) -> tuple[BootReading, list[Finding]]:
        self.calls += 1
        if self.block is not None:
            self.block.wait(30)
        if self.error is not None:
            raise self.error
        finding = Finding(kind=FindingKind.UNEXPECTED_REBOOT, subject="host", summary="x")
        return BootReading(boot_id="b", boot_time=1.0, uptime_seconds=2.0), [finding]


def test_one_failing_collector_never_fails_the_rest() -> None:
    ticks = iter([10.0, 10.5, 20.0, 20.25])
    snapshot = collect_all(
        [Fixed("systemd", error=RuntimeError("bus gone")), Fixed("boot")],
        hostname="h",
        clock=lambda: 1234.0,
        monotonic=lambda: next(ticks),
    )
    assert snapshot.taken_at == 1234.0
    systemd, boot = snapshot.collectors["systemd"], snapshot.collectors["boot"]
    assert (systemd.success, systemd.duration_seconds) == (False, 0.5)
    assert systemd.error == "RuntimeError: bus gone"
    assert (boot.success, boot.duration_seconds) == (True, 0.25)
    assert snapshot.systemd is None
    assert snapshot.boot is not None
    assert [f.kind for f in snapshot.findings] == [FindingKind.UNEXPECTED_REBOOT]


def test_a_hanging_collector_is_abandoned() -> None:
    release = threading.Event()
    try:
        snapshot = collect_all(
            [Fixed("disks", block=release), Fixed("boot")], hostname="h", timeout=0.2
        )
    finally:
        release.set()
    assert not snapshot.collectors["disks"].success
    assert "did not finish within 0.2s" in snapshot.collectors["disks"].error
    assert snapshot.collectors["boot"].success


def test_unknown_collector_name_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="no Snapshot field"):
        collect_all([Fixed("gpu")], hostname="h")


def _snap(t: float) -> Snapshot:
    return Snapshot(taken_at=t, hostname="h")


def test_snapshot_names_sort_in_time_order() -> None:
    names = [snapshot_name(t) for t in (9.5, 10.0, 1_700_000_000.123456, 1e10)]
    assert names == sorted(names)
    assert names[2] == "snapshot_20231114T221320123456Z.json"


def test_write_snapshot_keeps_the_newest_and_no_temp_files(tmp_path: Path) -> None:
    for t in range(1, 8):
        write_snapshot(tmp_path, _snap(1_700_000_000 + t), retention=3)
    files = snapshot_files(tmp_path)
    assert len(files) == 3
    assert list(tmp_path.glob(".snapshot-*")) == []
    latest = latest_snapshot(tmp_path)
    assert latest is not None
    assert latest.taken_at == 1_700_000_007


def test_latest_snapshot_skips_a_corrupt_file(tmp_path: Path) -> None:
    assert latest_snapshot(tmp_path) is None
    write_snapshot(tmp_path, _snap(1_700_000_001), retention=5)
    (tmp_path / snapshot_name(1_700_000_002)).write_text("{not json")
    latest = latest_snapshot(tmp_path)
    assert latest is not None
    assert latest.taken_at == 1_700_000_001


def test_retention_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="retention"):
        write_snapshot(tmp_path, _snap(1.0), retention=0)


def test_loop_publishes_writes_and_notifies(tmp_path: Path) -> None:
    seen: list[Snapshot] = []
    loop = CollectionLoop(
        [Fixed("boot")],
        hostname="h",
        interval=3600,
        state_dir=tmp_path,
        retention=2,
        listeners=[seen.append, _broken_listener],
    )
    assert (loop.latest(), loop.ready()) == (None, False)
    snapshot = loop.run_once()
    assert loop.latest() is snapshot
    assert loop.ready()
    assert seen == [snapshot]  # a broken listener does not stop the others
    assert len(snapshot_files(tmp_path)) == 1


def _broken_listener(snapshot: Snapshot) -> None:
    raise RuntimeError("listener bug")


def test_loop_thread_runs_until_stopped(tmp_path: Path) -> None:
    collector = Fixed("boot")
    got = threading.Event()

    def enough(snapshot: Snapshot) -> None:
        if collector.calls >= 3:
            got.set()

    loop = CollectionLoop([collector], hostname="h", interval=0.05, listeners=[enough])
    loop.start()
    try:
        assert got.wait(30)
    finally:
        loop.stop(timeout=30)
    calls = collector.calls
    assert calls >= 3
    assert collector.calls == calls  # nothing runs after stop()
    with pytest.raises(ValueError, match="interval"):
        CollectionLoop([], hostname="h", interval=0)
