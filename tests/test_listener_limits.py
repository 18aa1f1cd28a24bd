"""The listener's bounds on a real port: held and slow connections cost no thread, /healthz
answers throughout, saturation is a quick 503 with Retry-After, a trickle is cut off by
the request's deadline, and under a real task limit (a pids cgroup, what systemd's
TasksMax is) 300 held connections never make the server ask for a task it cannot have.

The raw-socket helpers here are shared with tests/test_listener_fuzz.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from macha_obs.intake.incidents import IncidentStore
from macha_obs.intake.webhook import HostMatcher, ReceiverApp
from macha_obs.metrics import ListenerCollector, build_registry
from macha_obs.server import Limits, Listener, ListenerStats, make_app, shutdown, start_server
from macha_obs.store import Store
from tests.harness.labsd import wait_until
from tests.harness.real import unavailable
from tests.harness.receiver_support import alert, payload

TOKEN = "t"
REPO = Path(__file__).resolve().parents[1]
_STATUS = re.compile(rb"HTTP/1\.[01] ([0-9]{3}) ")


# ---------------------------------------------------------------- shared helpers


def receiver_for(store: Store) -> ReceiverApp:
    """The real webhook, with bounds small enough for fuzzed bodies to reach them."""
    return ReceiverApp(
        IncidentStore(store),
        token=TOKEN,
        max_body_bytes=8192,
        hosts=HostMatcher("web1"),
        max_alerts=5,
        max_labels=12,
        max_label_chars=200,
    )


@contextlib.contextmanager
def serve(
    state: Path, limits: Limits | None = None, alerts_app: Any = None
) -> Iterator[tuple[Listener, int]]:
    """The real make_app and listener on port 0, with the real receiver on a real Store."""
    stats = ListenerStats()  # made first, so /metrics exports it, as `serve` does
    with Store(state) as store:
        registry = build_registry(lambda: None, extra=[ListenerCollector(stats)])
        app = make_app(registry, alerts_app=alerts_app or receiver_for(store))
        server, thread = start_server("127.0.0.1", 0, app, limits=limits, stats=stats)
        try:
            yield server, server.server_port
        finally:
            shutdown(server, thread)
            assert not thread.is_alive()


def request_bytes(
    method: str, path: str, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", *(f"{k}: {v}" for k, v in headers)]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def alert_request(body: object, token: str = TOKEN) -> bytes:
    data = json.dumps(body).encode()
    return request_bytes("POST", "/alerts", data, [("Authorization", f"Bearer {token}")])


def read_all(sock: socket.socket) -> bytes:
    out = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            out += chunk
    return bytes(out)


def exchange(port: int, data: bytes, *, timeout: float = 30.0) -> bytes:
    """Send a request as raw bytes, half-close, and read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)  # the server may answer (and stop reading) early
            sock.shutdown(socket.SHUT_WR)
        return read_all(sock)


def status_of(response: bytes) -> int | None:
    """The status code of a raw HTTP response; None when the server answered nothing."""
    match = _STATUS.match(response)
    return int(match.group(1)) if match else None


