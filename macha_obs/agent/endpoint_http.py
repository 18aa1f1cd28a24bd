"""The endpoint guard on requests' connections: every socket a model client opens is
checked (endpoint.py's EndpointGuard) before a byte is sent.

Apart from endpoint.py so that requests and urllib3 load only when a model client first
opens a session, not when the daemon starts (README, "Idle cost").
"""

from __future__ import annotations

import socket
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from macha_obs.agent.endpoint import EndpointGuard, EndpointUntrusted, display


def _checked(guard: EndpointGuard, sock: socket.socket, host: str, port: int | None) -> None:
    try:
        guard.check(sock, display(host, port))
    except BaseException:
        sock.close()
        raise


def _pools(guard: EndpointGuard) -> dict[str, type[HTTPConnectionPool]]:
    """Connection pools whose connections are checked as soon as they connect."""

    class Checked(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            _checked(guard, sock, self.host, self.port)
            return sock

    class CheckedTLS(HTTPSConnection):
        def _new_conn(self) -> socket.socket:  # before the TLS handshake
            sock = super()._new_conn()
            _checked(guard, sock, self.host, self.port)
            return sock

    class Pool(HTTPConnectionPool):
        ConnectionCls = Checked

    class TLSPool(HTTPSConnectionPool):
        ConnectionCls = CheckedTLS

    return {"http": Pool, "https": TLSPool}


class GuardedAdapter(HTTPAdapter):
    """requests' adapter whose every new connection passes `guard` first."""

    def __init__(self, guard: EndpointGuard, **kw: Any) -> None:
        self.guard = guard
        self._pool_classes = _pools(guard)
        super().__init__(**kw)

    def init_poolmanager(self, *args: Any, **kw: Any) -> None:
        super().init_poolmanager(*args, **kw)
        self.poolmanager.pool_classes_by_scheme = self._pool_classes

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        if proxy.lower().startswith("socks"):
            raise EndpointUntrusted(
                f"the model endpoint is reached through the SOCKS proxy {proxy}, whose far "
                "end cannot be checked; exclude it with no_proxy"
            )
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = self._pool_classes  # the proxy's socket is checked
        return manager


def guard_session(session: requests.Session, guard: EndpointGuard) -> requests.Session:
    """Mount the guard on `session` for every http(s) URL, redirects included."""
    adapter = GuardedAdapter(guard)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
