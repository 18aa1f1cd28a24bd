"""What issue 23's suite found, fixed where it belongs: CPU, load and swap findings
(collect/resources.py); what a filling filesystem holds (collect/disks.py), so a clean-up
runs only where it frees space on this host; and a protected unit's read-only look queued
for a person (policy), not run unseen."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from macha_obs.collect.disks import (
    HOLDS_JOURNAL,
    HOLDS_NIX_STORE,
    DisksCollector,
    holders,
    summarize_disks,
)
from macha_obs.collect.resources import (
    RawResources,
    ResourcesCollector,
    Thresholds,
    cpu_busy_ratio,
    summarize_resources,
)
from macha_obs.config import Config
from macha_obs.models import (
    DiskUsage,
    FilesystemReading,
    Finding,
    FindingKind,
    Investigate,
    JournalTail,
    Outcome,
    UnitStatus,
)
from macha_obs.policy.judge import BreakerState, PolicyContext, judge

# ------------------------------------------------------------------ CPU, load, swap


def raw(
    cpu: dict[str, float] | None = None,
    *,
    cpus: int = 2,
    load15: float = 0.5,
    swap: tuple[int, int] = (100, 10),
) -> RawResources:
    return RawResources(
        cpu_seconds=cpu or {"user": 10.0, "system": 5.0, "idle": 85.0},
        cpu_count=cpus,
        memory_total=1000,
        memory_available=900,
        swap_total=swap[0],
        swap_used=swap[1],
        load=(load15, load15, load15),
    )


def test_cpu_busy_is_the_share_of_time_not_idle_between_two_readings() -> None:
    before = {"user": 10.0, "system": 5.0, "idle": 85.0, "iowait": 0.0}
    after = {"user": 100.0, "system": 5.0, "idle": 90.0, "iowait": 5.0}
    assert cpu_busy_ratio(before, after) == pytest.approx(0.9)  # 90 of 100 s worked
    assert cpu_busy_ratio(before, before) is None  # no time passed
    assert cpu_busy_ratio(after, before) is None  # a counter went back: a new boot


def kinds(found: Sequence[Finding]) -> set[FindingKind]:
    return {f.kind for f in found}


def test_busy_cpu_high_load_and_swap_are_findings_at_the_configured_thresholds() -> None:
    limits = Thresholds(cpu_busy=0.9, load_per_cpu=2.0, swap=0.8)
    idle = {"user": 0.0, "idle": 0.0}
    busy = {"user": 95.0, "idle": 5.0}
    _, quiet = summarize_resources(raw(busy), 0.9, limits=limits)  # one reading: no rate yet
    assert quiet == []
    _, found = summarize_resources(
        raw(busy, load15=4.0, swap=(100, 90)), 0.9, limits=limits, previous_cpu=idle
    )
    assert kinds(found) == {FindingKind.CPU_HIGH, FindingKind.LOAD_HIGH, FindingKind.SWAP_HIGH}
    load = next(f for f in found if f.kind is FindingKind.LOAD_HIGH)
    assert load.details["load15_per_cpu"] == 2.0  # 4.0 over 2 CPUs
    # just under every threshold, and a host without swap: nothing
    _, under = summarize_resources(
        raw({"user": 89.0, "idle": 11.0}, load15=3.9, swap=(0, 0)),
        0.9,
        limits=limits,
        previous_cpu=idle,
    )
    assert under == []


def test_the_collector_judges_cpu_over_its_own_interval_once_it_lasted() -> None:
    """As the rules' `for: 15m`: a busy spell is a finding once it has lasted."""
    busy = [{"user": 0.0, "idle": 0.0}] + [{"user": 99.0 * n, "idle": 1.0 * n} for n in range(1, 5)]
    readings, now = iter(busy), [0.0]
    collector = ResourcesCollector(
        limits=Thresholds(cpu_busy=0.95),
        fetch=lambda: raw(next(readings), load15=5.0),
        sustained=900.0,
        clock=lambda: now[0],
    )
    assert collector.collect()[1] == []  # one reading: no rate yet, the load just began
    now[0] = 60.0
    assert collector.collect()[1] == []  # busy and loaded, not for long enough
    now[0] = 940.0
    assert kinds(collector.collect()[1]) == {FindingKind.LOAD_HIGH}  # loaded since 0
    now[0] = 1000.0
    assert kinds(collector.collect()[1]) == {FindingKind.CPU_HIGH, FindingKind.LOAD_HIGH}


# ------------------------------------------------------------------ what a disk holds


