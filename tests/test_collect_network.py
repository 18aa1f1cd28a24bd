"""Network collector: the route table on literals; DNS and TCP probes against loopback."""

from __future__ import annotations

import socket
import threading

from macha_obs.collect.network import (
    NetworkCollector,
    connect,
    parse_default_route,
    resolve,
    run_probes,
)
from macha_obs.models import FindingKind

ROUTE_HEADER = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
V6_REJECT = (
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n"
)
V6_DEFAULT = (
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "fd000000000000000000000000000001 00000400 00000002 00000000 00000003 eth0\n"
)


def test_parse_default_route() -> None:
    up = ROUTE_HEADER + "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    down = ROUTE_HEADER + "eth0\t00000000\t010200C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n"
    subnet = ROUTE_HEADER + "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    assert parse_default_route(up)
    assert not parse_default_route(down)
    assert not parse_default_route(subnet)
    assert not parse_default_route(ROUTE_HEADER, V6_REJECT)
    assert parse_default_route(ROUTE_HEADER, V6_DEFAULT)


def test_probes_against_loopback() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        open_target = f"127.0.0.1:{listener.getsockname()[1]}"
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
            closed_target = f"127.0.0.1:{closed.getsockname()[1]}"
            results = run_probes([open_target, closed_target], connect, timeout=5)
    assert [r.ok for r in results] == [True, False]
    assert "ConnectionRefused" in results[1].error
    dns = run_probes(["localhost", "no-such-name.invalid"], resolve, timeout=10)
    assert dns[0].ok
    assert not dns[1].ok


def test_a_hanging_probe_is_abandoned_at_the_deadline() -> None:
    release = threading.Event()

    def hang(target: str, timeout: float) -> None:
        release.wait(30)

    try:
        [result] = run_probes(["stuck"], hang, timeout=0.2)
    finally:
        release.set()
    assert (result.ok, result.error) == (False, "timed out")


def test_collector_findings(tmp_path) -> None:
    (tmp_path / "route").write_text(ROUTE_HEADER)

    def refuse(target: str, timeout: float) -> None:
        raise ConnectionRefusedError(target)

    collector = NetworkCollector(
        dns_names=["a.example"],
        tcp_targets=["b.example:1"],
        proc_net=tmp_path,
        resolver=refuse,
        connector=refuse,
    )
    reading, findings = collector.collect()
    assert not reading.default_route  # no ipv6_route file: IPv6 off, not an error
    assert [(f.kind, f.subject) for f in findings] == [
        (FindingKind.DNS_FAILING, "a.example"),
        (FindingKind.TARGET_UNREACHABLE, "b.example:1"),
    ]
