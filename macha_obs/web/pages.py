"""The approvals pages as `serve` mounts them: the key, the token, the base URL, the app.

Reading and acting always need the token, on loopback too: the webhook's (its
configured file, or the one generated in the state dir, made here if the webhook's own
authentication is off), as a bearer header or through a login.
"""

from __future__ import annotations

from dataclasses import dataclass

from macha_obs.config import Config
from macha_obs.intake.token import ensure_token, load_token, read_token
from macha_obs.web.account import LoginStats
from macha_obs.web.app import ApprovalsApp, Desk, History, Queue
from macha_obs.web.keys import ensure_key
from macha_obs.web.links import Links, base_path, base_url
from macha_obs.web.signing import Signer


@dataclass(frozen=True)
class Pages:
    app: ApprovalsApp
    links: Links
    login_stats: LoginStats  # macha_web_login_failures_total


def page_token(cfg: Config) -> str:
    """The token the pages take: the webhook's, from the same file."""
    if cfg.webhook_token_file is not None:
        return read_token(cfg.webhook_token_file)
    return load_token(ensure_token(cfg.state_dir))


def approvals_pages(
    cfg: Config, queue: Queue, desk: Desk, *, history: History | None = None
) -> Pages:
    signer = Signer(ensure_key(cfg.state_dir))
    base = base_url(cfg.external_url, cfg.listen_host, cfg.listen_port, cfg.hostname)
    stats = LoginStats()
    app = ApprovalsApp(
        queue,
        desk,
        signer,
        page_token(cfg),
        base_path=base_path(base),
        secure_cookie=base.startswith("https://"),
        history=history,
        login_stats=stats,
    )
    return Pages(app, Links(base), stats)
