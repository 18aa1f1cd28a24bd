"""The approvals page as a WSGI app under /approvals (routes.py mounts it).

    GET  /approvals                  the pending items          the token (bearer or login)
    GET  /approvals/login            the login form             nobody
    POST /approvals/login            token → session cookie     nobody (the token is it)
    POST /approvals/logout           ends the session           nobody
    GET  /approvals/<id>             one item                   the token
    POST /approvals/<id>/approve     carry it out               the same, and a CSRF token
    POST /approvals/<id>/reject      reject it, with a reason   the same, and a CSRF token

No URL is a credential: what the alerts and /metrics carry is the item's plain address,
and a browser without the token lands on the login form, which leads back to the item
(account.py). A GET never changes anything, so a chat preview or a link scanner that
fetches a link only reads. A decision is a POST with a CSRF token bound to the item and
to the credential that loaded the form, and runs exactly the path `macha-approve` runs
(`Desk` is the Remediator: the policy judged again, the scope lock, exactly once); the
browser is then redirected to the item's page, which shows what happened (POST →
redirect → GET). Every refusal is a page with its status and why; nothing that fails
reaches the client as a trace.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any, Protocol
from wsgiref.types import StartResponse, WSGIEnvironment

from macha_obs.errors import MachaError
from macha_obs.models import Approval, ApprovalStatus
from macha_obs.remediate.remediator import Handled
from macha_obs.store import ApprovalError
from macha_obs.web import render
from macha_obs.web.account import Account, LoginStats
from macha_obs.web.sessions import LoginGuard, Sessions
from macha_obs.web.signing import Signer
from macha_obs.web.wsgi import Refused, Reply, Request, read_request, redirect, send

log = logging.getLogger(__name__)

MAX_REASON = 500
MAX_APPROVAL_ID = 2**63 - 1  # SQLite's INTEGER
_ID = re.compile(r"[0-9]{1,19}")
OUTCOMES_KEPT = 256

History = Callable[[Approval], str | None]


class Desk(Protocol):
    """Where decisions are carried out: the Remediator, as `macha-approve` uses it."""

    def approve(self, approval_id: int, by: str) -> Handled: ...

    def reject(self, approval_id: int, by: str, reason: str = "") -> Approval: ...


class Pending(Protocol):
    def get_approval(self, approval_id: int) -> Approval | None: ...

    def list_approvals(self, statuses: set[ApprovalStatus] | None = None) -> list[Approval]: ...


class Decisions(Protocol):
    def audit_decision(self, record: Mapping[str, Any]) -> None: ...


class Queue(Protocol):
    """What the pages read and audit through: the store's approvals and audit parts."""

    @property
    def approvals(self) -> Pending: ...

    @property
    def audit(self) -> Decisions: ...


