"""`macha-obs mcp` (the MCP server over stdio) and the /mcp mount `serve` uses.

Both build the same server (macha_obs/mcp/server.py) over the same parts: the store,
the Remediator on an executor, the latest snapshot, the approvals page's links.
Over stdio (`ssh host macha-obs mcp`) the process has its own D-Bus child, as
`macha-approve` does; on the listener it shares the daemon's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import click

from macha_obs.cli.common import ctx_config, open_store
from macha_obs.cli.talk import local_parts, page_links, parts, runbooks_dir
from macha_obs.cli.wiring import build_executor
from macha_obs.config import Config
from macha_obs.errors import UsageError
from macha_obs.execute.dispatch import HostExecutor
from macha_obs.intake.token import is_loopback, read_token
from macha_obs.mcp.desk import Desk
from macha_obs.mcp.facts import Facts
from macha_obs.mcp.http import McpHttp, allowed_hosts
from macha_obs.mcp.stats import McpStats
from macha_obs.models import Snapshot
from macha_obs.store import Store
from macha_obs.web import page_token

if TYPE_CHECKING:  # the SDK loads when a server is built (mcp/http.py says why)
    from macha_obs.mcp.server import MachaMcp

log = logging.getLogger(__name__)


class McpTokenError(UsageError):
    """/mcp cannot be served as configured; the message says what to change."""


def _http_server(facts: Facts, desk: Desk, stats: McpStats) -> MachaMcp:
    """The /mcp server over the daemon's parts; called by the first request /mcp lets in."""
    from macha_obs.mcp.server import build_server

    return build_server(facts, desk, transport="http", stats=stats, runbooks_dir=runbooks_dir())


def preload_sdk() -> None:
    """The SDK /mcp loads on its first request, imported now: for a daemon started as root
    that is about to drop to the state dir's owner (cli/common.py says why)."""
    import mcp.server.streamable_http_manager  # noqa: F401

    import macha_obs.mcp.server  # noqa: F401


def mcp_token(cfg: Config) -> str | None:
    """The token /mcp takes: mcp_token_file, else the webhook's (the approvals page's).
    None only with `mcp_auth = false` on a loopback listener; beyond it, refused."""
    if cfg.mcp_token_file is not None:
        return read_token(cfg.mcp_token_file)
    if cfg.mcp_auth:
        return page_token(cfg)
    if not is_loopback(cfg.listen_host):
        raise McpTokenError(
            f"mcp_auth = false, and the listener is on {cfg.listen_address}, beyond "
            "loopback: anyone who reaches it could read the host's record and propose "
            "actions. Remove mcp_auth = false, set mcp_token_file, or mcp_enabled = false"
        )
    log.warning("mcp_auth = false: /mcp on %s takes any local client", cfg.listen_address)
    return None


def mount(
    cfg: Config,
    store: Store,
    executor: HostExecutor,
    snapshot: Callable[[], Snapshot | None],
    stats: McpStats,
) -> McpHttp:
    """The /mcp app for the daemon's listener (its server and loop start with the first
    request it lets in)."""
    token = mcp_token(cfg)
    facts, desk = parts(cfg, store, executor, snapshot=snapshot, link_of=page_links(cfg))
    hosts = allowed_hosts(cfg.listen_host, cfg.listen_port, cfg.hostname, cfg.external_url)
    return McpHttp(partial(_http_server, facts, desk, stats), token=token, hosts=hosts, stats=stats)


@click.command("mcp")
@click.pass_context
def mcp_stdio(ctx: click.Context) -> None:
    """Serve the MCP tools over stdio (an MCP client's command: `ssh HOST macha-obs mcp`)."""
    import anyio  # here, not at the top: `serve` imports this module (mcp/http.py says why)

    from macha_obs.mcp.server import build_server

    cfg = ctx_config(ctx)
    store = open_store(cfg)
    executor = build_executor(cfg, store)
    try:
        facts, desk = local_parts(cfg, store, executor)
        server = build_server(
            facts, desk, transport="stdio", stats=McpStats(), runbooks_dir=runbooks_dir()
        )
        anyio.run(server.run_stdio_async)
    finally:
        executor.close()
        store.close()
