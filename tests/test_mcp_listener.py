"""/mcp on the real daemon's listener: the token (invariant 13), Host and Origin against
DNS rebinding, bounded bodies, no 5xx under fuzz, and no serving beyond loopback
without a token (the daemon refuses to start)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from macha_obs.intake.token import read_token
from tests.harness.daemon_support import Daemon
from tests.harness.labsd import LabSystemd
from tests.harness.stack import free_port
from tests.test_listener_limits import exchange, header_of, status_of

pytestmark = [pytest.mark.systemd]

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"},
    },
}


def mcp_request(
    daemon: Daemon,
    body: bytes,
    *,
    token: str | None,
    method: str = "POST",
    host: str | None = None,
    origin: str | None = None,
    extra: tuple[tuple[str, str], ...] = (),
) -> bytes:
    headers = [
        ("Host", host or f"127.0.0.1:{daemon.port}"),
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("Content-Length", str(len(body))),
        *extra,
    ]
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    if origin is not None:
        headers.append(("Origin", origin))
    head = "\r\n".join([f"{method} /mcp HTTP/1.1", *(f"{k}: {v}" for k, v in headers)])
    return exchange(daemon.port, (head + "\r\n\r\n").encode() + body)


@pytest.fixture(scope="module")
def daemon(
    systemd_container: LabSystemd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    started = Daemon(systemd_container, tmp_path_factory.mktemp("mcp-listener") / "state").start()
    yield started
    started.stop()


def test_invariant_13_mcp_needs_the_token(daemon: Daemon) -> None:
    body = json.dumps(INIT).encode()
    answer = mcp_request(daemon, body, token=None)
    assert status_of(answer) == 401
    assert (
        header_of(
            answer,
            "WWW-Authenticate",
        )
        == 'Bearer realm="macha-obs"'
    )
    assert status_of(mcp_request(daemon, body, token="wrong")) == 401
    token = read_token(daemon.token_file)
    ok = mcp_request(daemon, body, token=token)
    assert status_of(ok) == 200, ok[:500]
    assert b'"serverInfo"' in ok


def test_invariant_13_mcp_refuses_a_foreign_host_or_origin(daemon: Daemon) -> None:
    body = json.dumps(INIT).encode()
    token = read_token(daemon.token_file)
    evil = mcp_request(daemon, body, token=token, origin="http://evil.example")
    assert status_of(evil) == 403
    rebound = mcp_request(daemon, body, token=token, host=f"evil.example:{daemon.port}")
    assert status_of(rebound) == 403
    same = mcp_request(daemon, body, token=token, origin=f"http://localhost:{daemon.port}")
    assert status_of(same) == 200


def test_mcp_bounds_its_requests(daemon: Daemon) -> None:
    token = read_token(daemon.token_file)
    assert status_of(mcp_request(daemon, b"", token=token, method="GET")) == 405
    big = b"[" + b" " * (2 * 1024 * 1024) + b"]"
    assert status_of(mcp_request(daemon, big, token=token)) == 413
    assert status_of(mcp_request(daemon, b"{not json", token=token)) == 400


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
RPC = st.fixed_dictionaries(
    {
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2]),
        "method": st.sampled_from(
            ["initialize", "tools/call", "tools/list", "ping", "resources/read", "x"]
        ),
    },
    optional={"id": st.integers() | st.text(max_size=5), "params": JSON},
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=st.one_of(RPC.map(lambda d: json.dumps(d).encode()), st.binary(max_size=200)),
    method=st.sampled_from(["POST", "POST", "DELETE", "PUT", "GET"]),
    session=st.sampled_from([None, "nope", "0" * 32]),
    accept=st.sampled_from(["application/json, text/event-stream", "text/html", ""]),
)
def test_mcp_fuzz_gets_4xx_never_5xx(
    daemon: Daemon, body: bytes, method: str, session: str | None, accept: str
) -> None:
    token = read_token(daemon.token_file)
    extra: tuple[tuple[str, str], ...] = (("Mcp-Session-Id", session),) if session else ()
    extra += (("Accept", accept),) if accept else ()
    status = status_of(mcp_request(daemon, body, token=token, method=method, extra=extra))
    assert status is not None
    assert status < 500, status


def test_invariant_13_mcp_without_a_token_beyond_loopback_refuses_to_start(
    systemd_container: LabSystemd, tmp_path, daemons: Callable[..., Daemon]
) -> None:
    del daemons
    daemon = Daemon(systemd_container, tmp_path / "wide", mcp_auth="false")
    daemon.env["MACHA_LISTEN_ADDRESS"] = f"0.0.0.0:{free_port()}"
    with pytest.raises(RuntimeError, match="exited"):
        daemon.start(timeout=30)
    assert "mcp_auth = false" in daemon.log_tail()
    assert daemon.proc is not None
    assert daemon.proc.returncode == 2
    # on loopback the same setting serves /mcp without a token
    local = Daemon(systemd_container, tmp_path / "local", mcp_auth="false").start()
    try:
        assert status_of(mcp_request(local, json.dumps(INIT).encode(), token=None)) == 200
    finally:
        local.stop()
