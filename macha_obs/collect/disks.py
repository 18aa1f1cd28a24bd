"""Disks: space and inodes of real filesystems, from /proc/self/mounts and statvfs.

A filling filesystem's finding says what it holds that the sidecar knows how to clean:
the Nix store (`holds_nix_store`) and the journal (`holds_journal`), found by device
(`st_dev`), so bind mounts and a store on its own disk are told apart. The runbooks clean
only what the filling filesystem holds: nothing that does not exist on this host.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from macha_obs.models import DisksReading, FilesystemReading, Finding, FindingKind, Severity

# node_exporter's filesystem defaults, plus the memory-backed ones (tmpfs, ramfs): they
# are not disks and their "filling" is memory pressure, which resources reports.
# fmt: off
PSEUDO_FSTYPES = frozenset((
    "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devpts",
    "devtmpfs", "efivarfs", "fusectl", "fuse.lxcfs", "fuse.portal", "hugetlbfs", "iso9660",
    "mqueue", "nsfs", "overlay", "proc", "procfs", "pstore", "ramfs", "rpc_pipefs",
    "securityfs", "selinuxfs", "squashfs", "sysfs", "tmpfs", "tracefs",
))
# fmt: on
DEFAULT_MOUNT_EXCLUDE = r"/(?:dev|proc|sys|run/credentials/.+|var/lib/docker/.+)(?:/.*)?"
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    device: str
    mountpoint: str
    fstype: str


def _unescape(field: str) -> str:
    # the kernel writes space, tab, newline and backslash in mount fields as \ooo
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mounts(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            mounts.append(Mount(_unescape(fields[0]), _unescape(fields[1]), fields[2]))
    return mounts


def real_filesystems(mounts: Iterable[Mount], exclude: str = DEFAULT_MOUNT_EXCLUDE) -> list[Mount]:
    """Leave out pseudo filesystems and excluded paths; one mount per device (bind mounts
    of the same device, such as NixOS's /nix/store, would report the same space twice)."""
    skip = re.compile(exclude)
    by_device: dict[str, Mount] = {}
    for mount in mounts:
        if mount.fstype in PSEUDO_FSTYPES or skip.fullmatch(mount.mountpoint):
            continue
        kept = by_device.get(mount.device)
        if kept is None or len(mount.mountpoint) < len(kept.mountpoint):
            by_device[mount.device] = mount
    return sorted(by_device.values(), key=lambda m: m.mountpoint)


def reading_from_statvfs(mount: Mount, st: os.statvfs_result) -> FilesystemReading:
    return FilesystemReading(
        mountpoint=mount.mountpoint,
        device=mount.device,
        fstype=mount.fstype,
        size_bytes=st.f_blocks * st.f_frsize,
        avail_bytes=st.f_bavail * st.f_frsize,
        free_bytes=st.f_bfree * st.f_frsize,
        files=st.f_files,
        files_free=st.f_ffree,
        # the mount's own flag, as statfs reports it (node_exporter's readonly does the same)
        readonly=bool(st.f_flag & os.ST_RDONLY),
    )


# What a filesystem can hold that a runbook knows how to clean, by the detail it sets.
HOLDS_NIX_STORE = "holds_nix_store"
HOLDS_JOURNAL = "holds_journal"


def holders(
    mountpoints: Iterable[str], paths: Mapping[str, Iterable[Path]], device: Callable[[str], int]
) -> dict[str, str]:
    """{detail: mountpoint} for each of `paths` (detail → candidate paths) that exists on
    one of `mountpoints`' devices; a path that does not exist, or cannot be read, is held
    by none (a host without a Nix store has nothing for nix gc to free)."""
    by_device: dict[int, str] = {}
    for mountpoint in mountpoints:
        with contextlib.suppress(OSError):
            by_device.setdefault(device(mountpoint), mountpoint)
    held: dict[str, str] = {}
    for detail, candidates in paths.items():
        for path in candidates:
            try:
                dev = device(str(path))
            except OSError:
                continue
            if dev in by_device:
                held[detail] = by_device[dev]
                break
    return held


def summarize_disks(
    filesystems: Iterable[FilesystemReading],
    fill_threshold: float,
    inode_threshold: float,
    held: Mapping[str, str] | None = None,
) -> list[Finding]:
    """Findings for writable filesystems only: a read-only one cannot fill any further, and
    nothing the sidecar could clean on it can be written (the rules skip them too).
    `held` ({detail: mountpoint}, from `holders`) marks what each one holds."""
    findings = []
    held = held or {}
    for fs in filesystems:
        if fs.readonly:
            continue
        holds = {d: True for d, mountpoint in held.items() if mountpoint == fs.mountpoint}
        if fs.size_bytes > 0:
            used = 1.0 - fs.avail_bytes / fs.size_bytes
            if used >= fill_threshold:
                findings.append(
                    Finding(
                        kind=FindingKind.DISK_FILLING,
                        severity=Severity.CRITICAL if used >= 0.97 else Severity.WARNING,
                        subject=fs.mountpoint,
                        summary=f"{fs.mountpoint} is {used:.0%} full",
                        details={
                            "used_ratio": round(used, 4),
                            "avail_bytes": fs.avail_bytes,
                            **holds,
                        },
                    )
                )
        if fs.files > 0:  # btrfs and some others report no inode limit
            used = 1.0 - fs.files_free / fs.files
            if used >= inode_threshold:
                findings.append(
                    Finding(
                        kind=FindingKind.INODES_LOW,
                        subject=fs.mountpoint,
                        summary=f"{fs.mountpoint} has used {used:.0%} of its inodes",
                        details={
                            "used_ratio": round(used, 4),
                            "files_free": fs.files_free,
                            **holds,
                        },
                    )
                )
    return findings


class DisksCollector:
    name = "disks"

    def __init__(
        self,
        *,
        fill_threshold: float = 0.90,
        inode_threshold: float = 0.90,
        mounts_file: Path = Path("/proc/self/mounts"),
        exclude: str = DEFAULT_MOUNT_EXCLUDE,
        statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
        nix_store: Path | None = Path("/nix/store"),
        journal_dirs: Iterable[Path] = (Path("/var/log/journal"), Path("/run/log/journal")),
        device: Callable[[str], int] = lambda path: os.stat(path).st_dev,
    ) -> None:
        self.fill_threshold = fill_threshold
        self.inode_threshold = inode_threshold
        self.mounts_file = mounts_file
        self.exclude = exclude
        self.statvfs = statvfs
        self.paths: dict[str, tuple[Path, ...]] = {HOLDS_JOURNAL: tuple(journal_dirs)}
        if nix_store is not None:
            self.paths[HOLDS_NIX_STORE] = (nix_store,)
        self.device = device

    def collect(self) -> tuple[DisksReading, list[Finding]]:
        readings = []
        for mount in real_filesystems(parse_mounts(self.mounts_file.read_text()), self.exclude):
            try:
                st = self.statvfs(mount.mountpoint)
            except OSError:  # unmounted meanwhile, or not ours to read: skip this one only
                continue
            readings.append(reading_from_statvfs(mount, st))
        held = holders([r.mountpoint for r in readings], self.paths, self.device)
        findings = summarize_disks(readings, self.fill_threshold, self.inode_threshold, held)
        return DisksReading(filesystems=readings), findings
