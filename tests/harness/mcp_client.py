"""The official SDK's MCP client against the real daemon: over HTTP (/mcp) or stdio
(`macha-obs mcp`), with or without a person who confirms elicitations."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from mcp import ClientSession, StdioServerParameters
from mcp.client.session import ElicitationFnT
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.context import RequestContext
from mcp.types import CallToolResult, ElicitRequestParams, ElicitResult, ErrorData, Implementation

from tests.harness.daemon_support import MACHA_OBS, Daemon

Elicit = ElicitationFnT


def person(answer: bool, asked: list[str] | None = None) -> Elicit:
    """A person at the client: reads the question, ticks confirm (or not)."""

    async def elicit(
        context: RequestContext[ClientSession, Any], params: ElicitRequestParams
    ) -> ElicitResult | ErrorData:
        del context
        if asked is not None:
            asked.append(params.message)
        return ElicitResult(action="accept", content={"confirm": answer})

    return elicit


def data(result: CallToolResult) -> Any:
    """A tool's answer as JSON data (its structured content, else its text)."""
    assert not result.isError, result.content
    found = result.structuredContent
    if found is None:
        return json.loads(result.content[0].text)  # type: ignore[union-attr]
    if set(found) == {"result"}:
        return found["result"]
    return found


@asynccontextmanager
async def http_session(
    daemon: Daemon, *, elicit: Elicit | None = None, name: str = "lab-client", token: bool = True
) -> AsyncIterator[ClientSession]:
    headers = daemon.auth_headers() if token else {}
    client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30, read=300))
    async with (
        client,
        streamable_http_client(f"{daemon.url}/mcp", http_client=client) as (read, write, _),
        ClientSession(
            read,
            write,
            elicitation_callback=elicit,
            client_info=Implementation(name=name, version="1"),
        ) as session,
    ):
        await session.initialize()
        yield session


@asynccontextmanager
async def stdio_session(
    daemon: Daemon, *, elicit: Elicit | None = None, name: str = "lab-stdio"
) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=MACHA_OBS, args=["mcp"], env=dict(daemon.env))
    async with (
        stdio_client(params) as (read, write),
        ClientSession(
            read,
            write,
            elicitation_callback=elicit,
            client_info=Implementation(name=name, version="1"),
        ) as session,
    ):
        await session.initialize()
        yield session
