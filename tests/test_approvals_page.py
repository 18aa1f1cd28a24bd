"""The approvals page in a real headless Chromium, against the real daemon on the lab
systemd, linked from a notification a real Alertmanager rendered.

1. From the page to the fix: a unit fails, the daemon (suggest) queues its restart, real
   Prometheus fires MachaApprovalsPending from the shipped rules, real Alertmanager
   renders the shipped Slack and e-mail templates (exporters/templates/macha.tmpl,
   exporters/alertmanager-approvals.yml) to local recording servers and sends the
   Matrix bridge's webhook; the link in the Slack message lands in Chromium on the login
   form, the token leads on to the item, Approve restarts the unit in the lab systemd and
   the next page says it was verified.
2. Nothing scraped or queried decides: as the real `nobody` (no token, no access to the
   state dir), every URL on /metrics, in the real Prometheus's series, labels, alerts and
   rules and in the real Alertmanager's alerts is opened and every form it leads to is
   posted; the items stay pending (issue 20).
3. Everything else a person or an attacker can do with a browser: the list after a login
   with the token, reject with a reason (seen in `macha-approve list --all`), a cancelled
   item's button, approving twice (two tabs; the browser and `macha-approve` at once),
   a form without its CSRF token, a logout that ends the session, and plain GETs of
   every link that change nothing. Screenshots at phone and desktop widths are written
   to $MACHA_SCREENSHOT_DIR (tests/artifacts/ by default).
"""

from __future__ import annotations

import email
import email.policy
import html
import json
import re
import socketserver
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

import pytest
import requests

from macha_obs.config import Config
from macha_obs.models import ActionStatus, Approval, ApprovalStatus
from macha_obs.setup.rules import write_rules
from tests.harness.browser import DESKTOP, PHONE, open_browser
from tests.harness.daemon_support import MACHA_APPROVE, Daemon
from tests.harness.eyes_support import PROJECT
from tests.harness.labsd import LabSystemd
from tests.harness.receiver_support import serve_wsgi
from tests.harness.sidecar_support import broken
from tests.harness.stack import Alertmanager, Prometheus, poll
from tests.harness.systemd_fixtures import UnitFactory
from tests.test_stack_eyes import fast_rules, prometheus_config

pytestmark = [pytest.mark.stack, pytest.mark.systemd]

SHIPPED = PROJECT / "exporters" / "alertmanager-approvals.yml"
TEMPLATES = PROJECT / "exporters" / "templates" / "macha.tmpl"


def pending(daemon: Daemon, unit: str) -> Approval | None:
    found = [
        a
        for a in daemon.approvals()
        if a.status is ApprovalStatus.PENDING and a.action.target == unit
    ]
    return found[0] if found else None


def wait_pending(daemon: Daemon, unit: str) -> Approval:
    assert poll(lambda: pending(daemon, unit) is not None, 60), daemon.log_tail()
    found = pending(daemon, unit)
    assert found is not None
    return found


def item_links(daemon: Daemon) -> dict[int, str]:
    """Each pending item's link, from the daemon's /metrics, as the alerts get it."""
    text = requests.get(f"{daemon.url}/metrics", timeout=10).text
    found = re.findall(
        r'macha_approval_pending_info\{approval_id="(\d+)",[^}]*url="([^"]+)"\}', text
    )
    return {int(i): url for i, url in found}


def ledger(daemon: Daemon) -> str:
    """What a request could change: the queue and the ledger."""
    items = [a.model_dump(mode="json") for a in daemon.approvals()]
    return json.dumps([items, [a.model_dump(mode="json") for a in daemon.actions()]])


def decided(daemon: Daemon) -> str:
    """What a decision would change: each item's state and who decided, and the actions."""
    items = [(a.id, a.status.value, a.decided_by, a.action_id) for a in daemon.approvals()]
    return json.dumps([items, [a.model_dump(mode="json") for a in daemon.actions()]])


def undecided_since(daemon: Daemon, before: str) -> bool:
    """Nothing was decided since `before` (a `decided` reading): every item then is as it
    was, no action ran, and an item queued meanwhile (the daemon's own alerts come back
    to it as evidence) waits undecided."""
    items_then, actions_then = json.loads(before)
    now = [(a.id, a.status.value, a.decided_by, a.action_id) for a in daemon.approvals()]
    then = {row[0]: row for row in items_then}
    kept = all(list(row) == then[row[0]] for row in now if row[0] in then)
    new = [row for row in now if row[0] not in then]
    fresh = all(status == "pending" and not by and aid is None for _, status, by, aid in new)
    actions = [a.model_dump(mode="json") for a in daemon.actions()]
    return (
        kept
        and fresh
        and len(then) == sum(row[0] in then for row in now)
        and (actions == actions_then)
    )


