"""Processes and sockets without `ps` or `ss`: pure formatting on literals, then the real
/proc of this host through psutil (inside the rendered sandbox: tests/test_install.py)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import psutil
import pytest

from macha_obs.execute.diagnostics import (
    Diagnostics,
    ProcessRow,
    SocketRow,
    fetch_processes,
    fetch_sockets,
    format_processes,
    format_sockets,
)
from macha_obs.models import ListeningSockets, TopProcesses
from tests.test_execute_argv import Recorder, StubBus

ROWS = [
    ProcessRow(1, "root", 0.1, 0.2, 9000, "systemd"),
    ProcessRow(700, "postgres", 45.0, 1.0, 50_000, "postgres"),
    ProcessRow(800, "alice", 3.0, 30.0, 4_000_000, "firefox"),
    ProcessRow(900, "bob", 0.0, 0.0, 10, "evil\nFAKE row"),
]


def test_top_processes_lists_the_busiest_and_the_largest() -> None:
    out = format_processes(ROWS, 2).splitlines()
    assert out[0] == "# by CPU"
    assert out[1].split() == ["PID", "USER", "%CPU", "%MEM", "RSS", "COMMAND"]
    assert out[2].split() == ["700", "postgres", "45.0", "1.0", "50000", "postgres"]
    assert out[3].split()[:2] == ["800", "alice"]
    assert out[5] == "# by memory (RSS, KiB)"  # what the memory runbook asks
    assert [line.split()[0] for line in out[7:9]] == ["800", "700"]


def test_a_process_name_cannot_forge_a_row() -> None:
    out = format_processes(ROWS, 4)
    assert "evil?FAKE row" in out
    assert "\nFAKE" not in out


def test_listening_sockets_show_proto_state_address_and_port() -> None:
    rows = [
        SocketRow("udp", "0.0.0.0", 53, "UNCONN"),
        SocketRow("tcp", "::1", 9847, "LISTEN"),
        SocketRow("tcp", "127.0.0.1", 22, "LISTEN"),
        SocketRow("tcp", "127.0.0.1", 22, "LISTEN"),  # v4 and v6 seen twice: once
    ]
    assert format_sockets(rows).splitlines() == [
        "tcp  LISTEN  127.0.0.1:22",
        "tcp  LISTEN  [::1]:9847",
        "udp  UNCONN  0.0.0.0:53",
    ]
    assert format_sockets([]) == "none"


def test_a_proc_refusal_is_a_failed_diagnostic_not_a_crash() -> None:
    def refused() -> list[ProcessRow]:
        raise psutil.AccessDenied(1)

    done = Diagnostics(StubBus(), Recorder(), processes=refused).run(TopProcesses())
    assert not done.ok
    assert "top_processes" in done.detail


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_real_proc_gives_this_process_and_its_listener(listener: int) -> None:
    """No command runs: the rows come from this host's /proc."""
    me = next(r for r in fetch_processes() if r.pid == os.getpid())
    assert me.rss_kib > 1000
    assert me.user == psutil.Process().username()
    assert SocketRow("tcp", "127.0.0.1", listener, "LISTEN") in fetch_sockets()
    never = Recorder()
    diags = Diagnostics(StubBus(), never)
    assert f"127.0.0.1:{listener}" in diags.run(ListeningSockets()).output
    top = diags.run(TopProcesses(count=50))
    assert top.ok
    assert top.output.count("COMMAND") == 2
    assert never.calls == []
