"""The fleet's blast radius: before an automatic fix, ask the Prometheus the fleet shares
how many other hosts made the same kind of fix lately, and leave it to a person when
that is the fleet's limit already.

Rate limits are per host: a bad rule or a bad model across a fleet could restart the same
service on every host at once. Each sidecar exports what it did (`macha_actions_total{kind,
result}`, metrics/sidecar.py, every kind at 0 from the start), so Prometheus knows which
hosts acted: `count by (instance) (increase(...[window]) > 0)`, one sample per host.

- Per action kind: the finest grain those counters give (they carry no unit label: unit
  names are unbounded), and the one that matches the harm: many hosts restarting units
  at once, whichever units, is the storm; a routine journal vacuum on fifty hosts must
  not hold the fifty-first host's restart. Both results count: a failed fix acted too.
- This host is left out of the count (its `hostname` and `host_aliases`): acting again
  here widens nothing, and its own per-host rate limits bound it.
- Fail safe: Prometheus down, slow, answering an error or something that is not a
  vector queues the fix too, with a reason that says so.

An I/O adapter: the HTTP session and the clock are constructor arguments.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from macha_obs.config import Config
from macha_obs.errors import MachaError
from macha_obs.models import Action

if TYPE_CHECKING:
    import requests

HOST_LABEL = "instance"  # the label the fleet's scrape config names hosts by
QUERY_TIMEOUT = 5.0  # the check runs in the action lane, right before a fix: keep it short
_KIND = re.compile(r"[a-z][a-z0-9_]*")
_SHOWN_HOSTS = 5
_HOST_CHARS = 64


class FleetQueryError(MachaError):
    """Prometheus did not give a usable answer; the message says what came back."""


def hosts_query(kind: str, window: float) -> str:
    """PromQL: one sample per host whose sidecar did `kind` within `window` seconds."""
    if not _KIND.fullmatch(kind):  # kinds come from the Action union; never quote others
        raise ValueError(f"not an action kind: {kind!r}")
    return (
        f"count by ({HOST_LABEL}) "
        f'(increase(macha_actions_total{{kind="{kind}"}}[{int(window)}s]) > 0)'
    )


def parse_hosts(body: object) -> set[str]:
    """The hosts in an instant query's answer; FleetQueryError for anything else."""
    if not isinstance(body, Mapping):
        raise FleetQueryError("answered JSON that is not an object")
    if body.get("status") != "success":
        error = str(body.get("error") or body.get("status"))[:200]
        raise FleetQueryError(f"answered with an error: {error}")
    data = body.get("data")
    if not isinstance(data, Mapping) or data.get("resultType") != "vector":
        raise FleetQueryError("answered something that is not an instant vector")
    result = data.get("result")
    if not isinstance(result, list):
        raise FleetQueryError("answered without a result list")
    return {_host_of(sample) for sample in result}


def _host_of(sample: object) -> str:
    metric = sample.get("metric") if isinstance(sample, Mapping) else None
    if not isinstance(metric, Mapping):
        raise FleetQueryError("answered a sample without labels")
    # a series without the label still acted somewhere: it counts, under a name that says so
    return str(metric.get(HOST_LABEL, f"(no {HOST_LABEL} label)"))


def _window_text(seconds: float) -> str:
    return f"{seconds / 3600:g}h" if seconds >= 3600 else f"{seconds / 60:g}m"


class FleetLimit:
    """`check(action)`: None to go ahead, or the reason to queue the fix for a person."""

    def __init__(
        self,
        url: str,
        max_hosts: int,
        window: float,
        *,
        this_host: Collection[str],
        session: requests.Session,
        clock: Callable[[], float] = time.time,
        timeout: float = QUERY_TIMEOUT,
    ) -> None:
        self.url = url.rstrip("/")
        self.max_hosts = max_hosts
        self.window = window
        self.this_host = frozenset(this_host)
        self.session = session
        self.clock = clock
        self.timeout = timeout

    def hosts_acted(self, kind: str) -> set[str]:
        """Every host (this one too) whose sidecar did `kind` within the window."""
        import requests  # only where the fleet's Prometheus is asked (README, "Idle cost")

        params = {"query": hosts_query(kind, self.window), "time": f"{self.clock():.3f}"}
        try:
            reply = self.session.get(
                f"{self.url}/api/v1/query", params=params, timeout=self.timeout
            )
        except requests.Timeout as exc:
            raise FleetQueryError(f"gave no answer within {self.timeout:g}s") from exc
        except requests.RequestException as exc:
            raise FleetQueryError(f"is unreachable ({type(exc).__name__})") from exc
        try:
            body: Any = reply.json()
        except ValueError as exc:  # a proxy's page, a truncated body (requests' is one too)
            raise FleetQueryError(f"answered HTTP {reply.status_code}, not JSON") from exc
        return parse_hosts(body)

    def check(self, action: Action) -> str | None:
        """Before an automatic fix: the reason to queue it instead, or None."""
        try:
            others = self.hosts_acted(action.kind) - self.this_host
        except FleetQueryError as exc:
            return (
                f"the fleet's blast radius is unknown: Prometheus at {self.url} {exc}; failing safe"
            )
        if len(others) < self.max_hosts:
            return None
        # label values are the fleet's, not ours: a few, each bounded, in a person's reason
        shown = ", ".join(host[:_HOST_CHARS] for host in sorted(others)[:_SHOWN_HOSTS])
        more = f" and {len(others) - _SHOWN_HOSTS} more" if len(others) > _SHOWN_HOSTS else ""
        return (
            f"the fleet's blast radius: {len(others)} other hosts did {action.kind} within "
            f"{_window_text(self.window)} ({shown}{more}); fleet_max_hosts is {self.max_hosts}"
        )


def fleet_limit(cfg: Config, session: requests.Session | None = None) -> FleetLimit | None:
    """The configured limit, or None when it is off (fleet_max_hosts 0: no query at all)."""
    if cfg.fleet_max_hosts == 0 or cfg.fleet_prometheus_url is None:
        return None
    if session is None:
        import requests

        session = requests.Session()
    return FleetLimit(
        cfg.fleet_prometheus_url,
        cfg.fleet_max_hosts,
        cfg.fleet_window,
        this_host={cfg.hostname, *cfg.host_aliases},
        session=session,
    )
