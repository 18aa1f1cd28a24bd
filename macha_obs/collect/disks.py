"""Disks: space and inodes of real filesystems, from /proc/self/mounts and statvfs."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
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


def summarize_disks(
    filesystems: Iterable[FilesystemReading], fill_threshold: float, inode_threshold: float
) -> list[Finding]:
    """Findings for writable filesystems only: a read-only one cannot fill any further, and
    nothing the sidecar could clean on it can be written (the rules skip them too)."""
    findings = []
    for fs in filesystems:
        if fs.readonly:
            continue
        if fs.size_bytes > 0:
            used = 1.0 - fs.avail_bytes / fs.size_bytes
            if used >= fill_threshold:
                findings.append(
                    Finding(
                        kind=FindingKind.DISK_FILLING,
                        severity=Severity.CRITICAL if used >= 0.97 else Severity.WARNING,
                        subject=fs.mountpoint,
                        summary=f"{fs.mountpoint} is {used:.0%} full",
                        details={"used_ratio": round(used, 4), "avail_bytes": fs.avail_bytes},
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
                        details={"used_ratio": round(used, 4), "files_free": fs.files_free},
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
    ) -> None:
        self.fill_threshold = fill_threshold
        self.inode_threshold = inode_threshold
        self.mounts_file = mounts_file
        self.exclude = exclude
        self.statvfs = statvfs

    def collect(self) -> tuple[DisksReading, list[Finding]]:
        readings = []
        for mount in real_filesystems(parse_mounts(self.mounts_file.read_text()), self.exclude):
            try:
                st = self.statvfs(mount.mountpoint)
            except OSError:  # unmounted meanwhile, or not ours to read: skip this one only
                continue
            readings.append(reading_from_statvfs(mount, st))
        findings = summarize_disks(readings, self.fill_threshold, self.inode_threshold)
        return DisksReading(filesystems=readings), findings
