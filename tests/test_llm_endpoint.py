"""The model endpoint is trusted only when it is what the user configured.

A real listener on a free loopback port, run as `nobody` (the tests run as root, CI too),
stands in for a local user who binds Ollama's port while Ollama is down: the client must
refuse it before writing a byte, the analysis must fall back to the runbooks and say why,
and the squatter must have received nothing. The same listener run by the expected user
is accepted. The API key is checked by a real server that wants `Authorization: Bearer`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter

from macha_obs.agent.analyze import Analyzer
from macha_obs.agent.endpoint import (
    ApiKeyFileUnsafe,
    EndpointGuard,
    EndpointUntrusted,
    TcpSocket,
    load_api_key,
    parse_tcp_table,
)
from macha_obs.agent.endpoint_http import GuardedAdapter
from macha_obs.agent.llm import LlmMetrics, OllamaChat, OpenAIChat, client_from_config
from macha_obs.agent.report import analyze_payload
from macha_obs.config import AnalysisMode
from macha_obs.models import DecisionSource
from macha_obs.policy.judge import PolicyContext, judge
from tests.harness.real import unavailable
from tests.harness.receiver_support import alert, payload
from tests.harness.stack import poll

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
MODEL = "llama3.1:8b"
NOBODY = 65534
SECRET = "hunter2squatted"
DECISION = {
    "assessment": "failing",
    "severity": "warning",
    "summary": "app.service failed",
    "root_cause": "",
    "confidence": 0.5,
    "proposals": [],
}

# A model server in one file of stdlib: speaks enough of Ollama's and OpenAI's APIs,
# counts every byte it receives per connection and prints what it saw as JSON lines.
# argv: host, the reply content, the API key it demands ("" for none).
SERVER = r"""
import json, socket, sys, threading
host, reply, key = sys.argv[1], sys.argv[2], sys.argv[3]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
srv = socket.socket(family)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if family == socket.AF_INET6:
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
srv.bind((host, 0))
srv.listen(16)
lock = threading.Lock()
def say(**event):
    with lock:
        print(json.dumps(event), flush=True)
