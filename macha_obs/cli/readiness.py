"""What the running daemon says of its own health, for `macha-obs status`: its /readyz,
asked for JSON, so `status`, /readyz, macha_health_problem and MachaNotReady are one
verdict, never a second opinion made up here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from macha_obs.config import Config
from macha_obs.terminal import inert

if TYPE_CHECKING:
    import requests

# a loopback request to a daemon that answers /readyz without touching the disk
TIMEOUT = 5.0
_ANY = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104 - mapped, not bound


def readyz_url(cfg: Config) -> str:
    host = _ANY.get(cfg.listen_host, cfg.listen_host)
    return f"http://{f'[{host}]' if ':' in host else host}:{cfg.listen_port}/readyz"


def daemon_health(cfg: Config, session: requests.Session | None = None) -> dict[str, Any]:
    """{"ready": bool | None, "problems": {name: reason}, "error": str | None}: None
    when the daemon could not be asked (not running, or not answering)."""
    import requests  # `status` only: the daemon that imports this module never calls it

    url = readyz_url(cfg)
    try:
        resp = (session or requests).get(
            url, headers={"Accept": "application/json"}, timeout=TIMEOUT
        )
        data = resp.json()
        problems = {str(k): str(v) for k, v in dict(data["problems"]).items()}
        return {"ready": bool(data["ready"]), "problems": problems, "error": None}
    except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
        return {"ready": None, "problems": {}, "error": f"{url}: {type(exc).__name__}"}


def health_lines(health: dict[str, Any]) -> list[str]:
    """The text view: one line for the verdict, one per problem (made inert)."""
    if health["ready"] is None:
        return [f"health:    unknown (no answer from {inert(str(health['error']))})"]
    if health["ready"]:
        return ["health:    ready"]
    lines = ["health:    NOT READY"]
    lines += [f"  {name}: {inert(why)}" for name, why in health["problems"].items()]
    return lines
