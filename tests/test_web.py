"""The approvals page over a real listener (port 0), a real store and the real Remediator,
with the executor seam recorded (tests/harness/recording.py): every attack on the page's
credentials and forms, hostile text, exactly-once, and the links the metrics export
(plain URLs: nothing scraped decides anything). Logins, sessions and wrong tokens are in
tests/test_web_login.py.

The same flows in a real browser against the real daemon and the lab systemd are in
tests/test_approvals_page.py.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client import CollectorRegistry

from macha_obs.config import Config
from macha_obs.metrics import PersistentState, SelfCollector, scrape_text
from macha_obs.metrics.loop import LoopStats
from macha_obs.metrics.sidecar import ApprovalLink
from macha_obs.models import Approval, ApprovalStatus, RestartUnit, Risk
from macha_obs.policy.scope import Scope
from macha_obs.remediate.remediator import Remediator
from macha_obs.server import make_app, shutdown, start_server
from macha_obs.statedir import StateDirError
from macha_obs.store import Store
from macha_obs.web import ApprovalsApp, Links, Signer, SigningKeyError, ensure_key
from macha_obs.web.links import base_path, base_url
from macha_obs.web.render import esc
from tests.harness.recording import RecordingExecutor

TOKEN = "t0ken-for-the-page"
UNIT = "web-demo.service"
HOSTILE = (
    '<script>alert(1)</script> "><img src=x onerror=alert(2)> '
    "javascript:alert(3) \u202eevil\u202c\nrisk: low \x1b[2J"
)


@dataclass
class Bench:
    cfg: Config
    store: Store
    executor: RecordingExecutor
    app: ApprovalsApp
    signer: Signer
    links: Links
    url: str
    offset: list[float]  # seconds the page's clock is ahead of the real one

    def queue(self, unit: str = UNIT, evidence: list[str] | None = None) -> Approval:
        return self.store.approvals.enqueue(
            "inc-1",
            RestartUnit(unit=unit),
            risk=Risk.MEDIUM,
            reason=f"suggest mode queues every action. Proposed because: {HOSTILE}",
            evidence=evidence or [f"{unit} failed", HOSTILE],
            ttl=3600,
        )

    def link(self, approval: Approval) -> str:
        return self.links.item(approval)

    def login(self) -> requests.Session:
        """A browser logged in with the token (its session cookie)."""
        session = requests.Session()
        reply = session.post(
            f"{self.url}/approvals/login", data={"token": TOKEN}, timeout=10, allow_redirects=False
        )
        assert reply.status_code == 303, reply.text
        return session

    def state(self) -> str:
        """Everything a request could have changed: the queue, the ledger, the runs."""
        items = [a.model_dump(mode="json") for a in self.store.approvals.list_approvals()]
        actions = [a.model_dump(mode="json") for a in self.store.ledger.list_actions(100)]
        return json.dumps([items, actions, [str(a) for a in self.executor.ran]])


@pytest.fixture
def bench(make_config: Callable[..., Config]) -> Iterator[Bench]:
    cfg = make_config(autonomy_level="suggest", verify_settle=0, listen_address="127.0.0.1:0")
    store = Store(cfg.state_dir)
    executor = RecordingExecutor()  # units not named are failed: the problem is there
    remediator = Remediator(
        cfg, store, executor, scope_of=lambda _ids: Scope(units=frozenset({UNIT, "other.service"}))
    )
    signer = Signer(ensure_key(cfg.state_dir))
    offset = [0.0]
    app = ApprovalsApp(store, remediator, signer, TOKEN, clock=lambda: time.time() + offset[0])
    server, thread = start_server("127.0.0.1", 0, make_app(CollectorRegistry(), pages_app=app))
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield Bench(cfg, store, executor, app, signer, Links(url), url, offset)
    finally:
        shutdown(server, thread)
        store.close()


def get(url: str, **kw: Any) -> requests.Response:
    return requests.get(url, timeout=10, allow_redirects=False, **kw)


def post(url: str, data: dict[str, str], **kw: Any) -> requests.Response:
    return requests.post(url, data=data, timeout=30, allow_redirects=False, **kw)


def form_fields(page: str, verb: str = "approve") -> tuple[str, dict[str, str]]:
    """The decision form's action and hidden fields, as a browser would submit them."""
    match = re.search(rf'<form method=post action="([^"]*/{verb})">(.*?)</form>', page, re.S)
    assert match, page
    fields = dict(re.findall(r'<input type=hidden name="([^"]+)" value="([^"]*)">', match[2]))
    return match[1].replace("&amp;", "&"), fields


