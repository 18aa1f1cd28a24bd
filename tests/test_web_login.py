"""Logging in to the approvals page, over a real listener (port 0) and a real store: a
logout ends the session on the server, wrong tokens are logged (never the guess) and
counted in /metrics, and an address that keeps guessing is slowed down, without the
right token being locked out. The page's clock is injected: no test waits for time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import requests
from prometheus_client import CollectorRegistry

from macha_obs.config import Config
from macha_obs.metrics import LoginCollector, scrape_text
from macha_obs.models import Approval, RestartUnit, Risk
from macha_obs.policy.scope import Scope
from macha_obs.remediate.remediator import Remediator
from macha_obs.server import make_app, shutdown, start_server
from macha_obs.store import Store
from macha_obs.web import ApprovalsApp, LoginStats, Signer, ensure_key
from macha_obs.web.sessions import (
    FORGET_AFTER,
    MAX_BACKOFF,
    SESSION_SECONDS,
    LoginGuard,
    Sessions,
    address_key,
)
from tests.harness.recording import RecordingExecutor

TOKEN = "the-right-t0ken"
WRONG = "a-guess-n0t-to-log"
UNIT = "login-demo.service"
START = 1_800_000_000.0


@dataclass
class Page:
    url: str
    store: Store
    executor: RecordingExecutor
    stats: LoginStats
    guard: LoginGuard
    sessions: Sessions
    now: list[float]

    def queue(self) -> Approval:
        return self.store.approvals.enqueue(
            "inc-1", RestartUnit(unit=UNIT), risk=Risk.MEDIUM, reason="r", evidence=["e"], ttl=3600
        )

    def login(self, token: str = TOKEN, next_path: str = "") -> requests.Response:
        form = {"token": token, **({"next": next_path} if next_path else {})}
        url = f"{self.url}/approvals/login"
        return requests.post(url, data=form, timeout=10, allow_redirects=False)

    def scrape(self) -> str:
        registry = CollectorRegistry()
        registry.register(LoginCollector(self.stats))
        return scrape_text(registry).decode()


@pytest.fixture
def page(make_config: Callable[..., Config]) -> Iterator[Page]:
    cfg = make_config(autonomy_level="suggest", verify_settle=0)
    store = Store(cfg.state_dir)
    executor = RecordingExecutor()
    desk = Remediator(cfg, store, executor, scope_of=lambda _i: Scope(units=frozenset({UNIT})))
    now = [START]
    stats, guard, sessions = LoginStats(), LoginGuard(), Sessions()
    app = ApprovalsApp(
        store,
        desk,
        Signer(ensure_key(cfg.state_dir)),
        TOKEN,
        clock=lambda: now[0],
        sessions=sessions,
        guard=guard,
        login_stats=stats,
    )
    server, thread = start_server("127.0.0.1", 0, make_app(CollectorRegistry(), pages_app=app))
    try:
        yield Page(
            f"http://127.0.0.1:{server.server_port}", store, executor, stats, guard, sessions, now
        )
    finally:
        shutdown(server, thread)
        store.close()


def cookie_of(reply: requests.Response) -> str:
    return reply.headers["Set-Cookie"].split(";")[0]  # "macha_approvals=<value>"


# ---------------------------------------------------------------- logout


def test_a_cookie_replayed_after_logout_gets_401(page: Page) -> None:
    a = page.queue()
    cookie = cookie_of(page.login())
    copied = {"Cookie": cookie}  # what someone copied from the browser
    item = f"{page.url}/approvals/{a.id}"
    opened = requests.get(item, headers=copied, timeout=10)
    assert opened.status_code == 200
    assert "csrf" in opened.text  # the form was loaded before the logout ...
    out = requests.post(
        f"{page.url}/approvals/logout",
        headers=copied,
        data={"go": ""},
        timeout=10,
        allow_redirects=False,
    )
    assert out.status_code == 303
    assert "Max-Age=0" in out.headers["Set-Cookie"]
    assert len(page.sessions) == 0
    for url in (f"{page.url}/approvals", item):
        assert requests.get(url, headers=copied, timeout=10).status_code == 401
    # ... and its form, replayed with the copied cookie, decides nothing
    csrf = opened.text.split('name="csrf" value="')[1].split('"')[0]
    replay = requests.post(
        f"{item}/approve", data={"csrf": csrf}, headers=copied, timeout=10, allow_redirects=False
    )
    assert replay.status_code == 401
    assert page.executor.ran == []
    # another session of the same person is not ended by this logout
    assert page.login().status_code == 303


def test_a_session_ends_after_its_time_and_the_table_is_bounded() -> None:
    sessions = Sessions(max_sessions=3)
    first, until = sessions.start(START)
    assert until == START + SESSION_SECONDS
    assert sessions.until(first, START + 10) == until
    assert sessions.until(first, until) is None  # over
    values = [sessions.start(START)[0] for _ in range(5)]
    assert len(sessions) == 3
    assert sessions.until(values[0], START) is None  # the oldest went first
    assert sessions.until(values[-1], START) is not None
    for junk in ("", None, "x" * 500, values[-1] + "x"):
        assert sessions.until(junk, START) is None
    assert sessions.end(values[-1])
    assert not sessions.end(values[-1])


# ---------------------------------------------------------------- failures seen


def test_failed_logins_are_logged_without_the_guess_and_counted(
    page: Page, caplog: pytest.LogCaptureFixture
) -> None:
    assert 'macha_web_login_failures_total{reason="wrong_token"} 0.0' in page.scrape()
    caplog.set_level(logging.WARNING, logger="macha_obs.web.account")
    assert page.login(WRONG).status_code == 401
    bearer = {"Authorization": f"Bearer {WRONG}"}
    assert requests.get(f"{page.url}/approvals", headers=bearer, timeout=10).status_code == 401
    assert page.stats.snapshot() == {"wrong_token": 2, "throttled": 0}
    text = page.scrape()
    assert 'macha_web_login_failures_total{reason="wrong_token"} 2.0' in text
    assert 'macha_web_login_failures_total{reason="throttled"} 0.0' in text
    assert "127.0.0.1" not in text  # no address label
    lines = [r.getMessage() for r in caplog.records]
    assert any("wrong token from 127.0.0.1 (2 in a row" in line for line in lines), lines
    assert not any(WRONG in line for line in lines)
    assert WRONG not in caplog.text
    # the right token is no failure, and clears the count
    assert page.login().status_code == 303
    assert page.stats.snapshot()["wrong_token"] == 2
    assert page.guard.wait("127.0.0.1", page.now[0]) == 0


# ---------------------------------------------------------------- slowed down


def test_a_burst_of_wrong_tokens_is_slowed_and_the_right_token_still_logs_in(page: Page) -> None:
    statuses = [page.login(f"{WRONG}{i}").status_code for i in range(50)]  # the clock stands
    assert statuses[:5] == [401] * 5  # the free ones, each looked at
    assert set(statuses[5:]) == {429}  # then refused unchecked
    assert page.stats.snapshot() == {"wrong_token": 5, "throttled": 45}
    item = f"/approvals/{page.queue().id}"
    slowed = page.login(next_path=item)
    assert slowed.status_code == 429  # even the right token waits its address's turn ...
    assert slowed.headers["Retry-After"] == "1"
    assert "try again in" in slowed.text
    assert f'name="next" value="{item}"' in slowed.text  # the form, still leading there
    # ... which the burst did not lengthen: one second after the fifth wrong token
    page.now[0] += 1.0
    right = page.login(next_path=item)
    assert right.status_code == 303
    assert right.headers["Location"] == item
    assert page.guard.wait("127.0.0.1", page.now[0]) == 0  # and the address is clear
    # a bearer guesser is slowed alike
    for _ in range(5):
        bad = requests.get(
            f"{page.url}/approvals", headers={"Authorization": "Bearer x"}, timeout=10
        )
        assert bad.status_code == 401
    bad = requests.get(f"{page.url}/approvals", headers={"Authorization": "Bearer x"}, timeout=10)
    assert bad.status_code == 429
    # a session already started is never slowed: it checks no token
    listed = requests.get(f"{page.url}/approvals", headers={"Cookie": cookie_of(right)}, timeout=10)
    assert listed.status_code == 200


def test_the_backoff_doubles_to_its_cap_per_address_and_is_forgotten() -> None:
    guard = LoginGuard(free=2, max_backoff=MAX_BACKOFF)
    now = START
    waits = []
    for _ in range(12):
        guard.failed("192.0.2.7", now)
        waits.append(guard.wait("192.0.2.7", now))
    assert waits == [0, 1, 2, 4, 8, 16, 32, 60, 60, 60, 60, 60]
    assert MAX_BACKOFF == 60
    assert guard.wait("192.0.2.8", now) == 0  # another address is never slowed
    assert guard.wait("192.0.2.7", now + MAX_BACKOFF) == 0  # the wait ends
    assert len(guard) == 1
    assert guard.wait("192.0.2.7", now + FORGET_AFTER) == 0
    assert len(guard) == 0  # idle that long: forgotten
    guard.failed("192.0.2.7", now + FORGET_AFTER)  # idle that long: a fresh start
    assert guard.wait("192.0.2.7", now + FORGET_AFTER) == 0
    # one host's IPv6 /64 is one address; an IPv4 one mapped into IPv6 is the IPv4 one
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff:2") == "2001:db8::/64"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("not an address") == "not an address"


def test_the_guard_holds_a_bounded_number_of_addresses() -> None:
    guard = LoginGuard(free=1, max_addresses=100)
    for i in range(5000):
        guard.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", START)
    assert len(guard) == 100
    assert guard.wait("10.0.19.135", START) == 1  # the newest (4999th) are kept
    assert guard.wait("10.0.0.0", START) == 0  # the oldest were forgotten first


def test_a_login_leads_only_to_the_list_or_an_item(page: Page) -> None:
    for wanted in ("https://evil.example/", "//evil.example", "/approvals/1/approve", "/metrics"):
        reply = page.login(next_path=wanted)
        assert reply.status_code == 303
        assert reply.headers["Location"] == "/approvals", wanted
    assert page.login(next_path="/approvals/12").headers["Location"] == "/approvals/12"
