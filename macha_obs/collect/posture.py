"""The host's posture, read cheaply: listening sockets (TCP by sock_diag, UDP and other
namespaces from /proc/net), enabled units (one ListUnitFiles over the bus), setuid/setgid
files under the system paths (a directory is re-read only when its mtime changed, or once
an hour); and the accepted baseline file.

I/O (`fetch_*`, `SetidScanner`) is apart from parsing (`parse_proc_net`), which is tested
on literal text.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from macha_obs.collect import sockdiag
from macha_obs.collect.base import CollectorError
from macha_obs.collect.exposure_listeners import (
    PROC,
    TCP_LISTEN,
    UDP_UNCONNECTED,
    hex_address,
)
from macha_obs.errors import MachaError
from macha_obs.models import Listener, PostureBaseline, PostureNow
from macha_obs.statedir import (
    BASELINE_MAX_BYTES,
    StateDir,
    StateDirError,
    read_bounded,
    write_atomic,
)

NET_FILES: tuple[tuple[str, str], ...] = (
    ("tcp", "tcp"),
    ("tcp6", "tcp6"),
    ("udp", "udp"),
    ("udp6", "udp6"),
)
# systemd's unit-file states that start a unit at boot or on demand
ENABLED_STATES = frozenset({"enabled", "enabled-runtime"})
MAX_DIR_ENTRIES = 50_000  # per scanned directory: a bound on one scan's cost
FULL_RESCAN = 3600.0  # a chmod u+s changes no directory's mtime: read every dir hourly


def _address(hexaddr: str) -> str:
    return _shown(hex_address(hexaddr))


def _shown(address: sockdiag.Address) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def parse_proc_net(
    text: str, proto: str, ephemeral: tuple[int, int] | None = None
) -> list[tuple[Listener, int]]:
    """/proc/net/{tcp,udp}[6] → (listener, socket inode). TCP: LISTEN sockets; UDP: bound,
    unconnected sockets, except those on an ephemeral port (a resolver's query, not a
    service)."""
    found: list[tuple[Listener, int]] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        try:
            hexaddr, hexport = local.split(":")
            port = int(hexport, 16)
            address = _address(hexaddr)
            node = int(inode)
        except ValueError:
            continue
        if proto.startswith("tcp") and state != TCP_LISTEN:
            continue
        if proto.startswith("udp"):
            if state != UDP_UNCONNECTED or not remote.endswith(":0000"):
                continue
            if ephemeral is not None and ephemeral[0] <= port <= ephemeral[1]:
                continue
        found.append((Listener(proto=proto, address=address, port=port), node))
    return found


def _ephemeral(proc: Path) -> tuple[int, int] | None:
    try:
        low, high = (proc / "sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return None


TcpDiag = Callable[[int], list[tuple[sockdiag.Address, int, int]]]


def fetch_listeners(
    proc: Path = PROC, *, diag: TcpDiag | None = sockdiag.tcp_listeners
) -> list[tuple[Listener, int]]:
    """The listening sockets of this process's network namespace, deduplicated. TCP comes
    from sock_diag (`diag`) when `proc` is this process's own /proc: the same answer as
    /proc/net/tcp{,6} at a hundredth of the cost (sockdiag.py); /proc/net when it cannot
    answer, and always for UDP."""
    ephemeral = _ephemeral(proc)
    tcp = _tcp_from_diag(diag) if diag is not None and proc == PROC else None
    seen: dict[str, tuple[Listener, int]] = {}
    for name, proto in NET_FILES:
        if tcp is not None and proto in tcp:
            pairs = tcp[proto]
        else:
            try:
                text = (proc / "net" / name).read_text()
            except FileNotFoundError:
                continue  # no IPv6 in this kernel
            except OSError as exc:
                raise CollectorError(f"cannot read {proc / 'net' / name}: {exc}") from exc
            pairs = parse_proc_net(text, proto, ephemeral)
        for listener, inode in pairs:
            seen.setdefault(listener.key, (listener, inode))
    return sorted(seen.values(), key=lambda pair: pair[0].key)


def _tcp_from_diag(diag: TcpDiag) -> dict[str, list[tuple[Listener, int]]] | None:
    """TCP's listeners by /proc/net table name, or None when sock_diag cannot answer."""
    found: dict[str, list[tuple[Listener, int]]] = {}
    for family, proto in ((socket.AF_INET, "tcp"), (socket.AF_INET6, "tcp6")):
        try:
            answer = diag(family)
        except OSError as exc:
            if family == socket.AF_INET6 and exc.errno == errno.EAFNOSUPPORT:
                continue  # no IPv6 in this kernel
            return None
        found[proto] = [
            (Listener(proto=proto, address=_shown(address), port=port), inode)
            for address, port, inode in answer
        ]
    return found


def _unit_of_cgroup(text: str) -> str:
    # cgroup v2: "0::/system.slice/sshd.service"; the innermost unit-looking part wins
    for line in text.splitlines():
        path = line.rpartition(":")[2]
        for part in reversed(path.split("/")):
            if part.endswith((".service", ".socket", ".scope")):
                return part[:255]
    return ""