def fs(mountpoint: str, avail: int = 4) -> FilesystemReading:
    return FilesystemReading(
        mountpoint=mountpoint, device=mountpoint, fstype="ext4", size_bytes=100,
        avail_bytes=avail, free_bytes=avail, files=100, files_free=50, readonly=False,
    )  # fmt: skip


def test_holders_match_by_device_and_a_missing_path_is_held_by_none() -> None:
    devices = {"/": 1, "/var/log": 2, "/var/log/journal": 2, "/nix/store": 1}

    def device(path: str) -> int:
        if path not in devices:
            raise FileNotFoundError(path)
        return devices[path]

    paths = {HOLDS_JOURNAL: [Path("/var/log/journal")], HOLDS_NIX_STORE: [Path("/nix/store")]}
    assert holders(["/", "/var/log"], paths, device) == {
        HOLDS_JOURNAL: "/var/log",
        HOLDS_NIX_STORE: "/",
    }
    del devices["/nix/store"]  # Debian: no Nix store at all
    assert holders(["/", "/var/log"], paths, device) == {HOLDS_JOURNAL: "/var/log"}


def test_a_filling_disk_says_what_it_holds() -> None:
    held = {HOLDS_JOURNAL: "/var/log", HOLDS_NIX_STORE: "/"}
    found = {
        f.subject: f.details for f in summarize_disks([fs("/var/log"), fs("/srv")], 0.9, 0.9, held)
    }
    assert found["/var/log"].get(HOLDS_JOURNAL) is True
    assert HOLDS_NIX_STORE not in found["/var/log"]
    assert HOLDS_JOURNAL not in found["/srv"]
    assert HOLDS_NIX_STORE not in found["/srv"]


def test_the_disks_collector_finds_the_store_and_journal_by_device(tmp_path: Path) -> None:
    """Real paths on this host: the store and the journal are directories on tmp_path's
    filesystem, which the fixture mounts file names as "/"."""
    store, journal = tmp_path / "nix/store", tmp_path / "journal"
    store.mkdir(parents=True)
    journal.mkdir()
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/vda1 {tmp_path} ext4 rw 0 0\n")

    def statvfs(path: str) -> os.statvfs_result:
        return os.statvfs_result((4096, 4096, 1000, 40, 40, 100, 50, 50, 0, 255))

    collector = DisksCollector(
        mounts_file=mounts, statvfs=statvfs, nix_store=store, journal_dirs=[journal]
    )
    _, findings = collector.collect()
    [full] = [f for f in findings if f.kind is FindingKind.DISK_FILLING]
    assert full.details[HOLDS_NIX_STORE] is True
    assert full.details[HOLDS_JOURNAL] is True
    elsewhere = DisksCollector(
        mounts_file=mounts, statvfs=statvfs, nix_store=Path("/no/nix/store"), journal_dirs=[]
    )
    [bare] = [f for f in elsewhere.collect()[1] if f.kind is FindingKind.DISK_FILLING]
    assert HOLDS_NIX_STORE not in bare.details
    assert HOLDS_JOURNAL not in bare.details


# ------------------------------------------------------------------ a protected unit's look


def context(make_config: Callable[..., Config], level: str) -> PolicyContext:
    cfg = make_config(autonomy_level=level)
    return PolicyContext(
        config=cfg, now=datetime(2026, 1, 1, tzinfo=UTC), recent=(), breaker=BreakerState()
    )


@pytest.mark.parametrize("level", ["suggest", "auto-safe", "auto-full"])
def test_invariant_3_a_protected_units_look_is_queued_for_a_person(
    make_config: Callable[..., Config], level: str
) -> None:
    ctx = context(make_config, level)
    for unit in ("sshd.service", "nftables.service", "wg-quick@wg0.service"):
        for diagnostic in (JournalTail(unit=unit), UnitStatus(unit=unit)):
            verdict = judge(Investigate(diagnostic=diagnostic), ctx)
            assert verdict.outcome is Outcome.QUEUE, verdict.reason
            assert "protected" in verdict.reason
    # an approval carries it out (read-only), and an unprotected unit's look just runs
    approved = judge(Investigate(diagnostic=JournalTail(unit="sshd.service")), ctx, approved=True)
    assert approved.outcome is Outcome.EXECUTE
    if level != "suggest":
        plain = judge(Investigate(diagnostic=JournalTail(unit="web.service")), ctx)
        assert plain.outcome is Outcome.EXECUTE
        assert judge(Investigate(diagnostic=DiskUsage()), ctx).outcome is Outcome.EXECUTE
