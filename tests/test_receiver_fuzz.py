"""Fuzzed webhook bodies: only 2xx/4xx, never a 5xx or a crash, nothing refused stored.

Raw bytes on the listener itself (request lines, headers, framing) are fuzzed in
tests/test_listener_fuzz.py; here the bodies, through a plain wsgiref server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from macha_obs.intake.incidents import IncidentStore
from macha_obs.intake.webhook import HostMatcher, ReceiverApp
from macha_obs.store import Store
from tests.harness.receiver_support import alert, payload, serve_wsgi

# Strings sometimes hold lone surrogates: json.dumps writes them as "\ud800" escapes, valid
# JSON that no UTF-8 can encode (once a 503 from SQLite, which Alertmanager retries forever).
texts = st.text(max_size=20) | st.text(
    st.characters() | st.characters(categories=["Cs"]), min_size=1, max_size=20
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
timestamps = st.sampled_from(
    ["0001-01-01T00:00:00Z", "2026-11-25T10:00:00Z", "2026-11-25T10:00:00.123456789+02:00",
     "2026-11-25T10:00:00", "not a time", "", "9999-12-31T23:59:59Z"]
)  # fmt: skip
label_maps = st.dictionaries(
    st.sampled_from(["alertname", "unit", "instance", "severity", "name", "x"]),
    texts | st.text(max_size=30),
    max_size=5,
)


@st.composite
def mutated_payloads(draw: st.DrawFn) -> Any:
    """Mostly-valid payloads with fields replaced by odd but plausible values."""
    n = draw(st.integers(0, 4))
    units = [draw(st.sampled_from(["a.service", "../x", "ssh.service", "b"])) for _ in range(n)]
    body = payload(*[alert(unit=u) for u in units], group_key=draw(texts | st.text(max_size=40)))
    for a in body["alerts"]:
        a["labels"].update(draw(label_maps))
        a["startsAt"] = draw(timestamps)
        a["endsAt"] = draw(timestamps)
        a["status"] = draw(st.sampled_from(["firing", "resolved", "pending"]))
        a["fingerprint"] = draw(st.text(max_size=70))
        if draw(st.booleans()):
            a[draw(st.sampled_from(["labels", "annotations", "fingerprint"]))] = draw(json_values)
    body["truncatedAlerts"] = draw(st.integers(-5, 10**12))
    if draw(st.booleans()):
        body[draw(st.sampled_from(list(body)))] = draw(json_values)
    return body


bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    mutated_payloads().map(lambda v: json.dumps(v).encode()),
    mutated_payloads().map(lambda v: json.dumps(v).encode()[: len(json.dumps(v)) // 2]),
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, IncidentStore]]:
    store = Store(tmp_path_factory.mktemp("fuzz") / "state")
    incidents = IncidentStore(store)
    app = ReceiverApp(incidents, token="t", max_body_bytes=2048, hosts=HostMatcher("web1"))
    try:
        with serve_wsgi(app) as base:
            yield base + "/alerts", incidents
    finally:
        store.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies)
def test_fuzzed_bodies_get_2xx_or_4xx(served: tuple[str, IncidentStore], body: bytes) -> None:
    url, incidents = served
    before = incidents.inbox_count()
    resp = requests.post(url, data=body, headers={"Authorization": "Bearer t"}, timeout=10)
    assert 200 <= resp.status_code < 500, resp.text
    answer = resp.json()
    if resp.status_code < 300 and answer["status"] != "ignored":
        # stored once, or a duplicate acknowledged without another copy
        assert incidents.inbox_count() in (before, before + 1)
    else:
        assert incidents.inbox_count() == before
