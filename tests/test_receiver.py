"""The webhook receiver over a real HTTP server on port 0, and the incident store."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from macha_obs.intake.incidents import IncidentStore, IngestResult, assign_findings, sync_findings
from macha_obs.intake.token import WebhookTokenError, read_token, token_path
from macha_obs.intake.webhook import HostMatcher, ReceiverApp
from macha_obs.models import (
    ApprovalStatus,
    Finding,
    FindingKind,
    RestartUnit,
    Risk,
)
from macha_obs.store import Store
from tests.harness.receiver_support import alert, payload, resolved, serve_wsgi

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def incidents(store: Store) -> IncidentStore:
    return IncidentStore(store)


@pytest.fixture
def app(incidents: IncidentStore) -> ReceiverApp:
    seen: list[IngestResult] = []
    receiver = ReceiverApp(
        incidents,
        token=TOKEN,
        max_body_bytes=4096,
        hosts=HostMatcher("web1.example.org", ["web1-alias", "web1"]),
        on_incident=seen.append,
    )
    receiver.seen = seen  # type: ignore[attr-defined]
    return receiver


@pytest.fixture
def url(app: ReceiverApp) -> Iterator[str]:
    with serve_wsgi(app) as base:
        yield base + "/alerts"


def post(url: str, body: object, headers: dict[str, str] | None = None) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(url, data=data, headers={**AUTH, **(headers or {})}, timeout=10)


def test_firing_alert_opens_an_incident(url: str, app: ReceiverApp, incidents: IncidentStore):
    resp = post(url, payload(alert(unit="nginx.service")))
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "accepted"
    assert body["new_alerts"] == 1
    state = incidents.get(body["incident"])
    assert state is not None
    assert state.status == "open"
    assert state.incident.units == ["nginx.service"]
    assert state.incident.alerts[0].firing  # endsAt of year 1: still firing
    assert incidents.pending_analysis() == [body["incident"]]
    assert [r.incident_id for r in app.seen] == [body["incident"]]  # type: ignore[attr-defined]
    assert incidents.inbox_count() == 1


def test_same_notification_twice_is_handled_once(url: str, app: ReceiverApp, incidents):
    body = payload(alert(unit="nginx.service"), alert(unit="php-fpm.service"))
    first, second = post(url, body), post(url, body)
    assert first.json()["status"] == "accepted"
    assert second.status_code == 200
    assert second.json()["status"] == "duplicate"
    assert len(app.seen) == 1  # type: ignore[attr-defined]
    state = incidents.get(first.json()["incident"])
    assert state is not None
    assert state.revision == 1
    assert app.stats.snapshot()["alerts"]["duplicate"] == 2


def test_a_new_alert_in_the_group_is_one_change(url: str, incidents: IncidentStore) -> None:
    a, b = alert(unit="a.service"), alert(unit="b.service")
    first = post(url, payload(a)).json()
    second = post(url, payload(a, b)).json()  # Alertmanager resends the group with b added
    assert second["incident"] == first["incident"]
    assert (second["new_alerts"], second["duplicates"]) == (1, 1)
    state = incidents.get(first["incident"])
    assert state is not None
    assert state.revision == 2
    incidents.mark_analyzed(first["incident"], 2)
    assert incidents.pending_analysis() == []


def test_resolution_of_a_unit_alert_closes_nothing_by_itself(url, store: Store, incidents):
    """Issue 15: a resolve is a hint to look. For an alert about a unit the incident stays
    open (the orchestrator closes it once systemd confirms) and its items stay queued;
    the still-firing alert re-sent after it re-opens, never "duplicate"."""
    a = alert(unit="nginx.service")
    incident_id = post(url, payload(a)).json()["incident"]
    store.approvals.enqueue(
        incident_id, RestartUnit(unit="nginx.service"), risk=Risk.LOW, reason="r", ttl=60
    )
    body = post(url, payload(resolved(a))).json()
    assert body["resolved"] is False
    state = incidents.get(incident_id)
    assert state is not None
    assert state.status == "open"
    assert [x.status for x in state.incident.alerts] == ["resolved"]
    assert [x.status for x in store.approvals.list_approvals()] == [ApprovalStatus.PENDING]
    again = post(url, payload(a)).json()
    assert again["status"] == "accepted"
    state = incidents.get(incident_id)
    assert state is not None
    assert [x.status for x in state.incident.alerts] == ["firing"]


def test_resolution_of_an_alert_about_no_unit_closes_the_incident(url, incidents) -> None:
    a = alert("DiskFilling", mountpoint="/")
    incident_id = post(url, payload(a, group_key="disk")).json()["incident"]
    body = post(url, payload(resolved(a), group_key="disk")).json()
    assert body["resolved"] is True
    assert incidents.get(incident_id).status == "resolved"
    # the same alert firing again later is a new incident
    later = alert("DiskFilling", mountpoint="/", starts="2026-11-25T11:00:00Z")
    again = post(url, payload(later, group_key="disk"))
    assert again.json()["incident"] not in (None, incident_id)


def test_a_resolve_counts_only_for_its_own_firing_alert(incidents: IncidentStore) -> None:
    """A resolve for a fingerprint that never fired here changes nothing."""
    from macha_obs.models import AlertGroup

    a = alert(unit="a.service")
    b = alert(unit="b.service", starts="2026-11-25T10:00:00")  # a sender without an offset

    def ingest(*alerts: dict) -> IngestResult:
        group = AlertGroup.model_validate(payload(*alerts))
        return incidents.ingest(group, "{}", group.alerts)

    first = ingest(a)
    forged = ingest(resolved(a), resolved(b))
    assert (forged.new_alerts, forged.duplicates) == (1, 1)  # a's resolve applies; b's not
    state = incidents.get(first.incident_id or "")
    assert state is not None
    assert [x.labels["unit"] for x in state.incident.alerts] == ["a.service"]
    late = ingest(b)
    assert late.new_alerts == 1
    assert late.firing == 1  # b fires; a stays resolved


def test_duplicates_are_acknowledged_without_being_stored_again(
    incidents: IncidentStore,
) -> None:
    from macha_obs.models import AlertGroup

    group = AlertGroup.model_validate(payload(alert(unit="a.service")))
    for _ in range(5):
        incidents.ingest(group, "{}", group.alerts)
    assert incidents.inbox_count() == 1


def test_resolved_only_alerts_open_nothing(url: str, app: ReceiverApp, incidents) -> None:
    body = post(url, payload(resolved(alert(unit="x.service")))).json()
    assert body["incident"] is None
    assert incidents.open_incidents() == []
    assert app.seen == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}]
)
def test_wrong_or_missing_token_is_401(url: str, headers, incidents: IncidentStore) -> None:
    resp = requests.post(url, data=json.dumps(payload(alert())), headers=headers, timeout=10)
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert incidents.inbox_count() == 0


def test_body_limit_is_413(url: str, incidents: IncidentStore) -> None:
    big = payload(*[alert(unit=f"u{i}.service") for i in range(40)])
    assert len(json.dumps(big)) > 4096
    resp = post(url, big)
    assert resp.status_code == 413
    assert "exceeds 4096" in resp.json()["error"]
    assert incidents.inbox_count() == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "invalid JSON"),
        (b"\xff\xfe", "invalid JSON"),
        (b"[]", "not an Alertmanager v4 payload"),
        (json.dumps({**payload(alert()), "version": "3"}).encode(), "version"),
        (json.dumps(payload({**alert(), "status": "weird"})).encode(), "alerts.0.status"),
        (json.dumps(payload({**alert(), "startsAt": "yesterday"})).encode(), "startsAt"),
    ],
)
def test_invalid_bodies_are_400_with_a_message(url: str, app: ReceiverApp, body, message) -> None:
    resp = post(url, body)
    assert resp.status_code == 400
    assert message in resp.json()["error"]
    assert app.stats.snapshot()["deliveries"]["invalid"] == 1


def test_get_is_405(url: str) -> None:
    assert requests.get(url, headers=AUTH, timeout=10).status_code == 405


def test_other_hosts_are_acknowledged_counted_and_ignored(url: str, app: ReceiverApp, incidents):
    body = post(url, payload(alert(instance="db7:9100"), alert(instance="db8:9100"))).json()
    assert body["status"] == "ignored"
    assert incidents.inbox_count() == 0
    mixed = payload(alert(instance="db7:9100"), alert(instance="web1:9100", unit="a.service"))
    body = post(url, mixed).json()
    assert (body["status"], body["new_alerts"], body["ignored"]) == ("accepted", 1, 1)
    assert app.stats.snapshot()["alerts"]["ignored"] == 3


def test_the_sidecars_own_alerts_are_for_people(url: str, app: ReceiverApp, incidents):
    """audience=human (approvals pending, breaker open, sidecar down): never self-healed."""
    own = alert("MachaCircuitOpen", instance="web1:9100", audience="human")
    body = post(url, payload(own)).json()
    assert body["status"] == "ignored"
    assert incidents.inbox_count() == 0
    assert incidents.pending_analysis() == []
    assert app.stats.snapshot()["alerts"]["ignored"] == 1


def test_truncated_alerts_are_counted(url: str, app: ReceiverApp) -> None:
    assert post(url, payload(alert(), truncated=7)).status_code == 200
    assert app.stats.snapshot()["truncated"]["alerts"] == 7


def test_host_matcher() -> None:
    m = HostMatcher("web1.example.org", ["www"], ["instance", "host"])
    assert not m.is_local(_a(instance="web1:9100"))  # a short name only when declared
    assert m.is_local(_a(instance="WEB1.example.org"))
    assert m.is_local(_a(instance="[::1]:9100"))
    assert m.is_local(_a(host="www"))
    assert m.is_local(_a(instance="127.0.0.1:9847"))
    assert m.is_local(_a())
    assert not m.is_local(_a(instance="web2:9100"))
    assert not m.is_local(_a(host="db"))
    assert not HostMatcher("h", loopback_is_local=False).is_local(_a(instance="localhost:1"))


def _a(**labels: str):
    from macha_obs.models import Alert

    return Alert.model_validate(alert(**labels))


def test_read_token(tmp_path: Path) -> None:
    (tmp_path / "t").write_text(" abc \n")
    assert read_token(tmp_path / "t") == "abc"
    (tmp_path / "e").write_text("\n")
    with pytest.raises(ValueError, match="one non-empty word"):
        read_token(tmp_path / "e")


def test_from_config_reads_the_token_file(make_config, store: Store, tmp_path: Path) -> None:
    (tmp_path / "tok").write_text(TOKEN)
    cfg = make_config(webhook_token_file=str(tmp_path / "tok"), webhook_max_body_bytes=2048)
    receiver = ReceiverApp.from_config(cfg, store)
    assert receiver.token == TOKEN
    assert receiver.max_body_bytes == 2048
    assert receiver.hosts is not None
    assert "testhost" in receiver.hosts.names


def test_by_default_from_config_generates_a_token(make_config, store: Store) -> None:
    """DESIGN.md invariant 13: no token file configured still means a token."""
    for listen in ("127.0.0.1:9847", "0.0.0.0:9847"):
        cfg = make_config(listen_address=listen)
        receiver = ReceiverApp.from_config(cfg, store)
        assert receiver.token == read_token(token_path(cfg.state_dir))
        assert token_path(cfg.state_dir).stat().st_mode & 0o777 == 0o600


def test_invariant_13_opting_out_is_loopback_only(make_config, store: Store) -> None:
    with pytest.raises(WebhookTokenError, match="beyond loopback"):
        ReceiverApp.from_config(
            make_config(listen_address="0.0.0.0:9847", webhook_auth=False), store
        )
    opted_out = make_config(webhook_auth=False)
    assert ReceiverApp.from_config(opted_out, store).token is None
    assert not token_path(opted_out.state_dir).exists()


def test_invariant_13_default_receiver_refuses_unauthenticated_alerts(
    make_config, store: Store, incidents: IncidentStore
) -> None:
    cfg = make_config()
    receiver = ReceiverApp.from_config(cfg, store)
    token = read_token(token_path(cfg.state_dir))
    body = payload(alert(unit="nginx.service", instance="testhost"))
    with serve_wsgi(receiver) as base:
        refused = requests.post(base + "/alerts", json=body, timeout=10)
        wrong = requests.post(
            base + "/alerts", json=body, headers={"Authorization": "Bearer x"}, timeout=10
        )
        assert incidents.open_incidents() == []
        accepted = requests.post(
            base + "/alerts", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
    assert (refused.status_code, wrong.status_code) == (401, 401)
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="macha-obs"'
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["status"] == "accepted"
    assert receiver.stats.snapshot()["deliveries"]["unauthorized"] == 2


def test_payload_survives_a_restart(tmp_path: Path) -> None:
    """Acknowledged means committed: a new Store on the same dir sees the delivery."""
    with Store(tmp_path / "s") as first:
        app = ReceiverApp(IncidentStore(first), token=None)
        with serve_wsgi(app) as base:
            resp = requests.post(
                base + "/alerts", json=payload(alert(unit="a.service")), timeout=10
            )
        assert resp.status_code == 200
    with Store(tmp_path / "s") as again:
        inc = IncidentStore(again)
        assert inc.inbox_count() == 1
        assert inc.pending_analysis() == [resp.json()["incident"]]


# ---------------------------------------------------------------- findings


def finding(kind: FindingKind, subject: str, unit: str | None = None) -> Finding:
    return Finding(kind=kind, subject=subject, summary=f"{kind.value} {subject}", unit=unit)


def test_findings_join_the_alert_incident_of_their_unit(url: str, incidents: IncidentStore):
    incident_id = post(url, payload(alert(unit="nginx.service"))).json()["incident"]
    incidents.mark_analyzed(incident_id, 1)
    fails = finding(FindingKind.UNIT_FAILED, "nginx.service", "nginx.service")
    disk = finding(FindingKind.DISK_FILLING, "/var")
    changed = sync_findings(incidents, [fails, disk])
    assert incident_id in changed
    assert len(changed) == 2
    state = incidents.get(incident_id)
    assert state is not None
    assert state.incident.findings == [fails]
    assert sync_findings(incidents, [fails, disk]) == []  # no change, no new analysis
    others = [s for s in incidents.open_incidents() if s.incident.source == "finding"]
    assert [s.incident.findings for s in others] == [[disk]]
    sync_findings(incidents, [fails])  # the disk finding went away
    assert incidents.get(others[0].incident.id).status == "resolved"  # type: ignore[union-attr]


def test_assign_findings_is_pure() -> None:
    from macha_obs.models import Alert, Incident

    inc = Incident(id="i", source="alert", alerts=[Alert.model_validate(alert(unit="a.service"))])
    joined, alone = assign_findings(
        [inc],
        [finding(FindingKind.UNIT_FAILED, "a", "a.service"), finding(FindingKind.DNS_FAILING, "x")],
    )
    assert [f.subject for f in joined["i"]] == ["a"]
    assert list(alone) == ["dns_failing:x"]


# ---------------------------------------------------------------- malformed bodies are 4xx


def call(app: ReceiverApp, body: bytes, **environ: object) -> tuple[int, dict]:
    """The webhook as a plain WSGI callable: framing headers exactly as a server passes them."""
    base: dict[str, object] = {
        "REQUEST_METHOD": "POST",
        "HTTP_AUTHORIZATION": f"Bearer {TOKEN}",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    started: list[str] = []
    out = app({**base, **environ}, lambda status, headers: started.append(status))
    return int(started[0].split()[0]), json.loads(b"".join(out))


@pytest.mark.parametrize(
    ("length", "status"),
    [
        ("²", 400),  # "²".isdigit() is True, and int("²") raised: a 500 before
        ("٣", 400),
        ("-1", 400),
        ("1e3", 400),
        ("+5", 400),
        ("5, 5", 400),
        ("", 411),
        ("9" * 20, 413),
        ("1" * 5000, 413),  # int() refuses over 4300 digits: a 500 before
    ],
)
def test_content_length_is_ascii_digits(app: ReceiverApp, length: str, status: int) -> None:
    code, answer = call(app, json.dumps(payload(alert())).encode(), CONTENT_LENGTH=length)
    assert code == status, answer
    assert app.stats.snapshot()["deliveries"]["accepted"] == 0


def test_content_length_may_carry_whitespace(app: ReceiverApp) -> None:
    body = json.dumps(payload(alert(unit="a.service"))).encode()
    assert call(app, body, CONTENT_LENGTH=f" {len(body)} ")[0] == 200


def test_chunked_bodies_are_411(app: ReceiverApp, incidents: IncidentStore) -> None:
    code, answer = call(app, b"0\r\n\r\n", CONTENT_LENGTH="", HTTP_TRANSFER_ENCODING="chunked")
    assert code == 411
    assert "Content-Length" in answer["error"]
    assert incidents.inbox_count() == 0


def test_a_body_that_times_out_is_400(app: ReceiverApp) -> None:
    class Stalled(io.RawIOBase):
        def read(self, size: int = -1) -> bytes:
            raise TimeoutError("timed out")

    code, answer = call(app, b"", CONTENT_LENGTH="100", **{"wsgi.input": Stalled()})
    assert code == 400
    assert "shorter" in answer["error"]


def _with(group_key: str = "g", **labels: str) -> dict:
    return payload(alert(unit="a.service", **labels), group_key=group_key)


@pytest.mark.parametrize(
    "body",
    [
        _with("\ud800"),  # once a 503 from SQLite, which Alertmanager retries for ever
        _with(note="a\udfffb"),
        {**_with(), "commonAnnotations": {"x": "\udc00"}},
        {**_with(), "an ignored field": ["\ud83d"]},
    ],
    ids=["groupKey", "label", "annotation", "ignored field"],
)
def test_lone_surrogates_anywhere_are_400_and_nothing_is_stored(
    url: str, app: ReceiverApp, incidents: IncidentStore, body: dict
) -> None:
    data = json.dumps(body).encode()  # ensure_ascii: "\ud800" escapes, valid JSON
    assert b"\\ud" in data
    resp = post(url, data)
    assert resp.status_code == 400, resp.text
    assert "surrogate" in resp.json()["error"]
    assert incidents.inbox_count() == 0
    assert app.stats.snapshot()["deliveries"]["invalid"] == 1


def test_a_surrogate_pair_is_a_character_like_any_other(url: str) -> None:
    resp = post(url, json.dumps(_with("\U0001f600", note="\U0001f600")).encode())
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "accepted"


def test_nul_in_label_values_is_data_stored_as_sent(url: str, incidents: IncidentStore) -> None:
    """Decided: NUL is accepted (SQLite stores it; a unit name with one is no unit)."""
    resp = post(url, payload(alert(unit="a\x00.service", note="x\x00y")))
    assert resp.status_code == 200, resp.text
    state = incidents.get(resp.json()["incident"])
    assert state is not None
    assert state.incident.alerts[0].labels["note"] == "x\x00y"
    assert state.incident.units == []


@pytest.mark.parametrize(
    "body",
    [b'{"version": 1' + b"1" * 5000 + b"}", b"[" * 3000, b'{"a": "\xed\xa0\x80"}'],
    ids=["a 5000-digit number", "nested 3000 deep", "a surrogate in UTF-8"],
)
def test_json_no_parser_takes_is_400(incidents: IncidentStore, body: bytes) -> None:
    code, answer = call(ReceiverApp(incidents, token=TOKEN), body)  # the default 1 MiB bound
    assert code == 400, answer
    assert "invalid JSON" in answer["error"]


def test_per_payload_bounds(incidents: IncidentStore) -> None:
    app = ReceiverApp(incidents, token=TOKEN, max_alerts=3, max_labels=6, max_label_chars=50)
    many = payload(*[alert(unit=f"u{i}.service") for i in range(4)])
    code, answer = call(app, json.dumps(many).encode())
    assert code == 413
    assert answer["error"] == (
        "4 alerts exceed 3 per notification; set max_alerts on the webhook config"
    )
    labels = {f"l{i}": "v" for i in range(5)}  # with alertname and severity: 7
    code, answer = call(app, json.dumps(payload(alert(**labels))).encode())
    assert (code, answer["error"]) == (400, "alerts.0.labels: 7 labels exceed 6")
    code, answer = call(app, json.dumps(payload(alert(note="x" * 51))).encode())
    assert (code, answer["error"]) == (400, "alerts.0.labels: a label over 50 characters")
    code, answer = call(
        app, json.dumps({**payload(alert()), "groupLabels": labels | {"a": "b", "c": "d"}}).encode()
    )
    assert (code, answer["error"]) == (400, "groupLabels: 7 labels exceed 6")
    assert incidents.inbox_count() == 0
    ok = payload(*[alert(unit=f"u{i}.service", note="x" * 50) for i in range(3)])
    assert call(app, json.dumps(ok).encode())[0] == 200
    stats = app.stats.snapshot()["deliveries"]
    assert (stats["too_large"], stats["invalid"], stats["accepted"]) == (1, 3, 1)


def test_default_bounds_sit_above_what_alertmanager_sends() -> None:
    from macha_obs.intake import webhook as receiver

    assert (receiver.MAX_ALERTS, receiver.MAX_LABELS, receiver.MAX_LABEL_CHARS) == (1000, 128, 2048)


def test_a_lost_store_gets_a_503_though_the_write_went_through(
    incidents: IncidentStore, store: Store
) -> None:
    """Issue 21: a write into a deleted or truncated state.db succeeds (SQLite writes its
    WAL), so the store's own verdict, asked after the write, decides: 503, Alertmanager
    keeps the delivery. A write error clears with the next write that succeeds."""
    lost: list[str | None] = ["state.db was deleted while the daemon ran"]
    receiver = ReceiverApp(incidents, token=TOKEN, store_problem=lambda: lost[0])
    body = json.dumps(payload(alert(unit="nginx.service"))).encode()
    assert call(receiver, body) == (503, {"error": "state.db was deleted while the daemon ran"})
    assert receiver.stats.snapshot()["deliveries"]["store_error"] == 1
    lost[0] = None  # the store usable again, the same delivery again: acknowledged (this
    # store was never really lost, so it holds it already: a duplicate, harmless)
    status, answer = call(receiver, body)
    assert (status, answer["status"]) == (200, "duplicate")