# ---------------------------------------------------------------- recording receivers


class Recorder:
    """A chat service's (and a Matrix bridge's) end of a webhook: keeps each JSON body."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, Any]] = []
        self.arrived = threading.Condition()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        with self.arrived:
            self.posts.append((environ.get("PATH_INFO", ""), json.loads(body)))
            self.arrived.notify_all()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    def bodies(self, path: str) -> list[Any]:
        with self.arrived:
            return [body for p, body in self.posts if p == path]


class _Smtp(socketserver.StreamRequestHandler):
    """Just enough SMTP for Alertmanager to hand over a message (no TLS, no auth)."""

    def handle(self) -> None:
        self.wfile.write(b"220 sink ESMTP\r\n")
        while line := self.rfile.readline():
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self.wfile.write(b"250 sink\r\n")
            elif verb == b"DATA":
                self.wfile.write(b"354 go on\r\n")
                data = b""
                while (part := self.rfile.readline()) not in (b".\r\n", b""):
                    data += part[1:] if part.startswith(b"..") else part
                self.server.messages.append(data)  # type: ignore[attr-defined]
                self.wfile.write(b"250 kept\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


class SmtpSink(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Smtp)
        self.messages: list[bytes] = []


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    thread = threading.Thread(target=sink.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield sink
    sink.shutdown()
    sink.server_close()
    thread.join(5)


def shipped_config(tmp_path: Path, chat: str, smtp_port: int, token_file: Path, port: int) -> str:
    """exporters/alertmanager-approvals.yml as shipped, its addresses pointed here."""
    text = SHIPPED.read_text()
    slack_url = tmp_path / "slack-webhook-url"
    slack_url.write_text(f"{chat}/slack\n")
    replaced = {
        "/etc/alertmanager/templates/macha.tmpl": str(TEMPLATES),
        "/etc/alertmanager/secrets/slack-webhook-url": str(slack_url),
        "http://127.0.0.1:12345/alerts/oncall": f"{chat}/matrix",
        "smtp.example.org:587": f"127.0.0.1:{smtp_port}",
        "require_tls: true": "require_tls: false",
        "http://127.0.0.1:9847/alerts": f"http://127.0.0.1:{port}/alerts",
        "/run/credentials/prometheus-alertmanager.service/macha-webhook-token": str(token_file),
        "group_wait: 10s": "group_wait: 0s",
        "group_interval: 1m": "group_interval: 1s",
    }
    for old, new in replaced.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


# ---------------------------------------------------------------- 1. alert → page → fix


def per_item_rules(workdir: Path) -> list[Path]:
    """The rules as `rules render` writes them with approval_alert_per_item, every `for:`
    at 0s."""
    out = []
    for path in write_rules(Config(approval_alert_per_item=True), workdir / "per-item"):
        path.write_text(re.sub(r"^(\s+)for: \S+$", r"\1for: 0s", path.read_text(), flags=re.M))
        out.append(path)
    return out


@pytest.fixture
def alerting(
    prometheus_factory: Callable[[str, list[Path]], Prometheus],
    alertmanager_factory: Callable[[str], Alertmanager],
    smtp: SmtpSink,
    tmp_path: Path,
) -> Callable[..., tuple[Alertmanager, Prometheus]]:
    """start(daemon, chat_url, per_item=False): real Alertmanager on the shipped approvals
    config and templates, real Prometheus on the shipped rules (every `for:` at 0s; with
    `per_item`, rendered with approval_alert_per_item) scraping the daemon; both, for
    their APIs and logs."""

    def start(daemon: Daemon, chat: str, per_item: bool = False) -> tuple[Alertmanager, Prometheus]:
        am = alertmanager_factory(
            shipped_config(tmp_path, chat, smtp.server_address[1], daemon.token_file, daemon.port)
        )
        prometheus = prometheus_factory(
            prometheus_config(daemon.port, am.port),
            per_item_rules(tmp_path) if per_item else fast_rules(tmp_path),
        )
        prometheus.wait_targets_up(1)
        return am, prometheus

    return start


def test_the_link_in_the_rendered_alert_opens_the_item_and_approve_restarts_it(
    systemd_container: LabSystemd,
    unit_factory: UnitFactory,
    daemons: Callable[..., Daemon],
    alerting: Callable[..., tuple[Alertmanager, Prometheus]],
    smtp: SmtpSink,
) -> None:
    lab = systemd_container
    unit = broken(lab, unit_factory, "page-a")
    daemon = daemons(autonomy_level="suggest")
    item = wait_pending(daemon, unit)
    token = daemon.auth_headers()["Authorization"].removeprefix("Bearer ")
    recorder = Recorder()
    with serve_wsgi(recorder) as chat:
        am, _ = alerting(daemon, chat)

        def slack_link() -> str | None:
            for body in recorder.bodies("/slack"):
                for attachment in body.get("attachments", []):
                    if "MachaApprovalsPending" in attachment.get("title", ""):
                        found = re.search(r"<(http[^|>]+)\|Review and approve>", attachment["text"])
                        if found:
                            return found[1]
            return None

        assert poll(lambda: slack_link() is not None, 90), am.log_tail() + daemon.log_tail()
        link = slack_link()
        assert link is not None
        # the same link in the Matrix bridge's JSON and in the e-mail (HTML and text)
        assert poll(lambda: bool(recorder.bodies("/matrix")), 30), am.log_tail()
        matrix = [
            a["annotations"].get("approvals_url")
            for body in recorder.bodies("/matrix")
            for a in body["alerts"]
            if a["labels"]["alertname"] == "MachaApprovalsPending"
        ]
        assert link in matrix
        assert poll(lambda: bool(smtp.messages), 30), am.log_tail()
        message = email.message_from_bytes(smtp.messages[0], policy=email.policy.default)
        assert "MachaApprovalsPending" in str(message["Subject"])
        parts = {
            p.get_content_type(): p.get_content() for p in message.walk() if not p.is_multipart()
        }
        hrefs = [html.unescape(h) for h in re.findall(r'href="([^"]+)"', parts["text/html"])]
        assert link in hrefs
        assert f"Review and approve: {link}" in parts["text/plain"]
    # the oldest pending item's page, as the daemon exports it: a plain URL
    assert link == item_links(daemon)[item.id]
    assert link == f"{daemon.url}/approvals/{item.id}"

    with open_browser() as browser:
        # the link lands on the login form (it alone opens nothing), which leads back
        landed = browser.open(link)
        assert "401" in landed
        assert f"restart_unit {unit}" not in landed
        browser.screenshot("approvals-login", PHONE)
        browser.type("#token", token)
        page = browser.click("button.approve")
        assert browser.url == link
        assert f"Approval {item.id}: restart_unit {unit}" in page
        assert "medium" in page or "low" in page or "high" in page
        assert "Why queued" in page
        assert "Evidence" in page
        assert "At approval the policy checks again" in page
        assert "Scope lock" in page
        browser.screenshot("approvals-item", PHONE)
        browser.screenshot("approvals-item", DESKTOP)
        assert daemon.actions(unit) == []  # opening the link did nothing

        after = browser.click("button.approve")
        assert "You approved it" in after, after
        assert "verified" in after, after
        assert browser.url.startswith(f"{daemon.url}/approvals/{item.id}?")  # a GET, after
        assert not browser.has("button.approve")  # nothing left to decide
        browser.screenshot("approvals-outcome", PHONE)

    assert lab.unit_state(unit) == ("active", "running")
    [action] = daemon.actions(unit)
    assert action.status is ActionStatus.SUCCEEDED
    assert action.approval_id == item.id
    done = next(a for a in daemon.approvals() if a.id == item.id)
    assert done.status is ApprovalStatus.EXECUTED
    assert done.decided_by == "web:127.0.0.1 (token login)"
    web = [d for d in daemon.audit("decisions.jsonl") if d.get("event") == "approval_web"]
    assert web
    assert web[0]["remote"] == "127.0.0.1"
    assert web[0]["credential"] == "token login"


# ---------------------------------------------------------------- 2. nobody decides

# What someone who can only read metrics does, run as the real `nobody` with the system's
# Python and its standard library: no token, no cookie, no state dir. It gathers every
# text /metrics, Prometheus (series, label values, alerts, rules) and Alertmanager (its
# alerts) give, opens every URL on the sidecar's address found there, posts every form
# those pages hold (with their hidden fields) and approve/reject beside each item, and
# prints what it found and got.
NOBODY = r"""
import json, re, sys, urllib.error, urllib.parse, urllib.request
sidecar, prometheus, alertmanager, state_dir = sys.argv[1:5]