def assert_refusal(reply: requests.Response, status: int) -> None:
    assert reply.status_code == status, reply.text
    assert reply.headers["Content-Type"].startswith("text/html")
    assert "Traceback" not in reply.text
    assert 'File "' not in reply.text


# ---------------------------------------------------------------- signing, pure


def test_csrf_tokens_are_bound_and_expire() -> None:
    signer = Signer(b"s" * 32)
    now = 1_800_000_000.0
    token = signer.csrf(3, "session:abc", now, now + 60)
    assert signer.csrf_valid(token, 3, "session:abc", now)
    assert not signer.csrf_valid(token, 4, "session:abc", now)  # another item
    assert not signer.csrf_valid(token, 3, "session:abd", now)  # another credential
    assert not signer.csrf_valid(token, 3, "session:abc", now + 61)  # ends with its credential
    assert not signer.csrf_valid(None, 3, "session:abc", now)
    assert not Signer(b"k" * 32).csrf_valid(token, 3, "session:abc", now)  # another key


def test_the_key_is_private_and_an_unsafe_one_is_refused(tmp_path: Path) -> None:
    key = ensure_key(tmp_path)
    path = tmp_path / "approvals.key"
    assert len(key) == 32
    assert ensure_key(tmp_path) == key
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o640)
    with pytest.raises(SigningKeyError, match="readable by others"):
        ensure_key(tmp_path)
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StateDirError, match="symlink"):
        ensure_key(tmp_path)


def test_links_are_built_from_the_external_url_or_the_listener() -> None:
    assert base_url(None, "127.0.0.1", 9847, "h") == "http://127.0.0.1:9847"
    assert base_url(None, "0.0.0.0", 9847, "box") == "http://box:9847"
    assert base_url(None, "::1", 9847, "h") == "http://[::1]:9847"
    assert base_url("https://proxy.example.org/macha/", "127.0.0.1", 1, "h") == (
        "https://proxy.example.org/macha"
    )
    assert base_path("https://proxy.example.org/macha") == "/macha"


# ---------------------------------------------------------------- reading


def test_invariant_13_every_page_needs_a_credential(bench: Bench) -> None:
    a = bench.queue()
    assert_refusal(get(f"{bench.url}/approvals"), 401)
    assert_refusal(get(f"{bench.url}/approvals/{a.id}"), 401)
    assert_refusal(get(bench.link(a)), 401)  # the alert's link alone opens nothing
    assert_refusal(get(f"{bench.url}/approvals", headers={"Authorization": "Bearer nope"}), 401)
    assert_refusal(get(f"{bench.url}/approvals", headers={"Authorization": f"Basic {TOKEN}"}), 401)
    assert get(f"{bench.url}/approvals/login").status_code == 200  # only the form
    # where a link lands without the token: the login form, leading back to the item
    page = get(bench.link(a)).text
    assert f'name="next" value="/approvals/{a.id}"' in page
    assert "<input type=password id=token" in page
    assert "Approval" not in page.partition("</h1>")[2].partition("<form")[0]


def test_invariant_9_hostile_text_is_shown_inert_and_escaped(bench: Bench) -> None:
    a = bench.queue()
    reply = bench.login().get(bench.link(a), timeout=10)
    assert reply.status_code == 200
    page = reply.text
    for raw in ("<script>", "<img", "onerror=alert(2)>", "\u202e", "\x1b"):
        assert raw not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    assert "\\u202eevil\\u202c\\nrisk: low \\x1b[2J" in page
    assert esc(HOSTILE) in page
    csp = reply.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert "script-src" not in csp
    assert "frame-ancestors 'none'" in csp
    assert reply.headers["X-Frame-Options"] == "DENY"
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.headers["Referrer-Policy"] == "no-referrer"
    # no asset from anywhere: no src=, no external href, no script
    assert not re.search(r"<(script|img|link|iframe|object)\b", page)
    listed = get(f"{bench.url}/approvals", headers={"Authorization": f"Bearer {TOKEN}"})
    assert listed.status_code == 200
    assert "<script>" not in listed.text
    assert f"/approvals/{a.id}" in listed.text


