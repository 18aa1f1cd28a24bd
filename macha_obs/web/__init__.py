"""The approvals page: a person approves or rejects a queued action from the alert's link.

    app.py       ApprovalsApp: the WSGI pages under /approvals (routes.py mounts them)
    account.py   the token's check, login and logout, failed logins counted
    sessions.py  server-side sessions; wrong tokens slowed down per address
    wsgi.py      a request read, a refusal, a reply's headers
    render.py    the HTML, pure; every untrusted value escaped
    signing.py   CSRF tokens (HMAC), pure
    keys.py      the HMAC key in the state dir (approvals.key, 0600)
    links.py     the URLs alerts carry (external_url): each pending item's plain address
    pages.py     approvals_pages: the above put together as `serve` mounts them

It sits above `remediate` (a decision runs the Remediator, as `macha-approve` does) and
below `server`, which only mounts an injected WSGI app: the listener never imports it.
"""

from macha_obs.web.account import LoginStats
from macha_obs.web.app import ApprovalsApp, Desk, History, Queue
from macha_obs.web.keys import SigningKeyError, ensure_key
from macha_obs.web.links import Links, base_path, base_url
from macha_obs.web.pages import Pages, approvals_pages, page_token
from macha_obs.web.signing import Signer

__all__ = [
    "ApprovalsApp",
    "Desk",
    "History",
    "Links",
    "LoginStats",
    "Pages",
    "Queue",
    "Signer",
    "SigningKeyError",
    "approvals_pages",
    "base_path",
    "base_url",
    "ensure_key",
    "page_token",
]