def socket_owners(inodes: Iterable[int], proc: Path = Path("/proc")) -> dict[int, str]:
    """Socket inode → the unit of a process holding it, where this user may look (root
    sees every process; others only their own). Stops once all are found."""
    wanted = {f"socket:[{i}]": i for i in inodes}
    owners: dict[int, str] = {}
    if not wanted:
        return owners
    with os.scandir(proc) as processes:
        for entry in processes:
            if not entry.name.isdigit():
                continue
            try:
                with os.scandir(proc / entry.name / "fd") as fds:
                    links = {os.readlink(fd.path) for fd in fds}
                hits = [wanted[link] for link in links if link in wanted]
                if hits:
                    unit = _unit_of_cgroup((proc / entry.name / "cgroup").read_text())
                    for inode in hits:
                        owners.setdefault(inode, unit)
            except OSError:
                continue  # not ours to read, or gone meanwhile
            if len(owners) == len(wanted):
                break
    return owners


class UnitFiles(Protocol):
    def list_unit_files(self) -> list[tuple[str, str]]: ...


def enabled_units(rows: Iterable[tuple[str, str]]) -> list[str]:
    """ListUnitFiles rows (path, state) → the names of the enabled units, sorted."""
    return sorted({Path(path).name for path, state in rows if state in ENABLED_STATES})


class SetidScanner:
    """Setuid/setgid regular files directly in `dirs` (not below), each directory re-read
    only when its mtime changed or FULL_RESCAN passed; symlinks are never followed."""

    def __init__(
        self, dirs: Sequence[Path], *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.dirs = tuple(dirs)
        self.monotonic = monotonic
        self._cache: dict[Path, tuple[int, float, list[str]]] = {}
        self.scans = 0  # directories actually read (tests and the note measure it)

    def _scan(self, directory: Path) -> list[str]:
        self.scans += 1
        found: list[str] = []
        with os.scandir(directory) as entries:
            for n, entry in enumerate(entries):
                if n >= MAX_DIR_ENTRIES:
                    break
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode) and info.st_mode & (stat.S_ISUID | stat.S_ISGID):
                    found.append(entry.path)
        return sorted(found)

    def files(self) -> list[str]:
        now = self.monotonic()
        result: set[str] = set()
        seen: set[tuple[int, int]] = set()
        for directory in self.dirs:
            try:
                info = os.stat(directory)
            except OSError:
                self._cache.pop(directory, None)
                continue  # /run/wrappers/bin exists on NixOS only
            if (info.st_dev, info.st_ino) in seen:
                continue  # /bin -> usr/bin (merged /usr): one directory, read once
            seen.add((info.st_dev, info.st_ino))
            cached = self._cache.get(directory)
            if cached is None or cached[0] != info.st_mtime_ns or now - cached[1] > FULL_RESCAN:
                try:
                    cached = (info.st_mtime_ns, now, self._scan(directory))
                except OSError:
                    continue
                self._cache[directory] = cached
            result.update(cached[2])
        return sorted(result)


def fetch_units_and_setid(unit_files: UnitFiles, scanner: SetidScanner) -> PostureNow:
    """The slow part of the posture (no listeners): enabled units and setid files."""
    try:
        units: list[str] | None = enabled_units(unit_files.list_unit_files())
        error = ""
    except MachaError as exc:  # no bus, or systemd not answering: units unknown, the rest read
        units, error = None, f"{type(exc).__name__}: {exc}"[:500]
    return PostureNow(enabled_units=units, units_error=error, setid_files=scanner.files())


def fetch_posture(
    unit_files: UnitFiles, scanner: SetidScanner, proc: Path = Path("/proc"), owners: bool = False
) -> PostureNow:
    """The host's posture now; `owners`: also find each listener's unit (a walk of /proc)."""
    pairs = fetch_listeners(proc)
    held = socket_owners((inode for _, inode in pairs), proc) if owners else {}
    listeners = [
        listener.model_copy(update={"unit": held.get(inode, "")}) for listener, inode in pairs
    ]
    rest = fetch_units_and_setid(unit_files, scanner)
    return rest.model_copy(update={"listeners": listeners})


class BaselineError(CollectorError):
    """The baseline file cannot be trusted or read; the message says what to do."""


def load_baseline(state_dir: Path) -> PostureBaseline | None:
    """The accepted baseline, None when none was accepted yet; BaselineError when the file
    is a symlink, not ours, too large or not a baseline (it is left as it is)."""
    path = StateDir(state_dir).posture_baseline
    try:
        data = read_bounded(path, BASELINE_MAX_BYTES)
    except StateDirError as exc:
        raise BaselineError(str(exc)) from exc
    except OSError as exc:
        raise BaselineError(f"cannot read {path}: {exc}") from exc
    if data is None:
        return None
    try:
        return PostureBaseline.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the file"
        raise BaselineError(
            f"{path} is not a posture baseline ({where}: {first['msg']}); "
            "`macha-obs posture accept` writes a new one"
        ) from exc


def save_baseline(state_dir: Path, baseline: PostureBaseline) -> Path:
    """Write the baseline atomically, 0600; a planted symlink or another's file is refused."""
    path = StateDir(state_dir).posture_baseline
    data = baseline.model_dump_json(indent=1).encode()
    if len(data) > BASELINE_MAX_BYTES:
        raise BaselineError(f"the baseline would be {len(data)} bytes, over {BASELINE_MAX_BYTES}")
    try:
        write_atomic(path, data, mode=0o600)
    except StateDirError as exc:
        raise BaselineError(str(exc)) from exc
    return path