def fetch(url, data=None):
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=20) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")

texts = {"metrics": fetch(sidecar + "/metrics")[1]}
api = prometheus + "/api/v1/"
labels = json.loads(fetch(api + "labels")[1])["data"]
for name in labels:
    texts["label " + name] = fetch(api + "label/" + urllib.parse.quote(name) + "/values")[1]
for path in ("series?match%5B%5D=%7B__name__%3D~%22.%2B%22%7D", "alerts", "rules",
             "query?query=%7B__name__%3D~%22macha_.%2A%22%7D"):
    texts[path.split("?")[0]] = fetch(api + path)[1]
texts["alertmanager"] = fetch(alertmanager + "/api/v2/alerts")[1]
found, where = set(), {}
for source, text in texts.items():
    text = text.replace("\\u0026", "&").replace("&amp;", "&")
    urls = set(re.findall(r"https?://[^\s\"'<>\\,}]+", text))
    where[source] = sorted(urls)
    found |= urls
mine = sorted(u for u in found if u.startswith(sidecar) and not u.endswith("/metrics"))
tried = []
for url in mine:
    status, page = fetch(url)
    tried.append([url, "GET", status])
    targets = [(sidecar + a.replace("&amp;", "&"), b) for a, b in
               re.findall(r'<form method=post action="([^"]*)">(.*?)</form>', page, re.S)]
    item = url.split("?")[0].rstrip("/")
    targets += [(item + "/approve", ""), (item + "/reject", "")]
    for target, form in targets:
        fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', form))
        fields.update({"reason": "nobody", "token": ""})
        tried.append([target, "POST", fetch(target, fields)[0]])
