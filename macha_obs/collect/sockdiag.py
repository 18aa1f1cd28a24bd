"""TCP listening sockets from the kernel's sock_diag netlink, asking for LISTEN only.

Reading /proc/net/tcp{,6} walks the whole established-connection hash, whose size the
kernel sets from the RAM, however few sockets there are: 3.4 ms of CPU per file per read
on a 24 GiB host with three sockets (bench/intrusion.py), which made the intrusion
collector's steady cycle the largest part of an idle sidecar's CPU. A sock_diag dump
restricted to LISTEN walks only the listening hash (the kernel's inet_diag skips the
established one when no other state is asked), as `ss -lnt` does.

The reply says the same as /proc/net/tcp{,6} for LISTEN sockets: the local address,
port and socket inode (tests/test_sockdiag.py compares them on this kernel). Any error
here is the caller's cue to read /proc/net instead; UDP, cheap there, is always read so.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_LISTEN = 10

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
# inet_diag_req_v2: family, protocol, ext, pad, states, then an all-zero inet_diag_sockid
_REQUEST = struct.Struct("=BBBBI48x")
# inet_diag_msg: family, state, timer, retrans, sport, dport (big-endian), src[16],
# dst[16], interface, cookie[8], expires, rqueue, wqueue, uid, inode
_MESSAGE = struct.Struct("=BBBB2s2s16s16sI8sIIIII")
_ERRNO = struct.Struct("=i")
_MAX_MESSAGES = 100_000  # a bound on one dump, far past any host's listeners

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _aligned(n: int) -> int:
    return (n + 3) & ~3


def tcp_listeners(family: int, *, timeout: float = 2.0) -> list[tuple[Address, int, int]]:
    """(local address, port, socket inode) of every TCP socket in LISTEN of `family`
    (AF_INET or AF_INET6) in this process's network namespace. OSError when the kernel
    cannot answer (no inet_diag, a refused or garbled dump)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(timeout)
        request = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN)
        flags = NLM_F_REQUEST | NLM_F_DUMP
        header = _HEADER.pack(_HEADER.size + len(request), SOCK_DIAG_BY_FAMILY, flags, 1, 0)
        sock.send(header + request)
        found: list[tuple[Address, int, int]] = []
        while len(found) < _MAX_MESSAGES:
            data = sock.recv(1 << 16)
            if not data:
                raise OSError("sock_diag: the dump ended without NLMSG_DONE")
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size or offset + length > len(data):
                    raise OSError(f"sock_diag: a message of {length} bytes does not fit")
                body = offset + _HEADER.size
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR:
                    (errno,) = _ERRNO.unpack_from(data, body)
                    raise OSError(-errno, f"sock_diag refused the dump ({-errno})")
                if kind == SOCK_DIAG_BY_FAMILY and length - _HEADER.size >= _MESSAGE.size:
                    found.append(_listener(_MESSAGE.unpack_from(data, body)))
                offset += _aligned(length)
        raise OSError(f"sock_diag: more than {_MAX_MESSAGES} listeners")


def _listener(fields: tuple[Any, ...]) -> tuple[Address, int, int]:
    family, port, source, inode = fields[0], fields[4], fields[6], fields[14]
    raw = bytes(source[:4] if family == socket.AF_INET else source)
    return ipaddress.ip_address(raw), int.from_bytes(port, "big"), int(inode)
