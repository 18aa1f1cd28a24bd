"""Which services listen beyond loopback, read from /proc (for the exposure collector).

A process belongs to the service its cgroup names (/proc/PID/cgroup, the first path
component ending in `.service`: `user@1000.service/app.slice/x.service` is user@1000's);
its sockets are the `socket:[INODE]` links under /proc/PID/fd; a socket listens beyond
loopback when its network namespace's /proc/PID/net/{tcp,tcp6} lists it LISTEN, or its
{udp,udp6} lists it bound and unconnected, on an address that is not loopback. Each
network namespace's tables are read once, through the first process found in it, so a
service in a namespace of its own (or a systemd in a container) is judged by its own
tables, which psutil.net_connections (the caller's namespace only) cannot do.

Cheap: only the processes of the services asked about are looked at beyond their cgroup
line, and a process that vanishes midway is skipped.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Collection, Iterator
from pathlib import Path

PROC = Path("/proc")
TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"  # TCP_CLOSE: a UDP socket with no peer
_TABLES = (
    ("tcp", TCP_LISTEN),
    ("tcp6", TCP_LISTEN),
    ("udp", UDP_UNCONNECTED),
    ("udp6", UDP_UNCONNECTED),
)


def service_of_cgroup(text: str) -> str | None:
    """The system service a /proc/PID/cgroup names (the unified line, else systemd's)."""
    paths = {}
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            paths["unified"] = path
        elif controllers == "name=systemd":
            paths["systemd"] = path
    path = paths.get("unified") or paths.get("systemd") or ""
    return next((part for part in path.split("/") if part.endswith(".service")), None)


def hex_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net's address (host byte order per 32-bit word) → an address."""
    raw = bytes.fromhex(text)
    return ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))


def is_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def parse_net_table(text: str, state: str) -> set[int]:
    """Inodes of the sockets in `state` on a non-loopback address, from /proc/net/{tcp,udp}[6]."""
    inodes: set[int] = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != state:
            continue
        local, remote = fields[1].partition(":")[0], fields[2].partition(":")[0]
        try:
            if state == UDP_UNCONNECTED and int(remote, 16) != 0:
                continue
            if not is_loopback(hex_address(local)):
                inodes.add(int(fields[9]))
        except ValueError:
            continue
    return inodes


def _pids(proc: Path) -> Iterator[str]:
    try:
        names = os.listdir(proc)
    except OSError:
        return
    yield from (name for name in names if name.isdigit())


def _socket_inodes(fd_dir: Path) -> set[int]:
    inodes: set[int] = set()
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd_dir / fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _exposed_inodes(net_dir: Path) -> set[int]:
    inodes: set[int] = set()
    for table, state in _TABLES:
        try:
            inodes |= parse_net_table((net_dir / table).read_text(), state)
        except OSError:
            continue
    return inodes


def listening_units(units: Collection[str], proc: Path = PROC) -> set[str]:
    """Which of `units` have a process with a socket listening beyond loopback."""
    wanted = set(units)
    namespaces: dict[int, set[int]] = {}  # netns inode → its exposed socket inodes
    found: set[str] = set()
    for pid in _pids(proc):
        try:
            unit = service_of_cgroup((proc / pid / "cgroup").read_text())
        except OSError:
            continue
        if unit not in wanted or unit in found or unit is None:
            continue
        try:
            netns = os.stat(proc / pid / "ns" / "net").st_ino
        except OSError:
            continue
        if netns not in namespaces:
            namespaces[netns] = _exposed_inodes(proc / pid / "net")
        if _socket_inodes(proc / pid / "fd") & namespaces[netns]:
            found.add(unit)
    return found