def header_of(response: bytes, name: str) -> str | None:
    head = response.partition(b"\r\n\r\n")[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def healthz(port: int) -> int | None:
    return status_of(exchange(port, request_bytes("GET", "/healthz")))


@pytest.fixture
def many_files() -> Iterator[None]:
    """600 sockets (both ends of 300 connections) in this one process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def hold(port: int, n: int, first: bytes = b"") -> list[socket.socket]:
    """n connections that sent `first` (maybe nothing) and then go quiet."""
    socks = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        if first:
            sock.sendall(first)
        socks.append(sock)
    return socks


def server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("macha-http")]


# ---------------------------------------------------------------- held and slow connections


def test_300_held_connections_cost_no_thread_and_healthz_answers(tmp_path: Path, many_files):
    """The finding: 300 idle connections under TasksMax=256 made /healthz unreachable."""
    limits = Limits(request_timeout=120.0)  # held for the whole test, however slow the host
    with serve(tmp_path / "state", limits) as (server, port):
        held = (
            hold(port, 150)  # connected, silent
            + hold(port, 100, b"POST /alerts HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # a slow head
            + hold(
                port, 50, b"POST /alerts HTTP/1.1\r\nContent-Length: 2000\r\n\r\n{"
            )  # a slow body
        )
        try:
            assert wait_until(lambda: server.receiving() == 300), server.receiving()
            answers = []
            for _ in range(20):
                answers.append(healthz(port))
                assert len(server_threads()) <= 1 + limits.workers
            assert answers == [200] * 20
            accepted = exchange(port, alert_request(payload(alert(unit="a.service"))))
            assert status_of(accepted) == 200, accepted
            assert b'"accepted"' in accepted
            assert status_of(exchange(port, request_bytes("GET", "/metrics"))) == 200
            # still held, each by a socket and a buffer in one thread, none by a worker
            assert server.receiving() == 300
            workers = [t for t in server_threads() if t.name == "macha-http-worker"]
            assert len(workers) <= 2, len(workers)  # requests ran one at a time
        finally:
            for sock in held:
                sock.close()
        assert server.stats.snapshot()["saturated"] == 0


def test_the_listeners_own_decisions_are_on_its_metrics(tmp_path: Path) -> None:
    """Refusals the application never sees are counted by outcome and exported, every
    outcome at 0 until it happens; the scrape's own request counts as served."""
    with serve(tmp_path / "state") as (_, port):
        bad_length = b"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n"
        chunked = b"POST /alerts HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        assert status_of(exchange(port, bad_length)) == 400
        assert status_of(exchange(port, chunked)) == 411
        assert status_of(exchange(port, chunked)) == 411
        scrape = exchange(port, request_bytes("GET", "/metrics"))
    assert status_of(scrape) == 200
    family = "macha_listener_connections_total"
    for result, count in (("length", 1), ("chunked", 2), ("served", 1), ("saturated", 0)):
        assert f'{family}{{result="{result}"}} {count}.0\n'.encode() in scrape, result


def test_a_trickle_is_cut_off_by_the_deadline_not_per_read(tmp_path: Path) -> None:
    """A slowloris sends a byte far more often than any per-read timeout: the deadline for
    the whole request still ends it, with a 408."""
    with serve(tmp_path / "state", Limits(request_timeout=1.0)) as (server, port):
        head = b"POST /alerts HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 10_000
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sent = 0
            # one byte, then wait (20 ms) for an answer that would stop the trickle
            while sent < len(head) and not select.select([sock], [], [], 0.02)[0]:
                sock.sendall(head[sent : sent + 1])
                sent += 1
            answer = read_all(sock)
        assert status_of(answer) == 408, answer
        assert sent < len(head)  # cut off mid-head, not finished
        assert server.stats.snapshot()["timed_out"] == 1
        assert healthz(port) == 200


def test_a_body_that_stops_short_is_a_4xx(tmp_path: Path) -> None:
    """Short bodies, buffered or streamed past the prebuffer to a worker: 408 or 400."""
    limits = Limits(request_timeout=1.0, prebuffer_bytes=1024)
    with serve(tmp_path / "state", limits) as (_, port):
        for length in (500, 5000):  # below and above the prebuffer
            head = request_bytes("POST", "/alerts", b"", [("Authorization", f"Bearer {TOKEN}")])
            head = head.replace(b"Content-Length: 0", f"Content-Length: {length}".encode())
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(head + b"x" * (length - 10))
                answer = read_all(sock)  # no half-close: the deadline has to end it
            assert status_of(answer) in (400, 408), (length, answer)
        assert healthz(port) == 200


def test_bodies_still_arriving_hold_half_the_workers_at_most(tmp_path: Path) -> None:
    limits = Limits(workers=4, prebuffer_bytes=1024, request_timeout=120.0)
    with serve(tmp_path / "state", limits) as (server, port):
        head = request_bytes("POST", "/alerts", b"", [("Authorization", f"Bearer {TOKEN}")])
        head = head.replace(b"Content-Length: 0", b"Content-Length: 5000")
        streaming = hold(port, 2, head + b" " * 2000)  # past the prebuffer: each on a worker
        assert wait_until(lambda: server.stats.snapshot()["served"] == 2)
        third = exchange(port, head + b" " * 2000)
        assert status_of(third) == 503, third
        assert header_of(third, "Retry-After") == str(limits.retry_after)
        assert healthz(port) == 200  # the other half of the workers answers
        for sock in streaming:
            sock.sendall(b" " * 3000)  # the rest of a body that is no JSON: 400
            sock.shutdown(socket.SHUT_WR)
            assert status_of(read_all(sock)) == 400
            sock.close()


def test_saturated_workers_mean_a_quick_503_then_recovery(tmp_path: Path) -> None:
    """Every worker busy and as many requests waiting: the next one is told to retry."""
    release = threading.Event()

    def stuck(environ: Any, start_response: Any) -> list[bytes]:
        release.wait(60)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    limits = Limits(workers=2)
    with serve(tmp_path / "state", limits, alerts_app=stuck) as (server, port):
        waiting = hold(port, 4, request_bytes("POST", "/alerts", b"{}"))
        assert wait_until(lambda: server.stats.snapshot()["served"] == 4)
        busy = exchange(port, request_bytes("GET", "/healthz"))
        assert status_of(busy) == 503, busy
        assert header_of(busy, "Retry-After") == "5"
        assert len(server_threads()) == 1 + limits.workers
        release.set()
        assert [status_of(read_all(sock)) for sock in waiting] == [200] * 4
        for sock in waiting:
            sock.close()
        assert healthz(port) == 200
        assert server.stats.snapshot()["saturated"] == 1


def test_too_many_connections_drop_the_oldest_not_the_newest(tmp_path: Path) -> None:
    with serve(tmp_path / "state", Limits(connections=4)) as (server, port):
        held = hold(port, 4)
        assert wait_until(lambda: server.receiving() == 4)
        assert healthz(port) == 200  # room made by answering the oldest held one
        oldest = read_all(held[0])
        assert status_of(oldest) == 503, oldest
        assert header_of(oldest, "Retry-After") == "5"
        assert server.stats.snapshot()["evicted"] == 1
        for sock in held:
            sock.close()


def test_one_request_per_connection_so_pipelining_pins_nothing(tmp_path: Path) -> None:
    with serve(tmp_path / "state") as (_, port):
        two = request_bytes("GET", "/healthz") + request_bytes("GET", "/metrics")
        answer = exchange(port, two)
        assert status_of(answer) == 200
        assert answer.count(b"HTTP/1.") == 1  # the second is not served on this connection
        keep_alive = request_bytes("GET", "/healthz", headers=[("Connection", "keep-alive")])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(keep_alive)
            assert status_of(read_all(sock)) == 200  # read_all returns: the server closed


# ---------------------------------------------------------------- under a real task limit

_CHILD = """
import sys
from pathlib import Path
from macha_obs.server import Limits, make_app, shutdown, start_server
from macha_obs.metrics import build_registry
from macha_obs.store import Store
from tests.test_listener_limits import receiver_for

state, timeout = Path(sys.argv[1]), float(sys.argv[2])
sys.stdin.readline()  # "go": the parent has put this process under its task limit
with Store(state) as store:
    app = make_app(build_registry(lambda: None), alerts_app=receiver_for(store))
    server, thread = start_server("127.0.0.1", 0, app, limits=Limits(request_timeout=timeout))
    print(server.server_port, flush=True)
    sys.stdin.read()  # until the parent closes stdin
    shutdown(server, thread)
"""


@contextlib.contextmanager
def child_server(
    state: Path, *, request_timeout: float = 10.0, cgroup: Path | None = None
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """The listener with the real receiver in a process of its own (its RSS and its tasks
    are then the server's alone), optionally moved into `cgroup` before it starts."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(state), str(request_timeout)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(child.pid))
        child.stdin.write("go\n")
        child.stdin.flush()
        yield child, int(child.stdout.readline())
        child.stdin.close()
        assert child.wait(30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()


def _pids_cgroup_parent() -> Path | None:
    """Where a pids-limited cgroup can be made: cgroup v1's pids hierarchy, or a cgroup2
    root with the pids controller (enabled for its children here if need be)."""
    v1 = Path("/sys/fs/cgroup/pids")
    if (v1 / "cgroup.procs").exists() and os.access(v1, os.W_OK):
        return v1
    for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        controllers = root / "cgroup.controllers"
        if controllers.exists() and "pids" in controllers.read_text().split():
            with contextlib.suppress(OSError):
                (root / "cgroup.subtree_control").write_text("+pids")
            if "pids" in (root / "cgroup.subtree_control").read_text().split():
                return root
    return None


@pytest.fixture
def task_limited() -> Iterator[Path]:
    parent = _pids_cgroup_parent()
    if parent is None or os.geteuid() != 0:
        unavailable("needs root and a pids cgroup controller (v1 or v2) to set a task limit")
    cgroup = parent / f"macha-listener-test-{os.getpid()}"
    cgroup.mkdir()
    try:
        yield cgroup
    finally:
        with contextlib.suppress(OSError):
            for pid in (cgroup / "cgroup.procs").read_text().split():
                os.kill(int(pid), 9)
        assert wait_until(lambda: not (cgroup / "cgroup.procs").read_text().strip(), 10)
        cgroup.rmdir()


def test_under_a_task_limit_300_held_connections_leave_healthz_answering(
    tmp_path: Path, task_limited: Path, many_files
) -> None:
    """TasksMax in small: 48 tasks (the default pool is 32 workers and one accepting
    thread). A thread per connection would ask for 300 and be refused."""
    (task_limited / "pids.max").write_text("48")
    with child_server(tmp_path / "state", request_timeout=120.0, cgroup=task_limited) as (
        _,
        port,
    ):
        held = hold(port, 200) + hold(port, 100, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            answers = [healthz(port) for _ in range(20)]
            accepted = exchange(port, alert_request(payload(alert(unit="a.service"))))
            tasks = int((task_limited / "pids.current").read_text())
            refused = (task_limited / "pids.events").read_text().split()
        finally:
            for sock in held:
                sock.close()
    assert answers == [200] * 20
    assert status_of(accepted) == 200, accepted
    assert tasks <= 48
    assert refused[:2] == ["max", "0"]  # no task was ever refused by the limit
