"""Intrusion signs: authentication failures counted by service, and the host's posture
(listeners, enabled units, setuid/setgid files) against the baseline a person accepted.

Pure: which journal line is an authentication failure, and what differs from the
baseline. Usernames and addresses stay in the journal: nothing here keeps them.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The fixed label set of macha_auth_failures_total{service}: one series each, always.
AUTH_SERVICES = ("sshd", "sudo", "su")

# SYSLOG_IDENTIFIER or _COMM → service. OpenSSH 9.8 logs from sshd-session (and, since
# 10.0, sshd-auth); `su -l` logs as su.
_IDENTIFIERS = {
    "sshd": "sshd",
    "sshd-session": "sshd",
    "sshd-auth": "sshd",
    "sudo": "sudo",
    "su": "su",
}
# Lines that report a failed authentication; each entry counts at most once.
_FAILURES = {
    "sshd": re.compile(
        r"^Failed (?:password|publickey|keyboard-interactive\S*|none|hostbased) for "
        r"|^Invalid user |authentication failure|^Connection closed by authenticating user "
        r"|^Disconnected from authenticating user |maximum authentication attempts exceeded"
        r"|^error: PAM: Authentication failure",
        re.IGNORECASE,
    ),
    "sudo": re.compile(r"incorrect password attempts?|authentication failure|NOT in sudoers"),
    "su": re.compile(r"FAILED SU|authentication failure", re.IGNORECASE),
}


def auth_failure_service(identifier: str, comm: str, message: str) -> str | None:
    """The service (one of AUTH_SERVICES) whose failed authentication this journal line
    reports, or None."""
    service = _IDENTIFIERS.get(identifier) or _IDENTIFIERS.get(comm)
    if service is None or not _FAILURES[service].search(message):
        return None
    return service


Proto = Literal["tcp", "tcp6", "udp", "udp6"]


class Listener(BaseModel):
    """A listening socket: what it is bound to, and the unit owning it where known."""

    model_config = ConfigDict(frozen=True)

    proto: Proto
    address: str = Field(max_length=64)
    port: int = Field(ge=0, le=65535)
    unit: str = Field("", max_length=255)  # "" when not known (not root, or gone)

    @property
    def key(self) -> str:
        """What the baseline compares: the unit owning a socket may change, the socket not."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.proto} {host}:{self.port}"


BASELINE_VERSION = 1
# bounds on what a baseline holds (and so on the file's size)
MAX_LISTENERS = 4096
MAX_UNITS = 20_000
MAX_SETID_FILES = 20_000


class PostureBaseline(BaseModel):
    """What a person accepted with `macha-obs posture accept`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1  # BASELINE_VERSION
    accepted_at: float = Field(ge=0)
    accepted_by: str = Field("", max_length=64)
    listeners: list[Listener] = Field(default_factory=list, max_length=MAX_LISTENERS)
    # None: the bus did not answer at accept time, so enabled units are not compared
    enabled_units: list[str] | None = Field(None, max_length=MAX_UNITS)
    setid_files: list[str] = Field(default_factory=list, max_length=MAX_SETID_FILES)


class PostureNow(BaseModel):
    """What the host shows now, in the baseline's terms."""

    model_config = ConfigDict(frozen=True)

    listeners: list[Listener] = Field(default_factory=list)
    enabled_units: list[str] | None = None  # None: the bus did not answer
    units_error: str = Field("", max_length=500)
    setid_files: list[str] = Field(default_factory=list)


class PostureDiff(BaseModel):
    model_config = ConfigDict(frozen=True)

    listeners: list[Listener] = Field(default_factory=list)
    enabled_units: list[str] | None = None  # None: not compared (unknown now or then)
    setid_files: list[str] = Field(default_factory=list)


def posture_diff(baseline: PostureBaseline, now: PostureNow) -> PostureDiff:
    """What is there now and was not accepted (what went away is no intrusion sign)."""
    accepted = {listener.key for listener in baseline.listeners}
    units = None
    if baseline.enabled_units is not None and now.enabled_units is not None:
        units = sorted(set(now.enabled_units) - set(baseline.enabled_units))
    return PostureDiff(
        listeners=sorted((x for x in now.listeners if x.key not in accepted), key=lambda x: x.key),
        enabled_units=units,
        setid_files=sorted(set(now.setid_files) - set(baseline.setid_files)),
    )


class IntrusionReading(BaseModel):
    """Authentication failures (counters since the sidecar started) and the posture
    compared with the accepted baseline (None fields: no baseline, or unreadable)."""

    model_config = ConfigDict(frozen=True)

    auth_failures_total: dict[str, int] = Field(default_factory=dict)  # per AUTH_SERVICES
    auth_failures_window: dict[str, int] = Field(default_factory=dict)  # within the window
    auth_window_seconds: float = Field(0.0, ge=0)
    baseline_at: float | None = None  # when the baseline was accepted; None: none
    baseline_error: str = Field("", max_length=500)  # why the baseline could not be read
    listeners: int = Field(0, ge=0)  # listening sockets seen now
    units_error: str = Field("", max_length=500)  # why the enabled units are unknown
    unaccepted_listeners: list[Listener] | None = None
    new_enabled_units: list[str] | None = None
    new_setid_files: list[str] | None = None
