"""The HTTP listener and its routes (DESIGN.md's `server.py` room, as a package).

routes.py      make_app: /metrics, /healthz, /readyz, POST /alerts (an injected app)
listener.py    Listener, start_server, shutdown: the accepting loop and its workers
connection.py  one connection's states and a worker's side of it
bounds.py      Limits, request framing and the listener's own refusals and counts
"""

from macha_obs.server.bounds import (
    LISTENER_OUTCOMES,
    Framing,
    Limits,
    ListenerStats,
    Refusal,
    frame,
    parse_content_length,
)
from macha_obs.server.listener import Listener, shutdown, start_server
from macha_obs.server.routes import make_app

__all__ = [
    "LISTENER_OUTCOMES",
    "Framing",
    "Limits",
    "Listener",
    "ListenerStats",
    "Refusal",
    "frame",
    "make_app",
    "parse_content_length",
    "shutdown",
    "start_server",
]