def test_no_get_of_any_link_changes_anything(bench: Bench) -> None:
    a = bench.queue()
    b = bench.queue("other.service")
    before = bench.state()
    decisions = bench.cfg.state_dir / "decisions.jsonl"
    logged = decisions.read_text() if decisions.exists() else ""
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for item in (a, b):
        base = bench.link(item)
        for url in (base, f"{base}/approve", f"{base}/reject", f"{base}/approve?csrf=x"):
            for headers in ({}, bearer):
                for method in (requests.get, requests.head):
                    reply = method(url, headers=headers, timeout=10, allow_redirects=False)
                    assert reply.status_code in (200, 401, 405), (url, reply.status_code)
    assert bench.state() == before
    assert (decisions.read_text() if decisions.exists() else "") == logged
    assert bench.executor.ran == []


def test_odd_requests_get_a_clear_page(bench: Bench) -> None:
    a = bench.queue()
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert_refusal(get(f"{bench.url}/approvals/x1", headers=bearer), 404)
    assert_refusal(get(f"{bench.url}/approvals/\u0661", headers=bearer), 404)
    assert_refusal(get(f"{bench.url}/approvals/{'9' * 25}", headers=bearer), 404)
    assert_refusal(get(f"{bench.url}/approvals/12345", headers=bearer), 404)
    assert_refusal(get(f"{bench.url}/approvals/{a.id}/explode", headers=bearer), 404)
    assert_refusal(get(f"{bench.url}/approvals?a=%ff", headers=bearer), 400)
    url = f"{bench.url}/approvals/{a.id}/approve"
    assert_refusal(requests.put(url, headers=bearer, timeout=10), 405)
    assert_refusal(post(url, {}, headers={**bearer, "Content-Type": "text/plain"}), 415)
    big = {"csrf": "x" * 20000}
    assert_refusal(post(url, big, headers=bearer), 413)
    assert bench.executor.ran == []


def test_a_failing_page_shows_no_trace(bench: Bench) -> None:
    def broken(_approval: Approval) -> str:
        raise RuntimeError("secret internals")

    a = bench.queue()
    browser = bench.login()
    bench.app.history = broken  # a seam failing is a missing line, not a failed page
    assert browser.get(bench.link(a), timeout=10).status_code == 200
    bench.app.queue = None  # type: ignore[assignment]  # every read now fails
    reply = browser.get(bench.link(a), timeout=10)
    assert_refusal(reply, 500)
    assert "secret internals" not in reply.text
    assert "macha-approve list --all" in reply.text


# ---------------------------------------------------------------- deciding


def test_a_decision_needs_the_forms_csrf_token(bench: Bench) -> None:
    a = bench.queue()
    b = bench.queue("other.service")
    browser = bench.login()
    action, fields = form_fields(browser.get(bench.link(a), timeout=10).text)
    _, b_fields = form_fields(browser.get(bench.link(b), timeout=10).text)
    before = bench.state()
    target = f"{bench.url}{action}"
    for data in (
        {**{k: v for k, v in fields.items() if k != "csrf"}, "reason": ""},  # missing
        {**fields, "csrf": "1999999999." + "A" * 43},  # forged
        {**fields, "csrf": b_fields["csrf"]},  # another item's
        {**fields, "csrf": fields["csrf"] + "x"},  # tampered
    ):
        reply = browser.post(target, data=data, timeout=10, allow_redirects=False)
        assert_refusal(reply, 403)
        assert "Nothing was done" in reply.text
    # the form of one session, in another session or with a bearer: bound to its credential
    assert_refusal(bench.login().post(target, data=fields, timeout=10, allow_redirects=False), 403)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert_refusal(post(target, {"csrf": fields["csrf"]}, headers=bearer), 403)
    # and without any credential at all
    assert_refusal(post(target, {"csrf": fields["csrf"]}), 401)
    # an old form: CSRF tokens last an hour at most
    bearer_page = get(f"{bench.url}/approvals/{a.id}", headers=bearer).text
    _, bearer_fields = form_fields(bearer_page)
    bench.offset[0] = 3601.0
    assert_refusal(post(target, bearer_fields, headers=bearer), 403)
    assert bench.state() == before


