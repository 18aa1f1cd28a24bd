"""collect/sockdiag.py against this machine's kernel: sock_diag's LISTEN dump says what
/proc/net/tcp{,6} says (address, port, socket inode), and nothing /proc/net would not.

Real sockets, a real netlink dump, the real /proc/net; no timing (bench/intrusion.py has
the cost, beside /proc/net's in the same run)."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from macha_obs.collect.posture import fetch_listeners
from macha_obs.collect.sockdiag import Address, tcp_listeners
from macha_obs.models import Listener


@pytest.fixture
def sockets() -> Iterator[dict[str, socket.socket]]:
    """A loopback and a wildcard listener, a v6 one, a connection and a bound-only socket."""
    made: dict[str, socket.socket] = {}
    try:
        made["loopback"] = socket.create_server(("127.0.0.1", 0))
        made["wildcard"] = socket.create_server(("0.0.0.0", 0))  # beyond loopback: the point
        made["v6"] = socket.create_server(("::", 0), family=socket.AF_INET6)
        made["client"] = socket.create_connection(made["loopback"].getsockname())
        made["accepted"], _ = made["loopback"].accept()
        made["bound"] = socket.socket()
        made["bound"].bind(("127.0.0.1", 0))  # bound, never listening
        yield made
    finally:
        for sock in made.values():
            sock.close()


def inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def test_the_dump_names_each_listening_socket_by_its_inode(
    sockets: dict[str, socket.socket],
) -> None:
    v4 = {(str(a), port): node for a, port, node in tcp_listeners(socket.AF_INET)}
    v6 = {(str(a), port): node for a, port, node in tcp_listeners(socket.AF_INET6)}
    assert v4[("127.0.0.1", sockets["loopback"].getsockname()[1])] == inode(sockets["loopback"])
    assert v4[("0.0.0.0", sockets["wildcard"].getsockname()[1])] == inode(sockets["wildcard"])
    assert v6[("::", sockets["v6"].getsockname()[1])] == inode(sockets["v6"])
    never = {inode(sockets[name]) for name in ("client", "accepted", "bound")}
    assert not never & {*v4.values(), *v6.values()}


def test_listeners_by_sock_diag_equal_listeners_by_proc_net(
    sockets: dict[str, socket.socket],
) -> None:
    by_diag = fetch_listeners()
    by_files = fetch_listeners(diag=None)
    assert by_diag == by_files
    keys = {listener.key for listener, _ in by_diag}
    assert f"tcp 127.0.0.1:{sockets['loopback'].getsockname()[1]}" in keys
    assert f"tcp6 [::]:{sockets['v6'].getsockname()[1]}" in keys


def test_a_kernel_that_cannot_answer_falls_back_to_proc_net(
    sockets: dict[str, socket.socket],
) -> None:
    def refused(family: int) -> list[tuple[Address, int, int]]:
        raise OSError(errno.EPROTONOSUPPORT, "no inet_diag")

    assert fetch_listeners(diag=refused) == fetch_listeners(diag=None)


def test_another_namespaces_proc_is_read_from_its_files(tmp_path: Path) -> None:
    """sock_diag answers for this process's namespace only: a lab's /proc/PID is read."""
    net = tmp_path / "net"
    net.mkdir()
    (net / "tcp").write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid"
        "  timeout inode\n"
        "   0: 0100007F:1167 00000000:0000 0A 00000000:00000000 00:00000000 00000000"
        "     0        0 4242 1 0000000000000000 100 0 0 10 0\n"
    )

    def unused(family: int) -> list[tuple[Address, int, int]]:
        raise AssertionError("sock_diag asked about another namespace")

    assert fetch_listeners(tmp_path, diag=unused) == [
        (Listener(proto="tcp", address="127.0.0.1", port=0x1167), 4242)
    ]


def test_this_namespace_asks_sock_diag_and_reads_no_tcp_table(
    sockets: dict[str, socket.socket],
) -> None:
    asked: list[int] = []

    def counting(family: int) -> list[tuple[Address, int, int]]:
        asked.append(family)
        return tcp_listeners(family)

    assert fetch_listeners(diag=counting) == fetch_listeners(diag=None)
    assert asked == [socket.AF_INET, socket.AF_INET6]