class ApprovalsApp:
    """The pages; `history` is an optional seam giving a line such as "approved 12 times
    before, verified 12/12" for an item (None: nothing known). `sessions`, `guard` and
    `login_stats` are account.py's, injectable for tests."""

    def __init__(
        self,
        queue: Queue,
        desk: Desk,
        signer: Signer,
        token: str | None,
        *,
        base_path: str = "",
        secure_cookie: bool = False,
        clock: Callable[[], float] = time.time,
        history: History | None = None,
        sessions: Sessions | None = None,
        guard: LoginGuard | None = None,
        login_stats: LoginStats | None = None,
    ) -> None:
        self.queue, self.desk, self.signer = queue, desk, signer
        self.root = f"{base_path.rstrip('/')}/approvals"  # as the browser sees it
        self.clock = clock
        self.history = history
        self.account = Account(
            token,
            self.root,
            secure_cookie=secure_cookie,
            clock=clock,
            sessions=sessions,
            guard=guard,
            stats=login_stats,
        )
        self._deciding = threading.Lock()  # one decision at a time from the web
        self._outcomes: OrderedDict[str, tuple[int, str, bool]] = OrderedDict()
        self._outcomes_lock = threading.Lock()

    # ------------------------------------------------------------ WSGI

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            request = read_request(environ, method)
            status, headers, body = self._route(request)
        except Refused as refused:
            status, headers, body = self._refusal(refused, environ, method)
        except Exception:
            log.exception("approvals page: %s %s failed", method, environ.get("PATH_INFO"))
            status, headers = HTTPStatus.INTERNAL_SERVER_ERROR, []
            body = render.refusal_page(
                "500 Internal Server Error",
                "The page failed. The sidecar's log says why, and `macha-approve list "
                "--all` what became of the item.",
            )
        return send(start_response, status, headers, body, head=method == "HEAD")

    def _refusal(self, refused: Refused, environ: WSGIEnvironment, method: str) -> Reply:
        status, headers = refused.status, list(refused.headers)
        if status is HTTPStatus.UNAUTHORIZED:
            headers.append(("WWW-Authenticate", 'Bearer realm="macha-obs approvals"'))
        if status is HTTPStatus.METHOD_NOT_ALLOWED:
            headers.append(("Allow", "GET, HEAD, POST"))
        title = f"{status.value} {status.phrase}"
        if refused.login and self.account.token is not None:
            # the login form right where the link landed; it leads back here
            path = str(environ.get("PATH_INFO", ""))
            here = self.root + path.removeprefix("/approvals") if method == "GET" else None
            return status, headers, self.account.login_page(f"{title}. {refused.message}", here)
        return status, headers, render.refusal_page(title, refused.message)

    # ------------------------------------------------------------ routing

    def _route(self, req: Request) -> Reply:
        if req.path in ("/login", "/logout"):
            return self.account.handle(req)
        if req.path == "":
            if req.method not in ("GET", "HEAD"):
                raise Refused(HTTPStatus.METHOD_NOT_ALLOWED, "This page is only read.")
            self.account.credential(req)
            return HTTPStatus.OK, [], self._list_page()
        item, _, verb = req.path.lstrip("/").partition("/")
        known = verb in ("", "approve", "reject")
        if not known or not _ID.fullmatch(item) or int(item) > MAX_APPROVAL_ID:
            raise Refused(HTTPStatus.NOT_FOUND, "There is no such page.")
        approval_id = int(item)
        if verb == "":
            if req.method not in ("GET", "HEAD"):
                raise Refused(HTTPStatus.METHOD_NOT_ALLOWED, "This page is only read.")
            return self._item(req, approval_id)
        if req.method != "POST":
            raise Refused(
                HTTPStatus.METHOD_NOT_ALLOWED,
                "Deciding takes the button on the item's page: opening a link never does.",
            )
        return self._decide(req, approval_id, verb)

    def _approval(self, approval_id: int) -> Approval:
        approval = self.queue.approvals.get_approval(approval_id)
        if approval is None:
            raise Refused(HTTPStatus.NOT_FOUND, f"There is no approval {approval_id}.")
        return approval

    # ------------------------------------------------------------ pages

    def _list_page(self) -> bytes:
        pending = self.queue.approvals.list_approvals({ApprovalStatus.PENDING})
        items = [(a, f"{self.root}/{a.id}") for a in pending]
        return render.list_page(items, logout_path=f"{self.root}/logout")

    def _item(self, req: Request, approval_id: int) -> Reply:
        cred = self.account.credential(req)
        approval = self._approval(approval_id)
        outcome = self._outcome(req.query.get("outcome"), approval_id)
        approve = reject = None
        if approval.status is ApprovalStatus.PENDING:
            token = self.signer.csrf(approval_id, cred.binding, self.clock(), cred.until)
            hidden = (("csrf", token),)
            approve = render.Form(f"{self.root}/{approval_id}/approve", hidden)
            reject = render.Form(f"{self.root}/{approval_id}/reject", hidden)
        view = render.ItemView(
            approval,
            approve,
            reject,
            history=self._history(approval),
            outcome=outcome[0] if outcome else None,
            outcome_good=outcome[1] if outcome else False,
            list_path=self.root,
        )
        return HTTPStatus.OK, [], render.item_page(view)

    def _history(self, approval: Approval) -> str | None:
        if self.history is None:
            return None
        try:
            return self.history(approval)
        except Exception:  # a line of context: never worth failing the page
            log.warning("approvals page: no history for %d", approval.id, exc_info=True)
            return None

    # ------------------------------------------------------------ decisions

    def _decide(self, req: Request, approval_id: int, verb: str) -> Reply:
        cred = self.account.credential(req)
        self._approval(approval_id)
        if not self.signer.csrf_valid(
            req.form.get("csrf"), approval_id, cred.binding, self.clock()
        ):
            raise Refused(
                HTTPStatus.FORBIDDEN,
                "This form is missing its check or is too old: open the item's page again "
                "and decide there. Nothing was done.",
            )
        remote = req.remote
        by = f"web:{remote} ({cred.kind})"
        self.queue.audit.audit_decision(
            {
                "event": "approval_web",
                "approval_id": approval_id,
                "decision": verb,
                "via": "web",
                "remote": remote,
                "credential": cred.kind,
            }
        )
        with self._deciding:
            try:
                text, good = self._carry_out(approval_id, verb, by, req.form)
            except ApprovalError as exc:
                raise Refused(HTTPStatus.CONFLICT, f"Nothing was done: {exc}.") from exc
            except MachaError as exc:
                log.warning("approvals page: approval %d: %s", approval_id, exc)
                raise Refused(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    f"It could not be carried out now: {exc}. Nothing more was done; "
                    "the audit log has the details.",
                ) from exc
        nonce = self._keep_outcome(approval_id, text, good)
        return redirect(f"{self.root}/{approval_id}?outcome={nonce}")

    def _carry_out(
        self, approval_id: int, verb: str, by: str, form: Mapping[str, str]
    ) -> tuple[str, bool]:
        if verb == "reject":
            reason = form.get("reason", "").strip()[:MAX_REASON]
            self.desk.reject(approval_id, by, reason)
            return f"You rejected it{': ' + reason if reason else ''}. Nothing was run.", True
        handled = self.desk.approve(approval_id, by)
        status = handled.approval.status if handled.approval else None
        if status is ApprovalStatus.PENDING:
            return (
                f"Not carried out now: {handled.verdict.reason}. It stays pending; "
                "nothing was run.",
                False,
            )
        if status in (ApprovalStatus.EXECUTED, ApprovalStatus.ACKNOWLEDGED):
            return f"You approved it: {handled.summary}", True
        if handled.result is not None:  # it ran, and did not hold
            return f"You approved it, and it ran: {handled.summary}", False
        state = status.value if status else "settled"
        return (
            f"Nothing was run: the policy refused it now ({handled.verdict.reason}); "
            f"it is {state}.",
            False,
        )

    def _keep_outcome(self, approval_id: int, text: str, good: bool) -> str:
        nonce = secrets.token_urlsafe(16)
        with self._outcomes_lock:
            self._outcomes[nonce] = (approval_id, text, good)
            while len(self._outcomes) > OUTCOMES_KEPT:
                self._outcomes.popitem(last=False)
        return nonce

    def _outcome(self, nonce: str | None, approval_id: int) -> tuple[str, bool] | None:
        """What a POST did, for the page it redirected to: kept in memory under an
        unguessable name, so a crafted link cannot put words on the page."""
        if not nonce:
            return None
        with self._outcomes_lock:
            kept = self._outcomes.get(nonce)
        if kept is None or kept[0] != approval_id:
            return None
        return kept[1], kept[2]