def test_approve_runs_once_and_the_next_page_shows_the_outcome(bench: Bench) -> None:
    a = bench.queue()
    browser = bench.login()
    action, fields = form_fields(browser.get(bench.link(a), timeout=10).text)
    reply = browser.post(
        f"{bench.url}{action}",
        data=fields,
        headers={"X-Forwarded-For": "203.0.113.9"},
        timeout=30,
        allow_redirects=False,
    )
    assert reply.status_code == 303
    location = reply.headers["Location"]
    assert location.startswith(f"/approvals/{a.id}?outcome=")
    page = browser.get(f"{bench.url}{location}", timeout=10).text
    assert "You approved it" in page
    assert "verified" in page
    assert "<form method=post action" not in page.replace('action="/approvals/logout"', "")
    # the same form again (a double click, a replay): nothing runs a second time
    again = browser.post(f"{bench.url}{action}", data=fields, timeout=30, allow_redirects=False)
    assert_refusal(again, 409)
    assert "executed, not pending" in again.text
    assert len(bench.executor.ran) == 1
    done = bench.store.approvals.get_approval(a.id)
    assert done is not None
    assert done.status is ApprovalStatus.EXECUTED
    assert done.decided_by == "web:127.0.0.1 for 203.0.113.9 (token login)"
    records = [
        json.loads(line)
        for line in (bench.cfg.state_dir / "decisions.jsonl").read_text().splitlines()
    ]
    web = [r for r in records if r.get("event") == "approval_web"]
    assert web[0]["remote"] == "127.0.0.1 for 203.0.113.9"
    assert web[0]["credential"] == "token login"
    assert web[0]["via"] == "web"
    # a crafted outcome name puts no words on the page
    forged = browser.get(f"{bench.link(a)}?outcome=forged", timeout=10).text
    assert "You approved" not in forged


