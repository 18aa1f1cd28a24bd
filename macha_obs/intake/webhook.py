"""The Alertmanager webhook (`POST /alerts`), as a WSGI callable.

Order matters: authenticate, bound the body, validate, bound the payload, drop other
hosts' alerts, then store durably (one committed transaction) and only then answer 2xx.
Alertmanager retries a 5xx for ever and drops a 4xx, so a 5xx is reserved for "could not
store" and every malformed body is a 4xx: a Content-Length that is not ASCII digits, a
chunked body, a body cut short, invalid UTF-8 or JSON, a string no UTF-8 can encode (a
lone surrogate escape such as "\\ud800"), too many alerts or labels, an over-long label.
NUL characters are data like any other (SQLite stores them; unit names reject them).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import ValidationError

from macha_obs.config import Config
from macha_obs.intake.incidents import IncidentStore, IngestResult
from macha_obs.intake.token import intake_token
from macha_obs.models import Alert, AlertGroup
from macha_obs.store import Store

log = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
OnIncident = Callable[[IngestResult], None]

# Results of a delivery, a fixed set (a label value for the exporter).
DELIVERY_RESULTS = (
    "accepted",
    "duplicate",
    "ignored",
    "invalid",
    "unauthorized",
    "too_large",
    "bad_method",
    "store_error",
)
HUMAN_AUDIENCE = "human"
# Per-notification bounds, so one huge notification cannot hold up the next one. Far
# above what Alertmanager sends (set `max_alerts` on its webhook config to stay under).
MAX_ALERTS = 1000
MAX_LABELS = 128  # per alert, and per label set of the notification
MAX_LABEL_CHARS = 2048  # per label name or value
_CONTENT_LENGTH = re.compile(r"[0-9]{1,15}")  # ASCII digits only: "²".isdigit() is True
_LOOPBACK = {"localhost", "127.0.0.1", "::1", "ip6-localhost"}


class ReceiverStats:
    """Delivery and alert counters since start (Prometheus copes with resets)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.deliveries: Counter[str] = Counter(dict.fromkeys(DELIVERY_RESULTS, 0))
        self.alerts: Counter[str] = Counter({"new": 0, "duplicate": 0, "ignored": 0})
        self.truncated_alerts = 0

    def count(self, result: str, **alerts: int) -> None:
        with self._lock:
            self.deliveries[result] += 1
            self.alerts.update(alerts)

    def add_truncated(self, n: int) -> None:
        with self._lock:
            self.truncated_alerts += n

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {
                "deliveries": dict(self.deliveries),
                "alerts": dict(self.alerts),
                "truncated": {"alerts": self.truncated_alerts},
            }


class HostMatcher:
    """Is an alert about this host? Decided by the first host label present on it.

    The label names this host when its whole name (port stripped, case-insensitive as
    DNS is, a trailing dot ignored) is the hostname or a declared alias: `vm` is not
    `vm.example.org`, nor `vm.evil.example`. A short name matches only when the hostname
    or an alias is that short name; declare the others in `host_aliases`.
    """

    def __init__(
        self,
        hostname: str,
        aliases: Iterable[str] = (),
        labels: Iterable[str] = ("instance", "host", "hostname", "nodename"),
        *,
        loopback_is_local: bool = True,
        require_label: bool = False,
    ) -> None:
        self.names = {host_name(n) for n in (hostname, *aliases)} - {""}
        if loopback_is_local:
            # a target scraped at 127.0.0.1 by a Prometheus beside us is this host
            self.names |= _LOOPBACK
        self.labels = tuple(labels)
        # Pulling from a fleet's shared Alertmanager: an alert without a host label is
        # nobody's in particular there, so never ours.
        self.require_label = require_label

    def is_local(self, alert: Alert) -> bool:
        for label in self.labels:
            value = alert.labels.get(label)
            if value:
                return host_name(_strip_port(value.strip().lower())) in self.names
        return not self.require_label  # no host label: a host-local rule, ours


def host_name(name: str) -> str:
    """A host name as compared: lower case, no surrounding space, no trailing dot."""
    return name.strip().lower().removesuffix(".")


def for_this_host(alert: Alert, hosts: HostMatcher | None) -> bool:
    """Is the alert ours to heal? Both intakes (webhook and pull) decide here."""
    # The sidecar's own health (audience=human) is for people: never heal ourselves.
    if alert.labels.get("audience") == HUMAN_AUDIENCE:
        return False
    return hosts is None or hosts.is_local(alert)


