"""Network: a default route, DNS resolution of configured names, TCP reachability of
configured targets. Every probe runs in its own daemon thread under one deadline:
getaddrinfo has no timeout of its own, and one slow name must not delay the others."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from macha_obs.config import split_host_port
from macha_obs.models import Finding, FindingKind, NetworkReading, ProbeResult

Check = Callable[[str, float], None]  # returns on success, raises on failure


def parse_default_route(ipv4: str, ipv6: str = "") -> bool:
    """True when /proc/net/route or /proc/net/ipv6_route holds an up default route."""
    for line in ipv4.splitlines()[1:]:
        fields = line.split()
        # Destination 0.0.0.0 with RTF_UP (0x1) set
        if len(fields) >= 4 and fields[1] == "00000000" and int(fields[3], 16) & 0x1:
            return True
    for line in ipv6.splitlines():
        fields = line.split()
        # ::/0, up (0x1) and not a reject route (0x200, what the kernel lists on "lo")
        if len(fields) >= 10 and fields[0] == "0" * 32 and fields[1] == "00":
            flags = int(fields[8], 16)
            if flags & 0x1 and not flags & 0x200:
                return True
    return False


def resolve(name: str, timeout: float) -> None:
    del timeout  # bounded by the caller's thread deadline: getaddrinfo takes none
    if not socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP):
        raise OSError(f"{name}: no addresses")


def connect(target: str, timeout: float) -> None:
    host, port = split_host_port(target)
    with socket.create_connection((host, port), timeout=timeout):
        pass


def run_probes(
    targets: Sequence[str],
    check: Check,
    timeout: float,
    monotonic: Callable[[], float] = time.monotonic,
) -> list[ProbeResult]:
    """Run `check` on every target at once; a target not done by the deadline failed."""
    outcome: dict[str, ProbeResult] = {}

    def work(target: str) -> None:
        started = monotonic()
        try:
            check(target, timeout)
            outcome[target] = ProbeResult(
                target=target, ok=True, duration_seconds=monotonic() - started
            )
        except (OSError, ValueError) as exc:
            outcome[target] = ProbeResult(
                target=target,
                ok=False,
                duration_seconds=monotonic() - started,
                error=f"{type(exc).__name__}: {exc}"[:300],
            )

    threads = [
        threading.Thread(target=work, args=(t,), name="macha-probe", daemon=True) for t in targets
    ]
    for thread in threads:
        thread.start()
    deadline = monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - monotonic()))
    return [
        outcome.get(t)
        or ProbeResult(target=t, ok=False, duration_seconds=timeout, error="timed out")
        for t in targets
    ]


def summarize_network(reading: NetworkReading) -> list[Finding]:
    checks = (
        (FindingKind.DNS_FAILING, "cannot resolve", reading.dns),
        (FindingKind.TARGET_UNREACHABLE, "cannot connect to", reading.tcp),
    )
    return [
        Finding(
            kind=kind,
            subject=probe.target,
            summary=f"{verb} {probe.target}: {probe.error}",
            details={"error": probe.error},
        )
        for kind, verb, probes in checks
        for probe in probes
        if not probe.ok
    ]


class NetworkCollector:
    name = "network"

    def __init__(
        self,
        *,
        dns_names: Sequence[str] = (),
        tcp_targets: Sequence[str] = (),
        timeout: float = 2.0,
        proc_net: Path = Path("/proc/net"),
        resolver: Check = resolve,
        connector: Check = connect,
    ) -> None:
        self.dns_names = list(dns_names)
        self.tcp_targets = list(tcp_targets)
        self.timeout = timeout
        self.proc_net = proc_net
        self.resolver = resolver
        self.connector = connector

    def _read(self, name: str) -> str:
        try:
            return (self.proc_net / name).read_text()
        except FileNotFoundError:  # no IPv6 in this kernel
            return ""

    def collect(self) -> tuple[NetworkReading, list[Finding]]:
        reading = NetworkReading(
            default_route=parse_default_route(self._read("route"), self._read("ipv6_route")),
            dns=run_probes(self.dns_names, self.resolver, self.timeout),
            tcp=run_probes(self.tcp_targets, self.connector, self.timeout),
        )
        return reading, summarize_network(reading)
