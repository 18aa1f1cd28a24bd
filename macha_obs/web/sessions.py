"""Logging in to the approvals page: server-side sessions, and wrong tokens slowed down.

A session is a random name the sidecar keeps in memory (only its SHA-256), so logging
out ends it on the server: a copied cookie replayed afterwards is refused. A restart
ends every session too (people log in again; nothing else is lost). The table is
bounded: past `MAX_SESSIONS`, the oldest session ends first.

Wrong tokens (the login form's, or a bearer header's) are counted per address
(`LoginGuard`): after `FREE_FAILURES` in a row, each further check from that address
waits a backoff that doubles up to `MAX_BACKOFF` seconds; checks asked for meanwhile
are refused without looking at the token, and do not lengthen the wait. The right token
clears the address, so after the wait it logs in whatever came before; other addresses
are never slowed. IPv6 addresses count by their /64 (one host holds a whole /64). The
table is bounded (`MAX_ADDRESSES`, least recently seen forgotten first) and an address
idle for `FORGET_AFTER` is forgotten. The clock is the caller's.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass

SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 256
FREE_FAILURES = 5
MAX_BACKOFF = 60.0
FORGET_AFTER = 15 * 60.0
MAX_ADDRESSES = 4096


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class Sessions:
    """Login sessions by the SHA-256 of their cookie's value; a logout forgets one."""

    def __init__(self, *, max_sessions: int = MAX_SESSIONS) -> None:
        self._until: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self.max_sessions = max_sessions

    def start(self, now: float) -> tuple[str, float]:
        """A new session: the cookie's value, and when it ends."""
        value = secrets.token_urlsafe(32)
        until = now + SESSION_SECONDS
        with self._lock:
            self._until[_digest(value)] = until
            while len(self._until) > self.max_sessions:
                self._until.popitem(last=False)
        return value, until

    def until(self, value: str | None, now: float) -> float | None:
        """When this session ends, if it is one of ours and still on; else None."""
        if not value or len(value) > 128:
            return None
        key = _digest(value)
        with self._lock:
            until = self._until.get(key)
            if until is not None and now >= until:
                del self._until[key]
                return None
        return until

    def end(self, value: str | None) -> bool:
        """Forget this session (a logout); True when it was on."""
        if not value or len(value) > 128:
            return False
        with self._lock:
            return self._until.pop(_digest(value), None) is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self._until)


def address_key(remote: str) -> str:
    """What failures count against: the address, an IPv6 one by its /64."""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass
class _Record:
    failures: int
    blocked_until: float
    seen: float


class LoginGuard:
    """Wrong tokens per address, and how long the next check from there must wait."""

    def __init__(
        self,
        *,
        free: int = FREE_FAILURES,
        max_backoff: float = MAX_BACKOFF,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self.free, self.max_backoff, self.max_addresses = free, max_backoff, max_addresses
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._lock = threading.Lock()

    def wait(self, remote: str, now: float) -> float:
        """Seconds before a token from `remote` is looked at again (0: now)."""
        key = address_key(remote)
        with self._lock:
            record = self._records.get(key)
            if record is None:
                return 0.0
            if now - record.seen >= FORGET_AFTER:
                del self._records[key]
                return 0.0
            return max(0.0, record.blocked_until - now)

    def failed(self, remote: str, now: float) -> int:
        """A wrong token from `remote`: how many in a row from there now."""
        key = address_key(remote)
        with self._lock:
            record = self._records.pop(key, None)
            if record is None or now - record.seen >= FORGET_AFTER:
                record = _Record(0, 0.0, now)
            record.failures += 1
            record.seen = now
            over = record.failures - self.free
            if over >= 0:
                record.blocked_until = now + min(self.max_backoff, 2.0**over)
            self._records[key] = record  # most recently seen last
            while len(self._records) > self.max_addresses:
                self._records.popitem(last=False)
            return record.failures

    def succeeded(self, remote: str) -> None:
        with self._lock:
            self._records.pop(address_key(remote), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)