def _strip_port(value: str) -> str:
    if value.startswith("["):  # [::1]:9100
        return value[1:].partition("]")[0]
    host, sep, port = value.rpartition(":")
    if sep and port.isascii() and port.isdigit() and ":" not in host:
        return host
    return value


class ReceiverApp:
    """WSGI app for Alertmanager's webhook (payload version 4)."""

    def __init__(
        self,
        incidents: IncidentStore,
        *,
        token: str | None,
        max_body_bytes: int = 1_048_576,
        hosts: HostMatcher | None = None,
        on_incident: OnIncident | None = None,
        stats: ReceiverStats | None = None,
        max_alerts: int = MAX_ALERTS,
        max_labels: int = MAX_LABELS,
        max_label_chars: int = MAX_LABEL_CHARS,
        store_problem: Callable[[], str | None] = lambda: None,
    ) -> None:
        """`store_problem`: why the store cannot keep what is acknowledged now (the
        store's `problem`), or None; while it says why, every delivery gets a 503."""
        self.incidents = incidents
        self.store_problem = store_problem
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.max_alerts = max_alerts
        self.max_labels = max_labels
        self.max_label_chars = max_label_chars
        self.hosts = hosts
        self.on_incident = on_incident
        self.stats = stats or ReceiverStats()

    @classmethod
    def from_config(
        cls, config: Config, store: Store, on_incident: OnIncident | None = None
    ) -> ReceiverApp:
        """The webhook as configured; authenticated unless `webhook_auth = false` on
        loopback (WebhookTokenError, a ValueError, or OSError when it cannot be)."""
        return cls(
            IncidentStore(store),
            token=intake_token(config),
            max_body_bytes=config.webhook_max_body_bytes,
            hosts=HostMatcher(config.hostname, config.host_aliases, config.host_labels),
            on_incident=on_incident,
            store_problem=store.problem,
        )

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        status, body, headers = self._handle(environ)
        data = json.dumps(body).encode()
        start_response(
            status,
            [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers],
        )
        return [data]

    def _handle(self, environ: dict[str, Any]) -> tuple[str, dict[str, Any], list[tuple[str, str]]]:
        if environ.get("REQUEST_METHOD") != "POST":
            self.stats.count("bad_method")
            return "405 Method Not Allowed", {"error": "use POST"}, [("Allow", "POST")]
        if not self._authorized(environ.get("HTTP_AUTHORIZATION", "")):
            self.stats.count("unauthorized")
            return (
                "401 Unauthorized",
                {"error": "missing or wrong bearer token"},
                [("WWW-Authenticate", 'Bearer realm="macha-obs"')],
            )
        raw, problem = self._read_body(environ)
        if problem is not None:
            return problem
        try:
            text = raw.decode("utf-8")
            data = json.loads(text)
            # valid JSON may still hold strings no UTF-8 can encode ("\ud800"): they
            # would fail in the store (a 5xx, retried for ever), so refuse them here
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            self.stats.count("invalid")
            return "400 Bad Request", {"error": "a string holds a lone surrogate escape"}, []
        except (ValueError, RecursionError) as exc:  # incl. JSON and UTF-8 errors
            self.stats.count("invalid")
            return "400 Bad Request", {"error": f"invalid JSON: {exc}"}, []
        alerts = data.get("alerts") if isinstance(data, dict) else None
        if isinstance(alerts, list) and len(alerts) > self.max_alerts:
            self.stats.count("too_large")
            message = (
                f"{len(alerts)} alerts exceed {self.max_alerts} per notification;"
                " set max_alerts on the webhook config"
            )
            return "413 Content Too Large", {"error": message}, []
        try:
            group = AlertGroup.model_validate(data)
        except ValidationError as exc:
            self.stats.count("invalid")
            return "400 Bad Request", {"error": _schema_message(exc)}, []
        too_big = self._oversized_labels(group)
        if too_big is not None:
            self.stats.count("invalid")
            return "400 Bad Request", {"error": too_big}, []
        return self._ingest(group, text)

    def _oversized_labels(self, group: AlertGroup) -> str | None:
        """Why the notification's label sets are out of bounds, or None."""
        label_sets = [
            *((f"alerts.{i}.labels", a.labels) for i, a in enumerate(group.alerts)),
            ("groupLabels", group.group_labels),
            ("commonLabels", group.common_labels),
        ]
        for where, labels in label_sets:
            if len(labels) > self.max_labels:
                return f"{where}: {len(labels)} labels exceed {self.max_labels}"
            for name, value in labels.items():
                if max(len(name), len(value)) > self.max_label_chars:
                    return f"{where}: a label over {self.max_label_chars} characters"
        return None

    def _authorized(self, header: str) -> bool:
        if self.token is None:
            return True
        scheme, _, credentials = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), self.token.encode()
        )

    def _read_body(
        self, environ: dict[str, Any]
    ) -> tuple[bytes, tuple[str, dict[str, Any], list[tuple[str, str]]] | None]:
        if environ.get("HTTP_TRANSFER_ENCODING"):  # Alertmanager always sends a length
            self.stats.count("invalid")
            message = "chunked or encoded bodies are not accepted: send Content-Length"
            return b"", ("411 Length Required", {"error": message}, [])
        length_text = (environ.get("CONTENT_LENGTH") or "").strip(" \t")
        if not length_text:
            self.stats.count("invalid")
            return b"", ("411 Length Required", {"error": "Content-Length is required"}, [])
        if not _CONTENT_LENGTH.fullmatch(length_text):
            too_long = length_text.isascii() and length_text.isdigit()
            self.stats.count("too_large" if too_long else "invalid")
            if too_long:
                return b"", ("413 Content Too Large", {"error": "Content-Length too large"}, [])
            message = "Content-Length must be ASCII digits"
            return b"", ("400 Bad Request", {"error": message}, [])
        length = int(length_text)
        if length > self.max_body_bytes:
            self.stats.count("too_large")
            return b"", (
                "413 Content Too Large",
                {"error": f"body of {length} bytes exceeds {self.max_body_bytes}"},
                [],
            )
        try:
            raw = environ["wsgi.input"].read(length) if length else b""
        except OSError:  # a server that times the body out by raising: cut short
            raw = b""
        if len(raw) != length:
            self.stats.count("invalid")
            return b"", ("400 Bad Request", {"error": "body shorter than Content-Length"}, [])
        return raw, None

    def _for_us(self, alert: Alert) -> bool:
        return for_this_host(alert, self.hosts)

    def _ingest(
        self, group: AlertGroup, text: str
    ) -> tuple[str, dict[str, Any], list[tuple[str, str]]]:
        local = [a for a in group.alerts if self._for_us(a)]
        ignored = len(group.alerts) - len(local)
        if group.truncated_alerts:
            log.warning(
                "group %r: Alertmanager truncated %d alerts",
                group.group_key,
                group.truncated_alerts,
            )
            self.stats.add_truncated(group.truncated_alerts)
        if group.alerts and not local:
            self.stats.count("ignored", ignored=ignored)
            reason = "alerts for other hosts or for people (audience=human)"
            return "200 OK", {"status": "ignored", "reason": reason}, []
        result: IngestResult | None = None
        unusable: str | None = None
        try:
            result = self.incidents.ingest(group, text, local)
        except Exception:
            log.exception("cannot store webhook delivery for %r", group.group_key)
            unusable = "cannot store the alerts now"
        # asked after the write: a store lost under the daemon takes a write into a file
        # nobody will read (a deleted, replaced or truncated state.db) without an error,
        # so a committed write is no proof; nothing is acknowledged until it is repaired
        unusable = unusable or self.store_problem()
        if unusable is not None or result is None:
            # a 5xx makes Alertmanager deliver it again later; a duplicate then is harmless
            log.warning("webhook delivery for %r refused: %s", group.group_key, unusable)
            self.stats.count("store_error")
            return "503 Service Unavailable", {"error": unusable or "cannot store"}, []
        duplicate = result.new_alerts == 0 and result.duplicates > 0
        self.stats.count(
            "duplicate" if duplicate else "accepted",
            new=result.new_alerts,
            duplicate=result.duplicates,
            ignored=ignored,
        )
        if result.changed and result.firing and self.on_incident is not None:
            try:
                self.on_incident(result)
            except Exception:  # stored already; analysis picks it up from the store
                log.exception("on_incident failed for %s", result.incident_id)
        return (
            "200 OK",
            {
                "status": "duplicate" if duplicate else "accepted",
                "incident": result.incident_id,
                "new_alerts": result.new_alerts,
                "duplicates": result.duplicates,
                "ignored": ignored,
                "resolved": result.resolved,
            },
            [],
        )


def _schema_message(exc: ValidationError) -> str:
    parts = [
        f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
        for err in exc.errors()[:5]
    ]
    more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return "not an Alertmanager v4 payload: " + "; ".join(parts) + more
