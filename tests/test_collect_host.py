"""Resources, disks, boot and NixOS collectors: pure parts on literals, I/O on fixture trees."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from macha_obs.collect.boot import (
    BOOT_ID_KEY,
    EXPECTED_REBOOT_KEY,
    BootCollector,
    judge_reboot,
)
from macha_obs.collect.disks import (
    DisksCollector,
    Mount,
    parse_mounts,
    real_filesystems,
    summarize_disks,
)
from macha_obs.collect.meta import MemoryMeta
from macha_obs.collect.nixos import NixosCollector, count_generations, parse_generation
from macha_obs.collect.resources import (
    RawResources,
    ResourcesCollector,
    cpu_seconds_by_mode,
    summarize_resources,
)
from macha_obs.models import CPU_MODES, FilesystemReading, FindingKind, Severity
from tests.harness.eyes_support import FIXTURES, make_nixos_tree

# ------------------------------------------------------------------ resources

SECONDS = {"user": 30.0, "system": 20.0, "idle": 150.0, "iowait": 5.0}


def _raw(available: int) -> RawResources:
    return RawResources(
        cpu_seconds=SECONDS,
        cpu_count=4,
        memory_total=1000,
        memory_available=available,
        swap_total=100,
        swap_used=10,
        load=(2.0, 1.0, 0.5),
    )


class Times:
    """psutil's scputimes on Linux: every mode, and guest time already inside user."""

    user, nice, system, idle, iowait, irq, softirq, steal = 1.0, 2.0, 3.0, 4.0, 5.0, 6, 7, 8
    guest, guest_nice = 0.5, 0.25


class FewTimes:
    """A platform that counts fewer modes (macOS: user, nice, system, idle)."""

    user, nice, system, idle = 1.0, 2.0, 3.0, 4.0


def test_cpu_seconds_are_the_node_exporter_modes_and_only_those() -> None:
    seconds = cpu_seconds_by_mode(Times())
    assert tuple(seconds) == CPU_MODES
    assert seconds["steal"] == 8.0
    assert "guest" not in seconds
    assert cpu_seconds_by_mode(FewTimes()) == {"user": 1, "nice": 2, "system": 3, "idle": 4}


def test_summarize_resources_keeps_raw_values_and_judges_pressure() -> None:
    reading, findings = summarize_resources(_raw(available=500), 0.9)
    # the kernel's load averages, not divided by the CPU count: the rules divide
    assert (reading.load1, reading.load5, reading.load15) == (2.0, 1.0, 0.5)
    assert (reading.cpu_count, reading.cpu_seconds) == (4, SECONDS)
    assert findings == []
    _, findings = summarize_resources(_raw(available=50), 0.9)
    assert [f.kind for f in findings] == [FindingKind.MEMORY_PRESSURE]
    assert findings[0].severity is Severity.WARNING
    _, findings = summarize_resources(_raw(available=10), 0.9)
    assert findings[0].severity is Severity.CRITICAL


def test_resources_collector_reads_this_host() -> None:
    collector = ResourcesCollector()
    first, _ = collector.collect()
    second, _ = collector.collect()
    assert first.cpu_count >= 1
    assert 0 < second.memory_available_bytes <= second.memory_total_bytes
    assert set(second.cpu_seconds) == set(CPU_MODES)  # Linux counts every mode
    # counters: never backwards between two cycles
    assert all(second.cpu_seconds[m] >= first.cpu_seconds[m] for m in CPU_MODES)


# ------------------------------------------------------------------ disks


def test_parse_mounts_unescapes_octal() -> None:
    mounts = parse_mounts("/dev/sdb1 /srv/media\\040library xfs rw 0 0\nshort line\n")
    assert mounts == [Mount("/dev/sdb1", "/srv/media library", "xfs")]


def test_real_filesystems_leave_out_pseudo_and_bind_mounts() -> None:
    mounts = parse_mounts((FIXTURES / "proc/mounts").read_text())
    kept = [(m.mountpoint, m.fstype) for m in real_filesystems(mounts)]
    # /nix/store is a bind of the root device; docker's and snap's are excluded
    assert kept == [("/", "ext4"), ("/boot", "vfat"), ("/srv/media library", "xfs")]


def test_summarize_disks_fill_and_inodes() -> None:
    def fs(avail: int, files_free: int, files: int = 100, ro: bool = False) -> FilesystemReading:
        return FilesystemReading(
            mountpoint="/x",
            device="d",
            fstype="ext4",
            size_bytes=100,
            avail_bytes=avail,
            free_bytes=avail,
            files=files,
            files_free=files_free,
            readonly=ro,
        )

    assert summarize_disks([fs(50, 50)], 0.9, 0.9) == []
    kinds = [f.kind for f in summarize_disks([fs(5, 5)], 0.9, 0.9)]
    assert kinds == [FindingKind.DISK_FILLING, FindingKind.INODES_LOW]
    assert summarize_disks([fs(50, 0, files=0)], 0.9, 0.9) == []  # no inode limit (btrfs)
    # full but read-only (an image, a recovery mount): it cannot fill, nothing to clean
    assert summarize_disks([fs(5, 5, ro=True)], 0.9, 0.9) == []


