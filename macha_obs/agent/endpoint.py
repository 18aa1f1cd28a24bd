"""The model endpoint is trusted only when it is what the user configured.

Two checks, both before a prompt leaves the process:

- `llm_endpoint_user`: every new TCP connection to the model server is checked before a
  byte is written to it. The server's side of that very connection is looked up in this
  host's socket table (/proc/net/tcp and tcp6, whose `uid` column is the owner of the
  socket, readable without seeing the owner's process); when the server is on this host
  (always so for 127.0.0.0/8 and ::1), its owner's user name must be the configured one, or the
  connection is closed unused and `EndpointUntrusted` says who holds the port. Checking
  the connected socket, not the listener beforehand, leaves no window between check and
  use, and a kept-alive connection was checked when it was opened. Names are compared, not
  uids: Ollama runs under systemd's DynamicUser on NixOS, its uid changes from start to
  start, and the name resolves (nss-systemd) while the unit runs. A server on another
  host cannot be checked this way (use TLS and an API key there); nothing is refused for
  being remote.
- `openai_api_key_file`: read at each request (a rotated key is picked up), refused when it
  is a symlink, not a regular file, or readable or writable by group or others, and sent as
  `Authorization: Bearer <key>` to the configured server only (requests drops the header on
  a redirect to another host).

Both refusals are LlmErrors: the analysis falls back to the runbooks and the decision says
why (invariant 8).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import pwd
import stat
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from macha_obs.agent.llm_errors import LlmError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Address = tuple[IPAddress, int]

_PROC_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
# /proc/net/tcp states (include/net/tcp_states.h) that are no live socket of a server
_TIME_WAIT, _CLOSE = 0x06, 0x07


class EndpointUntrusted(LlmError):
    """The model endpoint is not what the user configured; nothing was sent to it."""

    kind = "untrusted"


class ApiKeyFileUnsafe(EndpointUntrusted):
    """The API key file cannot be used as it is; the message says what to do."""


# ------------------------------------------------------------------ the API key


def load_api_key(path: Path) -> str:
    """The key in `path`, after checking the file is safe to trust."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ApiKeyFileUnsafe(
                f"openai_api_key_file {path} is a symlink; give the path of the key file "
                "itself (a regular file, mode 0600 or 0400)"
            ) from exc
        raise ApiKeyFileUnsafe(
            f"openai_api_key_file {path} cannot be read: {exc.strerror}"
        ) from exc
    try:
        info = os.fstat(fd)  # the file opened, not what the name points to now
        if not stat.S_ISREG(info.st_mode):
            raise ApiKeyFileUnsafe(f"openai_api_key_file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise ApiKeyFileUnsafe(
                f"openai_api_key_file {path} is readable or writable by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path} (and "
                "consider the key leaked: rotate it)"
            )
        data = os.read(fd, 4097)
    finally:
        os.close(fd)
    try:
        key = data.decode("ascii").strip()
    except UnicodeDecodeError:
        key = ""
    if not key or len(data) > 4096 or not all(33 <= ord(c) < 127 for c in key):
        raise ApiKeyFileUnsafe(f"openai_api_key_file {path} does not hold one API key")
    return key


# ------------------------------------------------------------------ the socket table


@dataclass(frozen=True)
class TcpSocket:
    """One row of /proc/net/tcp or tcp6."""

    local: Address
    remote: Address
    state: int
    uid: int


def _address(text: str) -> Address:
    """`0100007F:2CAA` → (127.0.0.1, 11434): the kernel prints each 32-bit word of the
    address in host byte order, the port in plain hex."""
    host, port = text.split(":")
    raw = b"".join(struct.pack("=I", int(host[i : i + 8], 16)) for i in range(0, len(host), 8))
    return _plain(ipaddress.ip_address(raw)), int(port, 16)


def _plain(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address as the IPv4 address it is (a dual-stack listener's)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_tcp_table(text: str) -> list[TcpSocket]:
    """The rows of /proc/net/tcp or tcp6; a row that does not parse is skipped."""
    rows = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        try:
            rows.append(
                TcpSocket(
                    _address(fields[1]), _address(fields[2]), int(fields[3], 16), int(fields[7])
                )
            )
        except (IndexError, ValueError):
            continue
    return rows


def read_tcp_tables(tables: Iterable[Path] = _PROC_TABLES) -> list[TcpSocket]:
    rows: list[TcpSocket] = []
    for table in tables:
        try:
            rows += parse_tcp_table(table.read_text())
        except FileNotFoundError:  # no IPv6 on this host
            continue
    return rows


def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


# ------------------------------------------------------------------ the check


class Connected(Protocol):
    """What the check needs of a connected socket."""

    def getsockname(self) -> Any: ...

    def getpeername(self) -> Any: ...


class EndpointGuard:
    """Checks that the server side of a connection belongs to `expected_user`."""

    def __init__(
        self,
        expected_user: str,
        *,
        tables: Callable[[], list[TcpSocket]] = read_tcp_tables,
        name_of: Callable[[int], str | None] = user_name,
        attempts: int = 5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.expected_user = expected_user
        self.tables = tables
        self.name_of = name_of
        self.attempts = attempts
        self.sleep = sleep

    def owners(self, ours: Address, theirs: Address) -> set[int]:
        """The uids owning the far end of the connection ours → theirs on this host."""
        for attempt in range(self.attempts):
            found = {
                row.uid
                for row in self.tables()
                if row.local == theirs and row.remote == ours
                and row.state not in (_TIME_WAIT, _CLOSE)
            }  # fmt: skip
            if found or not theirs[0].is_loopback:
                return found
            self.sleep(0.01 * (attempt + 1))  # cannot be missing for long on loopback
        return set()

    def check(self, sock: Connected, endpoint: str) -> None:
        """Raise EndpointUntrusted unless the server on the far end of `sock` is run by
        the expected user (or is on another host)."""
        ours, theirs = _peer(sock.getsockname()), _peer(sock.getpeername())
        uids = self.owners(ours, theirs)
        if not uids:
            if theirs[0].is_loopback:
                raise EndpointUntrusted(
                    f"the model endpoint {endpoint} is on this host, but its socket is not in "
                    f"/proc/net/tcp: cannot tell who serves it, so nothing was sent"
                )
            return  # another host: not ours to check
        for uid in sorted(uids):
            name = self.name_of(uid)
            if name != self.expected_user:
                raise EndpointUntrusted(
                    f"the model endpoint {endpoint} is served by uid {uid} "
                    f"({name or 'no such user'}), not {self.expected_user}; nothing was sent "
                    "(llm_endpoint_user)"
                )


def _peer(sockaddr: Any) -> Address:
    return _plain(ipaddress.ip_address(sockaddr[0])), int(sockaddr[1])


def display(host: str, port: int | None) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
