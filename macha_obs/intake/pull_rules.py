"""The pull's round rules, pure: which answered alert is taken, which is present, which
is not ours, and what a round's answers allow to resolve. No I/O: `pull.py` asks the
peers and stores; this decides (see `pull.py` for the rules in order).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from macha_obs.intake.incidents import IngestResult
from macha_obs.intake.pull_answer import RawGroup
from macha_obs.intake.webhook import MAX_LABEL_CHARS, MAX_LABELS, HostMatcher, for_this_host
from macha_obs.models import ZERO_TIME, Alert

GROUP_KEY_PREFIX = "pull/"
# One poll of one peer ends in one of these (a label value: a small fixed set).
POLL_RESULTS = ("ok", "unreachable", "timeout", "http_error", "invalid", "too_large")
# A peer answering so is broken or hostile, not merely down: a health problem at once.
HOSTILE_RESULTS = ("timeout", "too_large", "invalid")


@dataclass
class PeerAnswer:
    """One peer's answer: its groups (as they came, in bytes), or why there are none."""

    peer: str
    result: str
    groups: list[RawGroup] = field(default_factory=list)
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.result == "ok"


@dataclass
class Merged:
    """Answers sorted: what to take, what is present, what was not ours."""

    firing: dict[str, dict[str, Alert]] = field(default_factory=dict)  # group key → fp →
    present: set[str] = field(default_factory=set)  # listed, not ended, on some peer
    starts: dict[str, set[str]] = field(default_factory=dict)  # fp → startsAt as written
    known: dict[str, set[str]] = field(default_factory=dict)  # stored already: fp → starts
    owner: dict[str, str] = field(default_factory=dict)  # fp → its group key
    ignored: set[str] = field(default_factory=set)
    invalid: set[str] = field(default_factory=set)


@dataclass
class RoundReport:
    """What one round did (for tests, the bench and the log)."""

    result: str
    answered: int
    taken: list[IngestResult] = field(default_factory=list)
    resolved: int = 0


@dataclass
class RoundState:
    """One round as its answers come in (the puller's, while the round runs)."""

    report: RoundReport
    present: set[str] = field(default_factory=set)
    taken: set[str] = field(default_factory=set)  # fingerprints taken this round
    ignored: set[str] = field(default_factory=set)
    invalid: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def peer_name(url: str) -> str:
    """The label value for a peer: host:port of its URL, never its credentials or path."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{parts.port}" if parts.port else host


def host_filter(label: str, names: Iterable[str]) -> str:
    """Alertmanager matcher (anchored RE2) for `label` naming one of `names` whole, with
    an optional trailing dot and port, case-insensitive: the hosts `HostMatcher` accepts,
    so the server sends only ours."""
    alternatives = "|".join(sorted({re.escape(n.lower()) for n in names if n}))
    port = "(?::[0-9]+)?"
    pattern = f"(?i)(?:(?:{alternatives})\\.?{port}|\\[(?:{alternatives})\\]{port})"
    quoted = pattern.replace("\\", "\\\\").replace('"', '\\"')
    return f'{label}=~"{quoted}"'


def sort_answer(
    answer: PeerAnswer,
    merged: Merged,
    *,
    hosts: HostMatcher,
    now: datetime,
    stored: Mapping[str, Collection[str]],
    this_round: Collection[str] = (),
) -> None:
    """One answer's alerts into `merged`. `stored`: fingerprint → startsAt of the states
    earlier rounds stored (neither validated nor taken again); `this_round`: fingerprints
    another peer's answer gave this round (that one is the alert)."""
    for group in answer.groups:
        meta = json.loads(group.meta)  # checked by the reader
        key = group_key(meta)
        for text in group.alerts:
            raw = json.loads(text)
            sort_alert(raw, key, merged, hosts=hosts, now=now, stored=stored, this_round=this_round)