def test_invariant_5_two_web_approvals_at_once_execute_once(bench: Bench) -> None:
    a = bench.queue()
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    action, fields = form_fields(get(bench.link(a), headers=bearer).text)
    replies: list[int] = []
    start = threading.Barrier(4)

    def click() -> None:
        start.wait()
        replies.append(post(f"{bench.url}{action}", fields, headers=bearer).status_code)

    threads = [threading.Thread(target=click) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(replies) == [303, 409, 409, 409]
    assert len(bench.executor.ran) == 1


def test_reject_with_a_reason_through_a_login_session(bench: Bench) -> None:
    a = bench.queue()
    session = requests.Session()
    wrong = session.post(f"{bench.url}/approvals/login", data={"token": "nope"}, timeout=10)
    assert wrong.status_code == 401
    assert "not the token" in wrong.text
    login = session.post(
        f"{bench.url}/approvals/login", data={"token": TOKEN}, timeout=10, allow_redirects=False
    )
    assert login.status_code == 303
    cookie = login.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/approvals" in cookie
    assert TOKEN not in cookie
    listed = session.get(f"{bench.url}/approvals", timeout=10)
    assert listed.status_code == 200
    assert f"/approvals/{a.id}" in listed.text
    action, fields = form_fields(
        session.get(f"{bench.url}/approvals/{a.id}", timeout=10).text, "reject"
    )
    reply = session.post(
        f"{bench.url}{action}",
        data={**fields, "reason": HOSTILE},
        timeout=10,
        allow_redirects=False,
    )
    assert reply.status_code == 303
    page = session.get(f"{bench.url}{reply.headers['Location']}", timeout=10).text
    assert "You rejected it" in page
    assert "<script>" not in page
    done = bench.store.approvals.get_approval(a.id)
    assert done is not None
    assert done.status is ApprovalStatus.REJECTED
    assert done.decided_by == "web:127.0.0.1 (token login)"
    assert done.note == HOSTILE.strip()
    assert bench.executor.ran == []


def test_a_cancelled_items_approve_button_does_nothing(bench: Bench) -> None:
    a = bench.queue()
    browser = bench.login()
    action, fields = form_fields(browser.get(bench.link(a), timeout=10).text)  # open ...
    assert bench.store.approvals.cancel_approval(
        a.id, "the problem is gone: web-demo.service is active"
    )
    page = browser.get(bench.link(a), timeout=10).text  # ... and, reloaded, what happened
    assert "cancelled" in page
    assert "the problem is gone" in page
    assert f'action="/approvals/{a.id}/approve"' not in page
    reply = browser.post(f"{bench.url}{action}", data=fields, timeout=10, allow_redirects=False)
    assert_refusal(reply, 409)
    assert "cancelled, not pending" in reply.text
    assert bench.executor.ran == []


def test_when_the_policy_says_not_now_the_item_stays_and_the_page_says_why(
    bench: Bench, make_config: Callable[..., Config]
) -> None:
    a = bench.queue()
    observe = make_config(autonomy_level="observe", verify_settle=0)
    bench.app.desk = Remediator(
        observe, bench.store, bench.executor, scope_of=lambda _ids: Scope(units=frozenset({UNIT}))
    )
    browser = bench.login()
    action, fields = form_fields(browser.get(bench.link(a), timeout=10).text)
    reply = browser.post(f"{bench.url}{action}", data=fields, timeout=30, allow_redirects=False)
    assert reply.status_code == 303
    page = browser.get(f"{bench.url}{reply.headers['Location']}", timeout=10).text
    assert "Not carried out now" in page
    assert "stays pending" in page
    assert bench.executor.ran == []


def test_invariant_12_approving_an_item_whose_problem_is_gone_runs_nothing(bench: Bench) -> None:
    a = bench.queue()
    browser = bench.login()
    action, fields = form_fields(browser.get(bench.link(a), timeout=10).text)
    bench.executor.states[UNIT] = "active"  # it recovered before anyone pressed the button
    reply = browser.post(f"{bench.url}{action}", data=fields, timeout=30, allow_redirects=False)
    assert reply.status_code == 303
    page = browser.get(f"{bench.url}{reply.headers['Location']}", timeout=10).text
    assert "Nothing was run: the policy refused it now" in page
    assert "it is cancelled" in page
    assert bench.executor.ran == []


# ---------------------------------------------------------------- the alert's links


def _scrape(links: tuple[ApprovalLink, ...]) -> str:
    registry = CollectorRegistry()
    state = PersistentState(0, False, "suggest", "suggest", approval_links=links)  # type: ignore[arg-type]
    registry.register(SelfCollector(LoopStats(), lambda: state))
    return scrape_text(registry).decode()


def _pending_links(bench: Bench) -> tuple[ApprovalLink, ...]:
    pending = bench.links.pending(bench.store.approvals.list_approvals({ApprovalStatus.PENDING}))
    return tuple(ApprovalLink(x.id, x.action.kind, x.risk.value, url) for x, url in pending)


def test_the_metrics_carry_each_items_plain_page_and_one_for_the_oldest(bench: Bench) -> None:
    a = bench.queue()
    b = bench.queue("other.service")
    text = _scrape(_pending_links(bench))
    assert f'macha_approvals_link_info{{url="{bench.url}/approvals/{a.id}"}} 1.0' in text
    for item in (a, b):
        assert (
            f'macha_approval_pending_info{{approval_id="{item.id}",kind="restart_unit",'
            f'risk="medium",url="{bench.url}/approvals/{item.id}"}} 1.0'
        ) in text
    assert "?" not in bench.link(a)  # no query: nothing signed, nothing that decides
    empty = _scrape(())
    assert "macha_approvals_link_info" not in empty
    assert "macha_approval_pending_info" not in empty


def try_every_url(text: str, base: str) -> list[int]:
    """Every URL in `text` as a person without the token would use it: opened, each form
    it shows posted, and approve/reject posted beside it. The statuses seen."""
    seen: list[int] = []
    urls = set(re.findall(r"https?://[^\s\"'<>\\,}]+", text))
    for url in sorted(urls):
        if not url.startswith(base):
            continue
        page = get(url)
        seen.append(page.status_code)
        forms = re.findall(r'<form method=post action="([^"]*)">(.*?)</form>', page.text, re.S)
        targets = [(f"{base}{action}", body) for action, body in forms]
        item = url.partition("?")[0].rstrip("/")
        targets += [(f"{item}/{verb}", "") for verb in ("approve", "reject")]
        for target, body in targets:
            fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', body))
            reply = post(target.replace("&amp;", "&"), {**fields, "reason": "no"})
            seen.append(reply.status_code)
    return seen


def test_nothing_scraped_from_metrics_decides_an_item(bench: Bench) -> None:
    """issue 20: /metrics has no authentication, so nothing on it may be a capability."""
    a = bench.queue()
    b = bench.queue("other.service")
    before = bench.state()
    text = _scrape(_pending_links(bench))
    seen = try_every_url(text, bench.url)
    assert len(seen) >= 2 * 3, seen  # both items' pages found, and tried
    assert 200 not in seen
    assert 303 not in seen  # nothing was decided (a decision redirects)
    assert bench.state() == before
    for item in (a, b):
        got = bench.store.approvals.get_approval(item.id)
        assert got is not None
        assert got.status is ApprovalStatus.PENDING
    assert bench.executor.ran == []