try:
    open(state_dir + "/webhook.token").read()
    token = "read"
except OSError as e:
    token = type(e).__name__
print(json.dumps({"where": where, "urls": mine, "tried": tried, "token": token}))
"""


def test_nobody_reading_metrics_prometheus_or_alertmanager_decides_nothing(
    systemd_container: LabSystemd,
    unit_factory: UnitFactory,
    daemons: Callable[..., Daemon],
    alerting: Callable[..., tuple[Alertmanager, Prometheus]],
) -> None:
    """issue 20: no capability is readable by those who only read metrics."""
    lab = systemd_container
    units = {name: broken(lab, unit_factory, f"nobody-{name}") for name in "fg"}
    daemon = daemons(autonomy_level="suggest", approval_alert_per_item="true")
    items = {name: wait_pending(daemon, unit) for name, unit in units.items()}
    with serve_wsgi(Recorder()) as chat:
        am, prometheus = alerting(daemon, chat, per_item=True)
        # wait until the links are everywhere a reader of metrics looks: both items'
        # alerts firing, with their annotations, and in Alertmanager
        want = {f"{daemon.url}/approvals/{a.id}" for a in items.values()}

        def annotated() -> set[str]:
            return {
                str(a["annotations"].get("approval_url"))
                for a in prometheus.alerts()
                if a["labels"]["alertname"] == "MachaApprovalPendingItem" and a["state"] == "firing"
            }

        assert poll(lambda: annotated() >= want, 90), prometheus.alerts()
        in_am = f"{am.url}/api/v2/alerts"
        assert poll(lambda: bool(requests.get(in_am, timeout=10).json()), 60), am.log_tail()
        before = decided(daemon)
        attack = subprocess.run(
            [
                "/usr/bin/setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "/usr/bin/python3",
                "-",
                daemon.url,
                prometheus.url,
                am.url,
                str(daemon.state_dir),
            ],
            input=NOBODY,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert attack.returncode == 0, attack.stderr
    report = json.loads(attack.stdout)
    assert report["token"] == "PermissionError"  # nobody cannot read the state dir
    where = {source: set(urls) for source, urls in report["where"].items()}
    for source in ("metrics", "label url", "series", "query", "alerts", "alertmanager"):
        assert where[source] >= want, (source, where[source])  # every item's link, ...
    assert set(report["urls"]) >= want  # ... which it tried ...
    statuses = {status for _, _, status in report["tried"]}
    assert statuses <= {401, 405, 429}, report["tried"]  # ... and nothing opened or decided
    posts = [t for t in report["tried"] if t[1] == "POST"]
    assert len(posts) >= 3 * len(want), posts
    # what an item's evidence gains meanwhile (the alerts come back to the daemon) is
    # no decision: the items' states and the actions are what must not move
    assert undecided_since(daemon, before), (before, decided(daemon))
    for name, item in items.items():
        still = pending(daemon, units[name])
        assert still is not None  # still pending, and undecided
        assert (still.id, still.decided_by) == (item.id, "")
        assert daemon.actions(units[name]) == []
    assert not [d for d in daemon.audit("decisions.jsonl") if d.get("event") == "approval_web"]


# ---------------------------------------------------------------- 3. all the rest


def test_reject_cancel_twice_csrf_logout_and_plain_gets_in_the_browser(
    systemd_container: LabSystemd,
    unit_factory: UnitFactory,
    daemons: Callable[..., Daemon],
) -> None:
    lab = systemd_container
    units = {name: broken(lab, unit_factory, f"page-{name}") for name in "bcde"}
    daemon = daemons(autonomy_level="suggest")
    items = {name: wait_pending(daemon, unit) for name, unit in units.items()}
    assert poll(lambda: set(item_links(daemon)) >= {a.id for a in items.values()}, 30)
    links = item_links(daemon)
    token = daemon.auth_headers()["Authorization"].removeprefix("Bearer ")

    # plain GETs of every link, with and without credentials, change nothing
    before = ledger(daemon)
    for url in links.values():
        for target in (url, f"{url}/approve", f"{url}/reject", f"{daemon.url}/approvals"):
            for headers in ({}, daemon.auth_headers()):
                reply = requests.get(target, headers=headers, timeout=10, allow_redirects=False)
                assert reply.status_code in (200, 401, 405), (target, reply.status_code)
                assert "Traceback" not in reply.text
    assert ledger(daemon) == before

    with open_browser() as browser:
        # the list needs the token: a login sets the cookie
        page = browser.open(f"{daemon.url}/approvals")
        assert "401" in page
        assert "needs the sidecar's token" in page
        browser.type("#token", token)
        page = browser.click("button.approve")
        assert "Pending approvals" in page
        assert "4 actions waiting" in page
        for unit in units.values():
            assert f"restart_unit {unit}" in page
        browser.screenshot("approvals-list", PHONE)
        browser.screenshot("approvals-list", DESKTOP)

        with open_browser() as stranger:  # no cookie: every link lands on the login form
            for url in links.values():
                text = stranger.open(url)
                assert "401" in text, (url, text)
                assert not stranger.has("button.reject")

        # a form without its CSRF token is refused, and nothing runs
        e = items["e"]
        browser.open(links[e.id])
        browser.remove("input[name=csrf]")
        text = browser.click("button.approve")
        assert "403" in text
        assert "missing its check" in text
        assert "Nothing was done" in text
        assert daemon.actions(units["e"]) == []

        # approving twice in the browser (two tabs): once
        browser.open(links[e.id])
        first = browser.new_tab(links[e.id])
        text = browser.click("button.approve")
        assert "You approved it" in text, text
        assert "verified" in text, text
        browser.switch(first)
        text = browser.click("button.approve")  # the other tab's stale button
        assert "409" in text
        assert "not pending" in text
        assert len(daemon.actions(units["e"])) == 1

        # the browser and macha-approve at the same moment: once
        d = items["d"]
        browser.open(links[d.id])
        cli = subprocess.Popen(
            [MACHA_APPROVE, "approve", str(d.id)],
            env=daemon.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        text = browser.click("button.approve")
        out, _ = cli.communicate(timeout=60)
        assert len(daemon.actions(units["d"])) == 1, (text, out)
        browser_won = "You approved it" in text
        cli_won = cli.returncode == 0
        assert browser_won != cli_won, (text, out)
        assert "not pending" in (out if browser_won else text)

        # a cancelled item: the page open before, its button does nothing
        c = items["c"]
        browser.open(links[c.id])
        lab.run("systemctl", "start", units["c"])  # it recovers by itself
        assert poll(
            lambda: any(
                a.id == c.id and a.status is ApprovalStatus.CANCELLED for a in daemon.approvals()
            ),
            60,
        ), daemon.log_tail()
        text = browser.click("button.approve")
        assert "409" in text
        assert "cancelled" in text
        assert "Nothing was done" in text
        text = browser.open(links[c.id])
        assert "This item is cancelled" in text
        assert not browser.has("button.approve")
        assert daemon.actions(units["c"]) == []

        # reject with a reason, logged in with the token
        b = items["b"]
        browser.open(links[b.id])
        browser.type("#reason", "not at night <b>please</b>")
        text = browser.click("button.reject")
        assert "You rejected it: not at night <b>please</b>" in text
        assert daemon.actions(units["b"]) == []

        # logging out ends the session: the list asks for the token again
        browser.open(f"{daemon.url}/approvals")
        text = browser.click("button.reject")  # "Log out"
        assert "Approvals: log in" in text
        text = browser.open(f"{daemon.url}/approvals")
        assert "401" in text
    listed = daemon.approve("list", "--all")
    row = [line for line in listed.stdout.splitlines() if line.startswith(f"{b.id} ")]
    assert row, listed.stdout
    assert "rejected" in row[0]
    assert "not at night <b>please</b>" in row[0]
    rejected = next(a for a in daemon.approvals() if a.id == b.id)
    assert rejected.decided_by == "web:127.0.0.1 (token login)"