def test_disks_collector_on_fixture_mounts(tmp_path: Path) -> None:
    def statvfs(path: str) -> os.statvfs_result:
        if path == "/boot":
            raise PermissionError(path)  # one unreadable mount is skipped, not fatal
        flag = os.ST_RDONLY | os.ST_NOSUID if path.startswith("/srv") else 0
        # f_bsize f_frsize f_blocks f_bfree f_bavail f_files f_ffree f_favail f_flag f_namemax
        return os.statvfs_result((4096, 4096, 1000, 60, 50, 100, 1, 1, flag, 255))

    collector = DisksCollector(mounts_file=FIXTURES / "proc/mounts", statvfs=statvfs)
    reading, findings = collector.collect()
    assert [fs.mountpoint for fs in reading.filesystems] == ["/", "/srv/media library"]
    root = reading.filesystems[0]
    assert (root.size_bytes, root.avail_bytes, root.free_bytes) == (4096000, 204800, 245760)
    assert [fs.readonly for fs in reading.filesystems] == [False, True]
    # both are 95% full; only the writable one is a finding
    assert {f.subject for f in findings} == {"/"}
    assert {f.kind for f in findings} == {FindingKind.DISK_FILLING, FindingKind.INODES_LOW}


def test_disks_collector_reads_this_host() -> None:
    reading, _ = DisksCollector().collect()
    assert any(fs.mountpoint == "/" for fs in reading.filesystems)
    assert all(fs.fstype not in ("proc", "sysfs", "tmpfs") for fs in reading.filesystems)
    root = next(fs for fs in reading.filesystems if fs.mountpoint == "/")
    assert root.readonly == bool(os.statvfs("/").f_flag & os.ST_RDONLY)


# ------------------------------------------------------------------ boot


def test_judge_reboot() -> None:
    assert not judge_reboot(None, "b", None)  # first start: nothing to compare
    assert not judge_reboot("a", "a", None)
    assert judge_reboot("a", "b", None)
    assert not judge_reboot("a", "b", "a")  # announced before "a" ended
    assert judge_reboot("a", "b", "z")  # an old announcement does not count


def _boot(tmp_path: Path, meta: MemoryMeta, boot_id: str) -> BootCollector:
    path = tmp_path / "boot_id"
    path.write_text(boot_id + "\n")
    return BootCollector(meta, boot_id_file=path, boot_time=lambda: 1000.0, clock=lambda: 1600.0)


def test_boot_collector_detects_unexpected_reboot_once_per_boot(tmp_path: Path) -> None:
    meta = MemoryMeta()
    reading, findings = _boot(tmp_path, meta, "aaa").collect()
    assert (reading.boot_id, reading.uptime_seconds, reading.unexpected_reboot) == (
        "aaa",
        600,
        False,
    )
    assert findings == []
    reading, findings = _boot(tmp_path, meta, "bbb").collect()
    assert reading.unexpected_reboot
    assert [f.kind for f in findings] == [FindingKind.UNEXPECTED_REBOOT]
    # a restarted sidecar in the same boot still knows (the flag lives in the store)
    assert _boot(tmp_path, meta, "bbb").collect()[0].unexpected_reboot
    assert meta.get_meta(BOOT_ID_KEY) == "bbb"


def test_boot_collector_announced_reboot_is_expected(tmp_path: Path) -> None:
    meta = MemoryMeta()
    _boot(tmp_path, meta, "aaa").collect()
    meta.set_meta(EXPECTED_REBOOT_KEY, "aaa")
    reading, findings = _boot(tmp_path, meta, "bbb").collect()
    assert not reading.unexpected_reboot
    assert findings == []


# ------------------------------------------------------------------ NixOS


def test_parse_generation_and_count() -> None:
    assert parse_generation("system-42-link") == 42
    assert parse_generation("/nix/var/nix/profiles/system-7-link") == 7
    assert parse_generation("/nix/store/abc-nixos-system") is None
    assert count_generations(["system", "system-1-link", "system-2-link", "per-user"]) == 2


def test_nixos_collector_not_nixos(tmp_path: Path) -> None:
    reading, findings = NixosCollector(root=tmp_path).collect()
    assert not reading.is_nixos
    assert (reading.generation, reading.store_size_bytes, findings) == (None, None, [])


def test_nixos_collector_on_fixture_tree(tmp_path: Path) -> None:
    make_nixos_tree(tmp_path)
    clock = [0.0]
    collector = NixosCollector(root=tmp_path, store_size_interval=3600, clock=lambda: clock[0])
    reading, _ = collector.collect()
    assert reading.is_nixos
    assert (reading.generation, reading.generations) == (3, 3)
    assert reading.generation_timestamp == 3000.0
    assert reading.store_size_bytes == 42
    with sqlite3.connect(tmp_path / "nix/var/nix/db/db.sqlite") as conn:
        conn.execute("INSERT INTO ValidPaths(path, narSize) VALUES ('/nix/store/new', 58)")
    conn.close()
    # measured at most once per interval: the cached figure until it has passed
    assert collector.collect()[0].store_size_bytes == 42
    clock[0] = 3600.0
    assert collector.collect()[0].store_size_bytes == 100


def test_nixos_collector_without_database(tmp_path: Path) -> None:
    make_nixos_tree(tmp_path)
    (tmp_path / "nix/var/nix/db/db.sqlite").unlink()
    assert NixosCollector(root=tmp_path).collect()[0].store_size_bytes is None


def test_nixos_running_generation_follows_current_system_not_the_boot_default(
    tmp_path: Path,
) -> None:
    """`nixos-rebuild test` (or a rollback) runs a generation that is not the profile's
    default: the running one is read from /run/current-system."""
    make_nixos_tree(tmp_path)
    (tmp_path / "run").mkdir()
    collector = NixosCollector(root=tmp_path)
    assert collector.collect()[0].running_generation is None  # no current-system yet
    (tmp_path / "run/current-system").symlink_to(f"/nix/store/{2:032d}-nixos-system")
    reading = collector.collect()[0]
    assert (reading.generation, reading.running_generation) == (3, 2)
    (tmp_path / "run/current-system").unlink()
    (tmp_path / "run/current-system").symlink_to("/nix/store/never-added-nixos-system")
    assert collector.collect()[0].running_generation is None
