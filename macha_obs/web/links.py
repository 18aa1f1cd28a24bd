"""The URLs the alerts carry: where people reach the pages, and each item's page.

Built from `external_url` (the reverse proxy's public URL) or else from the listener's
own address: a wildcard listener (0.0.0.0, ::) is reached by the host's name. A link is
the item's plain address, no capability: it is exported on the unauthenticated /metrics
and passes through Prometheus and Alertmanager, so opening it needs the token (a login)
like every page. It is the same for as long as the item waits: the alert does not flap.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from macha_obs.models import Approval

_WILDCARDS = {"0.0.0.0", "::", ""}  # noqa: S104  # names, never bound here


def base_url(external_url: str | None, host: str, port: int, hostname: str) -> str:
    """Where a person's browser reaches the listener, without a trailing slash."""
    if external_url:
        return external_url.rstrip("/")
    if host in _WILDCARDS:
        host = hostname
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return f"http://{host}:{port}"


def base_path(base: str) -> str:
    """The path part of the base (a proxy's prefix, e.g. /macha), no trailing slash."""
    return urlsplit(base).path.rstrip("/")


class Links:
    """The items' pages, for the alerts."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")

    def item(self, approval: Approval) -> str:
        return f"{self.base}/approvals/{approval.id}"

    def pending(self, approvals: list[Approval]) -> list[tuple[Approval, str]]:
        """Each item with its link, oldest first (the first is the alert's link)."""
        ordered = sorted(approvals, key=lambda a: (a.created_at, a.id))
        return [(a, self.item(a)) for a in ordered]