def sort_alert(
    raw: object,
    key: str,
    merged: Merged,
    *,
    hosts: HostMatcher,
    now: datetime,
    stored: Mapping[str, Collection[str]],
    this_round: Collection[str] = (),
) -> None:
    fp = raw.get("fingerprint") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or not isinstance(fp, str):
        merged.invalid.add(str(fp))
        return
    ends = parse_time(raw.get("endsAt"))
    ended = ends is not None and ends <= now  # ended on this peer: not present here
    starts = str(raw.get("startsAt"))
    if starts in stored.get(fp, ()):  # this state is stored already
        merged.known.setdefault(fp, set()).add(starts)
        if not ended:
            merged.present.add(fp)
        return
    alert = to_alert(raw)
    if alert is None:
        merged.invalid.add(fp)
        merged.present.add(fp)  # unreadable: never resolve it for that
        return
    if not for_this_host(alert, hosts):
        merged.ignored.add(fp)
        return
    if ended:
        return
    merged.present.add(fp)
    if state(raw) in ("active", "unprocessed"):
        # In several groups (routes), or on several peers: the first one met is the
        # alert. Peers that stamped their own startsAt (an alert posted without one)
        # give one fingerprint several starts: one alert still, taken once.
        merged.starts.setdefault(fp, set()).add(starts)
        if fp in this_round:
            return
        owner = merged.owner.setdefault(fp, key)
        merged.firing.setdefault(owner, {}).setdefault(fp, alert)


class Stored(dict[str, Collection[str]]):
    """fingerprint → the startsAt stored; after a restart, a fingerprint the store holds
    firing is stored whatever startsAt a peer gives it (HA peers that stamped their
    own give one alert several: whichever peer answers first must not make it new)."""

    def __init__(self, taken: Mapping[str, Collection[str]], firing: Collection[str]) -> None:
        super().__init__(taken)
        self.firing = firing

    def get(self, fp: str, default: Collection[str] = ()) -> Collection[str]:  # type: ignore[override]
        return _EVERY if fp in self.firing else super().get(fp, default)


class _Every(frozenset[str]):
    def __contains__(self, _item: object) -> bool:
        return True


_EVERY = _Every()


def to_alert(raw: Mapping[str, Any]) -> Alert | None:
    """A pulled alert as the webhook would carry it (firing, no end yet), or None when it
    is not a readable alert within the webhook's label bounds."""
    try:
        alert = Alert.model_validate(
            {
                "status": "firing",
                "labels": raw.get("labels"),
                "annotations": raw.get("annotations") or {},
                "startsAt": raw.get("startsAt"),
                "endsAt": ZERO_TIME,
                "generatorURL": raw.get("generatorURL") or "",
                "fingerprint": raw.get("fingerprint"),
            }
        )
    except ValidationError:
        return None
    labels = [alert.labels, alert.annotations]
    if len(alert.labels) > MAX_LABELS or any(
        max(len(k), len(v)) > MAX_LABEL_CHARS for d in labels for k, v in d.items()
    ):
        return None
    return alert


def resolvable(alerts: Sequence[Alert], present: Collection[str], hosts: HostMatcher) -> bool:
    """Does an incident hold a pulled alert that no peer lists any more?"""
    return any(gone(a, present, hosts) for a in alerts)


def gone(alert: Alert, present: Collection[str], hosts: HostMatcher) -> bool:
    """A firing alert of ours that no peer lists any more (after a complete round)."""
    return (
        alert.firing
        and hosts.is_local(alert)
        and bool(alert.fingerprint)
        and alert.fingerprint not in present
    )


def group_key(group: Mapping[str, Any]) -> str:
    """Our key for an Alertmanager group: pull/<receiver>:{group labels}, the same for
    every peer (the route's own key is not in the API; the groupKey of the webhook is
    `<route>:{labels}`)."""
    receiver = group.get("receiver")
    name = receiver.get("name") if isinstance(receiver, dict) else None
    labels = group.get("labels")
    pairs = sorted(labels.items()) if isinstance(labels, dict) else []
    text = ", ".join(f"{k}={json.dumps(str(v))}" for k, v in pairs)
    return f"{GROUP_KEY_PREFIX}{name or ''}:{{{text}}}"


def parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


def state(raw: Mapping[str, Any]) -> str:
    status = raw.get("status")
    found = status.get("state") if isinstance(status, dict) else None
    return found if isinstance(found, str) else "unprocessed"