say(event="listening", port=srv.getsockname()[1])
def answer(method, path):
    if path == "/api/tags":
        return {"models": [{"name": "llama3.1:8b", "model": "llama3.1:8b"}]}
    if path == "/v1/models":
        return {"data": [{"id": "llama3.1:8b"}]}
    if path == "/api/chat":
        return {"message": {"role": "assistant", "content": reply}, "done": True,
                "done_reason": "stop", "prompt_eval_count": 10, "eval_count": 5}
    return {"choices": [{"message": {"content": reply}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
def serve(conn):
    received, buf = 0, b""
    conn.settimeout(10)
    def more():
        nonlocal received, buf
        chunk = conn.recv(65536)
        if not chunk:
            raise EOFError
        received += len(chunk)
        buf += chunk
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                more()
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            headers = {k.strip().lower(): v.strip()
                       for k, v in (x.split(":", 1) for x in lines[1:] if ":" in x)}
            length = int(headers.get("content-length", "0"))
            while len(buf) < length:
                more()
            body, buf = buf[:length], buf[length:]
            auth = headers.get("authorization", "")
            say(event="request", method=method, path=path, authorization=auth,
                body=body.decode("utf-8", "replace"))
            status, obj = "200 OK", answer(method, path)
            if key and auth != "Bearer " + key:
                status, obj = "401 Unauthorized", {"error": {"message": "invalid api key"}}
            data = json.dumps(obj).encode()
            conn.sendall(("HTTP/1.1 %s\r\nContent-Type: application/json\r\n"
                          "Content-Length: %d\r\n\r\n" % (status, len(data))).encode() + data)
    except (EOFError, OSError, ValueError):
        pass
    finally:
        conn.close()
        say(event="closed", bytes=received)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


@dataclass
class ModelServer:
    """The SERVER script in a process of its own, as root or as nobody."""

    proc: subprocess.Popen[str]
    host: str
    port: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def requests(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "request"]

    def wait_requests(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        """The requests seen, once there are `count` (the reader runs behind the server)."""
        poll(lambda: len(self.requests()) >= count, timeout, interval=0.02)
        return self.requests()

    def closed(self) -> list[int]:
        return [e["bytes"] for e in self.events if e["event"] == "closed"]

    def wait_closed(self, count: int = 1, timeout: float = 10) -> list[int]:
        """Bytes received by each of the first `count` connections, once they closed."""
        if not poll(lambda: len(self.closed()) >= count, timeout, interval=0.02):
            pytest.fail(
                f"the model server saw fewer than {count} connection(s) close: {self.events}"
            )
        return self.closed()


def _interpreter_for(uid: int) -> str:
    """A Python that `uid` may run (the venv's may live under root's 0700 home)."""
    for candidate in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if not candidate:
            continue
        try:
            done = subprocess.run(
                [candidate, "-I", "-S", "-c", "import http.server"],
                user=uid, group=uid, extra_groups=[], cwd="/", capture_output=True, check=False,
            )  # fmt: skip
        except OSError:  # not even executable for uid
            continue
        if done.returncode == 0:
            return candidate
    return unavailable(f"no Python interpreter that uid {uid} may run")


def _start(host: str, uid: int, reply: str, key: str = "") -> Generator[ModelServer, None, None]:
    if os.geteuid() != 0:
        unavailable("starting a listener as another user needs root (CI runs as root)")
    argv = [_interpreter_for(uid), "-I", "-S", "-c", SERVER, host, reply, key]
    ids: dict[str, Any] = {"user": uid, "group": uid, "extra_groups": []} if uid else {}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd="/", **ids)
    server = ModelServer(proc, host)
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline() or '{"event": "died"}')
    assert first["event"] == "listening", first
    server.port = first["port"]
    reader = threading.Thread(
        target=lambda: server.events.extend(json.loads(x) for x in proc.stdout or ()),
        daemon=True,
    )
    reader.start()
    try:
        yield server
    finally:
        _stop(proc, reader)


@pytest.fixture
def squatter() -> Iterator[ModelServer]:
    """A stranger's listener on 127.0.0.1: nobody, answering like Ollama."""
    yield from _start("127.0.0.1", NOBODY, json.dumps(DECISION))


@pytest.fixture
def dual_stack_squatter() -> Iterator[ModelServer]:
    """nobody on [::], which takes IPv4 connections too (as ::ffff:127.0.0.1)."""
    yield from _start("::", NOBODY, json.dumps(DECISION))


@pytest.fixture
def own_server() -> Iterator[ModelServer]:
    """The same listener run by the expected user (root, as the tests run)."""
    yield from _start("127.0.0.1", 0, json.dumps(DECISION))


def _analyze(client: Any, make_config: Any) -> Any:
    cfg = make_config()
    analyzer = Analyzer(
        mode=AnalysisMode.LLM_FIRST, client=client, hostname="web1", now=lambda: NOW
    )
    report = analyze_payload(
        json.dumps(payload(alert(unit="app.service"))),
        analyzer=analyzer,
        judge=lambda action, _inc: judge(action, PolicyContext(config=cfg, now=NOW)),
        journals={"app.service": [f"app[1]: login as root with password={SECRET} failed"]},
    )
    return report.decision


# ------------------------------------------------------------------ the squatter


def test_a_squatter_gets_no_prompt_and_the_decision_says_why(
    squatter: ModelServer, make_config: Any
) -> None:
    metrics = LlmMetrics()
    cfg = make_config(ollama_url=squatter.url, model=MODEL, llm_endpoint_user="root")
    client = client_from_config(cfg, metrics=metrics)
    decision = _analyze(client, make_config)
    assert decision.source is DecisionSource.RUNBOOKS  # fell back (invariant 8)
    assert decision.assessment.value == "unknown"
    assert "EndpointUntrusted" in decision.error
    assert f"127.0.0.1:{squatter.port} is served by uid {NOBODY} (nobody), not root" in (
        decision.error
    )
    with pytest.raises(EndpointUntrusted, match="served by uid 65534"):
        client.check()
    assert squatter.wait_closed(2) == [0, 0]  # it was reached, twice, and got nothing
    assert squatter.requests() == []
    assert metrics.requests == {"untrusted": 1}  # not retried: refused at once


def test_a_dual_stack_squatter_is_seen_through_ipv4(
    dual_stack_squatter: ModelServer, make_config: Any
) -> None:
    for host in ("127.0.0.1", "[::1]", "localhost"):
        url = f"http://{host}:{dual_stack_squatter.port}"
        client = client_from_config(make_config(ollama_url=url, llm_endpoint_user="root"))
        with pytest.raises(EndpointUntrusted, match=r"\(nobody\), not root"):
            client.chat([{"role": "user", "content": SECRET}], {})
    assert dual_stack_squatter.wait_closed(3) == [0, 0, 0]
    assert dual_stack_squatter.requests() == []


def test_the_expected_user_is_trusted(own_server: ModelServer, make_config: Any) -> None:
    cfg = make_config(ollama_url=own_server.url, model=MODEL, llm_endpoint_user="root")
    decision = _analyze(client_from_config(cfg), make_config)
    assert decision.source is DecisionSource.LLM, decision.error
    (chat,) = [r for r in own_server.wait_requests(1) if r["path"] == "/api/chat"]
    assert "app.service" in chat["body"]
    assert SECRET not in chat["body"]  # redacted on the way, as always


def test_the_check_is_off_by_default(squatter: ModelServer, make_config: Any) -> None:
    client = client_from_config(make_config(ollama_url=squatter.url, model=MODEL))
    assert not any(isinstance(a, GuardedAdapter) for a in client_session(client).adapters.values())
    client.check()  # "" skips the check: the user did not ask for it
    assert [r["path"] for r in squatter.wait_requests(1)] == ["/api/tags"]


def test_a_squatter_appearing_later_gets_nothing(make_config: Any) -> None:
    """Every new connection is checked, not only the first one of a client."""
    servers = _start("127.0.0.1", 0, json.dumps(DECISION))
    own = next(servers)
    cfg = make_config(ollama_url=own.url, model=MODEL, llm_endpoint_user="root")
    client = client_from_config(cfg)
    client.check()
    port = own.port
    servers.close()  # the model server goes away; its port is free
    strangers = _start_on(port)
    squat = next(strangers)
    try:
        with pytest.raises(EndpointUntrusted, match=r"\(nobody\), not root"):
            client.chat([{"role": "user", "content": SECRET}], {})
        assert squat.wait_closed(1) == [0]
        assert squat.requests() == []
    finally:
        strangers.close()


SQUAT_PORT = r"""
import json, socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(16)
print(json.dumps({"event": "listening", "port": srv.getsockname()[1]}), flush=True)
while True:
    conn, _ = srv.accept()
    conn.settimeout(10)
    n = 0
    try:
        while chunk := conn.recv(65536):
            n += len(chunk)
    except OSError:
        pass
    conn.close()
    print(json.dumps({"event": "closed", "bytes": n}), flush=True)
"""


def _start_on(port: int) -> Generator[ModelServer, None, None]:
    """nobody binding a given port (the one the model server just left)."""
    argv = [_interpreter_for(NOBODY), "-I", "-S", "-c", SQUAT_PORT, str(port)]
    started: list[subprocess.Popen[str]] = []

    def bound() -> bool:  # the port may linger a moment after the server's exit
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, text=True, cwd="/", user=NOBODY, group=NOBODY,
            extra_groups=[], stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert proc.stdout is not None
        if proc.stdout.readline():  # the squatter says when it listens
            started.append(proc)
            return True
        proc.wait(5)
        proc.stdout.close()
        return False

    if not poll(bound, 10):
        pytest.fail(f"nobody could not bind 127.0.0.1:{port}")
    proc = started[0]
    server = ModelServer(proc, "127.0.0.1", port)
    reader = threading.Thread(
        target=lambda: server.events.extend(json.loads(x) for x in proc.stdout or ()),
        daemon=True,
    )
    reader.start()
    try:
        yield server
    finally:
        _stop(proc, reader)


def _stop(proc: subprocess.Popen[str], reader: threading.Thread) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    reader.join(5)
    if proc.stdout is not None:
        proc.stdout.close()


def client_session(client: Any) -> requests.Session:
    session: requests.Session = client.session
    return session


# ------------------------------------------------------------------ the socket table


def test_parse_tcp_table_on_literals() -> None:
    v4 = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
        "timeout inode\n"
        "   0: 0100007F:2CAA 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534 "
        "       0 41234 1 0000000000000000 100 0 0 10 0\n"
        "   1: 0100007F:2CAA 0100007F:D431 01 00000000:00000000 00:00000000 00000000 65534 "
        "       0 41235 1 0000000000000000 20 4 30 10 -1\n"
        "   2: garbage\n"
    )
    rows = parse_tcp_table(v4)
    loopback = ipaddress.ip_address("127.0.0.1")
    assert rows == [
        TcpSocket((loopback, 11434), (ipaddress.ip_address("0.0.0.0"), 0), 0x0A, 65534),
        TcpSocket((loopback, 11434), (loopback, 54321), 0x01, 65534),
    ]
    v6 = (
        "  sl  local_address                         remote_address                        st "
        "tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0000000000000000FFFF00000100007F:2CAA 0000000000000000FFFF00000100007F:D431 01 "
        "00000000:00000000 00:00000000 00000000  1001        0 5 1 0 20 4 30 10 -1\n"
        "   1: 00000000000000000000000001000000:2CAA 00000000000000000000000000000000:0000 0A "
        "00000000:00000000 00:00000000 00000000     0        0 6 1 0 100 0 0 10 0\n"
    )
    mapped, v6_loopback = parse_tcp_table(v6)
    assert mapped.local == (loopback, 11434)  # a dual-stack socket's IPv4 peer, as IPv4
    assert mapped.uid == 1001
    assert v6_loopback.local == (ipaddress.ip_address("::1"), 11434)


def test_guard_decisions_on_a_given_table() -> None:
    lo = ipaddress.ip_address("127.0.0.1")
    remote = ipaddress.ip_address("192.0.2.7")
    ours, theirs = (lo, 40000), (lo, 11434)
    table = [TcpSocket(theirs, ours, 0x01, 990), TcpSocket(theirs, ours, 0x06, 0)]
    names = {990: "ollama", 1001: "mallory"}
    sleeps: list[float] = []
    guard = EndpointGuard("ollama", tables=lambda: table, name_of=names.get, sleep=sleeps.append)
    assert guard.owners(ours, theirs) == {990}  # the TIME_WAIT leftover is no server
    assert guard.owners((lo, 1), (remote, 443)) == set()  # another host: not looked for long
    assert sleeps == []
    assert guard.owners((lo, 40001), theirs) == set()  # loopback, yet not in the table
    assert len(sleeps) == guard.attempts
    table.append(TcpSocket(theirs, ours, 0x01, 1001))  # SO_REUSEPORT: two owners
    with pytest.raises(EndpointUntrusted, match=r"uid 1001 \(mallory\), not ollama"):
        guard.check(_FakeSocket(ours, theirs), "127.0.0.1:11434")
    table[:] = [TcpSocket(theirs, ours, 0x01, 4242)]
    with pytest.raises(EndpointUntrusted, match=r"uid 4242 \(no such user\)"):
        guard.check(_FakeSocket(ours, theirs), "127.0.0.1:11434")
    table[:] = []
    with pytest.raises(EndpointUntrusted, match="cannot tell who serves it"):
        guard.check(_FakeSocket(ours, theirs), "127.0.0.1:11434")
    guard.check(_FakeSocket((lo, 1), (remote, 443)), "192.0.2.7:443")  # remote: no refusal


@dataclass
class _FakeSocket:
    ours: tuple[Any, int]
    theirs: tuple[Any, int]

    def getsockname(self) -> tuple[str, int]:
        return str(self.ours[0]), self.ours[1]

    def getpeername(self) -> tuple[str, int]:
        return str(self.theirs[0]), self.theirs[1]


# ------------------------------------------------------------------ the API key


@pytest.fixture
def keyed_server() -> Iterator[ModelServer]:
    """An OpenAI-compatible server that wants `Authorization: Bearer sk-test-…`."""
    yield from _start("127.0.0.1", 0, json.dumps(DECISION), key=KEY)


KEY = "sk-test-made-up-0123456789abcdef"


def _key_file(tmp_path: Path, mode: int, text: str = KEY + "\n") -> Path:
    path = tmp_path / "openai.key"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_api_key_is_sent_as_a_bearer_token(
    keyed_server: ModelServer, make_config: Any, tmp_path: Path
) -> None:
    cfg = make_config(
        llm_backend="openai", openai_url=keyed_server.url, model=MODEL,
        openai_api_key_file=str(_key_file(tmp_path, 0o600)),
    )  # fmt: skip
    client = client_from_config(cfg)
    client.check()
    assert client.chat([{"role": "user", "content": "hi"}], {}).content == json.dumps(DECISION)
    assert [r["authorization"] for r in keyed_server.wait_requests(2)] == [f"Bearer {KEY}"] * 2
    # read at each request: a rotated key is used from the next request on
    _key_file(tmp_path, 0o400, "sk-test-rotated\n")
    with pytest.raises(Exception, match="invalid api key"):
        client.chat([{"role": "user", "content": "hi"}], {})
    assert keyed_server.wait_requests(3)[-1]["authorization"] == "Bearer sk-test-rotated"


def test_without_a_key_file_no_authorization_is_sent(
    keyed_server: ModelServer, make_config: Any
) -> None:
    cfg = make_config(llm_backend="openai", openai_url=keyed_server.url, model=MODEL)
    with pytest.raises(Exception, match="invalid api key"):
        client_from_config(cfg).check()
    assert keyed_server.wait_requests(1)[0]["authorization"] == ""


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_key_file_others_can_read_is_refused(
    keyed_server: ModelServer, make_config: Any, tmp_path: Path, mode: int
) -> None:
    path = _key_file(tmp_path, mode)
    cfg = make_config(
        llm_backend="openai", openai_url=keyed_server.url, model=MODEL,
        openai_api_key_file=str(path),
    )  # fmt: skip
    decision = _analyze(client_from_config(cfg), make_config)
    assert decision.source is DecisionSource.RUNBOOKS
    assert f"mode {mode:04o}); run: chmod 600 {path}" in decision.error
    assert keyed_server.requests() == []  # refused before any request


def test_a_symlinked_or_odd_key_file_is_refused(tmp_path: Path) -> None:
    real = _key_file(tmp_path, 0o600)
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(ApiKeyFileUnsafe, match="is a symlink"):
        load_api_key(link)
    with pytest.raises(ApiKeyFileUnsafe, match="cannot be read"):
        load_api_key(tmp_path / "missing.key")
    with pytest.raises(ApiKeyFileUnsafe, match="not a regular file"):
        load_api_key(tmp_path)
    for text in ("", "two words\n", "sk-test\r\nX-Injected: 1\n"):
        bad = _key_file(tmp_path, 0o600, text)
        with pytest.raises(ApiKeyFileUnsafe, match="does not hold one API key"):
            load_api_key(bad)
    assert load_api_key(_key_file(tmp_path, 0o400)) == KEY


def test_clients_are_wired_from_config(make_config: Any, tmp_path: Path) -> None:
    key = _key_file(tmp_path, 0o600)
    cfg = make_config(
        llm_backend="openai", openai_url="http://127.0.0.1:1", openai_api_key_file=str(key),
        llm_endpoint_user="ollama",
    )  # fmt: skip
    client = client_from_config(cfg)
    assert isinstance(client, OpenAIChat)
    assert client.api_key_file == key
    adapters = client_session(client).adapters
    assert isinstance(adapters["http://"], GuardedAdapter)
    assert adapters["http://"].guard.expected_user == "ollama"
    plain = client_from_config(make_config())
    assert isinstance(plain, OllamaChat)
    assert all(type(a) is HTTPAdapter for a in client_session(plain).adapters.values())
