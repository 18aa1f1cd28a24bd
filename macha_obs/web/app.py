"""The approvals page as a WSGI app under /approvals (routes.py mounts it).

    GET  /approvals                  the pending items          token (bearer or login)
    GET  /approvals/login            the login form             nobody
    POST /approvals/login            token → session cookie     nobody (the token is it)
    POST /approvals/logout           clears the cookie          nobody
    GET  /approvals/<id>             one item                   token, or its signed link
    POST /approvals/<id>/approve     carry it out               the same, and a CSRF token
    POST /approvals/<id>/reject      reject it, with a reason   the same, and a CSRF token

A GET never changes anything, so a chat preview or a link scanner that fetches a link only
reads. A decision is a POST with a CSRF token bound to the item and to the credential
that loaded the form, and runs exactly the path `macha-approve` runs (`Desk` is the
Remediator: the policy judged again, the scope lock, exactly once); the browser is then
redirected to the item's page, which shows what happened (POST → redirect → GET). Every
refusal is a page with its status and why; nothing that fails reaches the client as a
trace.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import parse_qs
from wsgiref.types import StartResponse, WSGIEnvironment

from macha_obs.errors import MachaError
from macha_obs.models import Approval, ApprovalStatus
from macha_obs.remediate.remediator import Handled
from macha_obs.store import ApprovalError
from macha_obs.web import render
from macha_obs.web.signing import CSRF_SECONDS, SESSION_SECONDS, Signer, parse_expiry

log = logging.getLogger(__name__)

COOKIE = "macha_approvals"
MAX_FORM_BYTES = 16 * 1024
MAX_REASON = 500
MAX_APPROVAL_ID = 2**63 - 1  # SQLite's INTEGER
_ID = re.compile(r"[0-9]{1,19}")
_FORWARDED = re.compile(r"[0-9A-Fa-f.:, \[\]]{1,200}")  # addresses only, never free text
OUTCOMES_KEPT = 256

History = Callable[[Approval], str | None]
Reply = tuple[HTTPStatus, list[tuple[str, str]], bytes]  # status, headers, page


class Desk(Protocol):
    """Where decisions are carried out: the Remediator, as `macha-approve` uses it."""

    def approve(self, approval_id: int, by: str) -> Handled: ...

    def reject(self, approval_id: int, by: str, reason: str = "") -> Approval: ...


class Queue(Protocol):
    """What the pages read (and audit) through: the store."""

    def get_approval(self, approval_id: int) -> Approval | None: ...

    def list_approvals(self, statuses: set[ApprovalStatus] | None = None) -> list[Approval]: ...

    def audit_decision(self, record: Mapping[str, Any]) -> None: ...


class Refused(MachaError):
    """A request the page refuses: its status and a message for the person."""

    def __init__(self, status: HTTPStatus, message: str, *, login: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.login = status, message, login


@dataclass(frozen=True)
class Credential:
    """Who may see (and decide) what: the token opens everything, a link one item."""

    kind: str  # "token", "token login", "signed link": recorded with each decision
    binding: str  # what a CSRF token is bound to
    until: float  # when it ends
    approval_id: int | None = None  # a link's item
    link_query: str = ""  # a link's `exp=…&sig=…`, carried to the next page


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # after /approvals
    query: dict[str, str]
    form: dict[str, str]
    environ: WSGIEnvironment


def _first(values: Mapping[str, list[str]]) -> dict[str, str]:
    return {k: v[0] for k, v in values.items() if v}


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, eq, value = part.strip().partition("=")
        if eq and key == name:
            return value
    return None


class ApprovalsApp:
    """The pages; `history` is an optional seam giving a line such as "approved 12 times
    before, verified 12/12" for an item (None: nothing known)."""

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
    ) -> None:
        self.queue, self.desk, self.signer, self.token = queue, desk, signer, token
        self.root = f"{base_path.rstrip('/')}/approvals"  # as the browser sees it
        self.secure_cookie = secure_cookie
        self.clock = clock
        self.history = history
        self._deciding = threading.Lock()  # one decision at a time from the web
        self._outcomes: OrderedDict[str, tuple[int, str, bool]] = OrderedDict()
        self._outcomes_lock = threading.Lock()

    # ------------------------------------------------------------ WSGI

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            request = self._request(environ, method)
            status, headers, body = self._route(request)
        except Refused as refused:
            status, headers = refused.status, []
            if refused.status is HTTPStatus.UNAUTHORIZED:
                headers.append(("WWW-Authenticate", 'Bearer realm="macha-obs approvals"'))
            if refused.status is HTTPStatus.METHOD_NOT_ALLOWED:
                headers.append(("Allow", "GET, HEAD, POST"))
            login = f"{self.root}/login" if refused.login and self.token else None
            body = render.refusal_page(
                f"{status.value} {status.phrase}", refused.message, login_path=login
            )
        except Exception:
            log.exception("approvals page: %s %s failed", method, environ.get("PATH_INFO"))
            status, headers = HTTPStatus.INTERNAL_SERVER_ERROR, []
            body = render.refusal_page(
                "500 Internal Server Error",
                "The page failed. The sidecar's log says why, and `macha-approve list "
                "--all` what became of the item.",
            )
        return self._send(start_response, status, headers, body, head=method == "HEAD")

    def _send(
        self,
        start_response: StartResponse,
        status: HTTPStatus,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        head: bool,
    ) -> list[bytes]:
        start_response(
            f"{status.value} {status.phrase}",
            [
                *headers,
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                ("Referrer-Policy", "no-referrer"),
                ("X-Content-Type-Options", "nosniff"),
                ("X-Frame-Options", "DENY"),
                (
                    "Content-Security-Policy",
                    f"default-src 'none'; style-src '{render.CSS_HASH}'; form-action 'self'; "
                    "frame-ancestors 'none'; base-uri 'none'",
                ),
            ],
        )
        return [] if head else [body]

    def _request(self, environ: WSGIEnvironment, method: str) -> Request:
        path = environ.get("PATH_INFO", "")
        rest = path[len("/approvals") :] if path.startswith("/approvals") else path
        try:
            query = _first(
                parse_qs(environ.get("QUERY_STRING", ""), max_num_fields=10, errors="strict")
            )
        except (ValueError, UnicodeDecodeError) as exc:
            raise Refused(HTTPStatus.BAD_REQUEST, "The link's query cannot be read.") from exc
        form = self._form(environ) if method == "POST" else {}
        return Request(method, rest.rstrip("/") if rest != "/" else "", query, form, environ)

    @staticmethod
    def _form(environ: WSGIEnvironment) -> dict[str, str]:
        kind = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            raise Refused(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "Decisions come from the page's own forms."
            )
        length_text = environ.get("CONTENT_LENGTH") or "0"
        length = int(length_text) if length_text.isascii() and length_text.isdigit() else -1
        if not 0 <= length <= MAX_FORM_BYTES:
            raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "The form is too large.")
        body = environ["wsgi.input"].read(length)
        if len(body) != length:
            raise Refused(HTTPStatus.BAD_REQUEST, "The form arrived cut short.")
        try:
            text = body.decode("ascii")
            return _first(
                parse_qs(text, keep_blank_values=True, max_num_fields=10, errors="strict")
            )
        except (ValueError, UnicodeDecodeError) as exc:
            raise Refused(HTTPStatus.BAD_REQUEST, "The form cannot be read.") from exc

    # ------------------------------------------------------------ routing

    def _route(self, req: Request) -> Reply:
        if req.path in ("", "/login", "/logout"):
            return self._account(req)
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

    def _account(self, req: Request) -> Reply:
        if req.path == "":
            if req.method not in ("GET", "HEAD"):
                raise Refused(HTTPStatus.METHOD_NOT_ALLOWED, "This page is only read.")
            self._token_credential(req)
            return HTTPStatus.OK, [], self._list_page()
        if req.path == "/logout":
            if req.method != "POST":
                raise Refused(HTTPStatus.METHOD_NOT_ALLOWED, "Log out with the button.")
            return self._redirect(f"{self.root}/login", [("Set-Cookie", self._cookie("", 0))])
        if req.method in ("GET", "HEAD"):
            return HTTPStatus.OK, [], render.login_page(f"{self.root}/login")
        if req.method != "POST":
            raise Refused(HTTPStatus.METHOD_NOT_ALLOWED, "Log in with the form.")
        if self.token is None:
            raise Refused(HTTPStatus.FORBIDDEN, "No token is set up here: use a signed link.")
        given = req.form.get("token", "").strip()
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            page = render.login_page(f"{self.root}/login", message="That is not the token.")
            return HTTPStatus.UNAUTHORIZED, [], page
        session = self.signer.session(self.token, self.clock())
        return self._redirect(self.root, [("Set-Cookie", self._cookie(session, SESSION_SECONDS))])

    def _cookie(self, value: str, max_age: int) -> str:
        secure = "; Secure" if self.secure_cookie else ""
        return (
            f"{COOKIE}={value}; Path={self.root}; Max-Age={max_age}; HttpOnly; "
            f"SameSite=Strict{secure}"
        )

    @staticmethod
    def _redirect(location: str, headers: list[tuple[str, str]] | None = None) -> Reply:
        page = render.page("See other", f'<p><a href="{render.esc(location)}">Continue</a></p>')
        return HTTPStatus.SEE_OTHER, [("Location", location), *(headers or [])], page

    # ------------------------------------------------------------ credentials

    def _token_credential(self, req: Request) -> Credential:
        """The token, as a bearer header or as the session its login set; else refuse."""
        found = self._maybe_token(req)
        if found is None:
            raise Refused(
                HTTPStatus.UNAUTHORIZED,
                "This page needs the sidecar's token (or the signed link from the alert).",
                login=True,
            )
        return found

    def _maybe_token(self, req: Request) -> Credential | None:
        now = self.clock()
        header = req.environ.get("HTTP_AUTHORIZATION", "")
        if header:
            scheme, _, given = header.partition(" ")
            if (
                self.token is None
                or scheme.lower() != "bearer"
                or not hmac.compare_digest(given.strip().encode(), self.token.encode())
            ):
                raise Refused(HTTPStatus.UNAUTHORIZED, "Wrong bearer token.", login=True)
            return Credential("token", "token", now + CSRF_SECONDS)
        session = _cookie(req.environ.get("HTTP_COOKIE", ""), COOKIE)
        if (
            session
            and self.token is not None
            and self.signer.session_valid(session, self.token, now)
        ):
            until = float(parse_expiry(session.partition(".")[0]) or now)
            return Credential("token login", f"session:{session}", until)
        return None

    def _item_credential(self, req: Request, approval_id: int) -> tuple[Credential, Approval]:
        """The token, or a signed link for this very item (query on GET, form on POST)."""
        found = self._maybe_token(req)
        approval = self.queue.get_approval(approval_id)
        if found is not None:
            if approval is None:
                raise Refused(HTTPStatus.NOT_FOUND, f"There is no approval {approval_id}.")
            return found, approval
        fields = req.query if req.method in ("GET", "HEAD") else req.form
        if "sig" not in fields:
            raise Refused(
                HTTPStatus.UNAUTHORIZED,
                "This page needs the signed link from the alert, or the sidecar's token.",
                login=True,
            )
        expires = parse_expiry(fields.get("exp"))
        now = self.clock()
        if expires is not None and now >= expires:
            raise Refused(
                HTTPStatus.FORBIDDEN,
                "This link has expired (a link ends when its item's time to wait ends). "
                "Nothing was done.",
                login=True,
            )
        # a missing item and a bad signature read alike: a link reveals nothing it
        # does not sign
        sig = fields.get("sig")
        if (
            approval is None
            or expires is None
            or not self.signer.link_valid(approval, expires, sig, now)
        ):
            raise Refused(
                HTTPStatus.FORBIDDEN,
                "This link is not valid: it was changed, or not made by this sidecar. "
                "Nothing was done.",
                login=True,
            )
        query = f"exp={expires}&sig={sig}"
        return Credential("signed link", f"link:{sig}", expires, approval_id, query), approval

    # ------------------------------------------------------------ pages

    def _list_page(self) -> bytes:
        pending = self.queue.list_approvals({ApprovalStatus.PENDING})
        items = [(a, f"{self.root}/{a.id}") for a in pending]
        return render.list_page(items, logout_path=f"{self.root}/logout")

    def _item_path(self, cred: Credential, approval_id: int, extra: str = "") -> str:
        query = "&".join(q for q in (cred.link_query, extra) if q)
        return f"{self.root}/{approval_id}" + (f"?{query}" if query else "")

    def _item(self, req: Request, approval_id: int) -> Reply:
        cred, approval = self._item_credential(req, approval_id)
        outcome = self._outcome(req.query.get("outcome"), approval_id)
        approve = reject = None
        if approval.status is ApprovalStatus.PENDING:
            token = self.signer.csrf(approval_id, cred.binding, self.clock(), cred.until)
            hidden = [("csrf", token)]
            if cred.kind == "signed link":
                exp, _, sig = cred.link_query.partition("&")
                hidden += [("exp", exp.removeprefix("exp=")), ("sig", sig.removeprefix("sig="))]
            approve = render.Form(f"{self.root}/{approval_id}/approve", tuple(hidden))
            reject = render.Form(f"{self.root}/{approval_id}/reject", tuple(hidden))
        view = render.ItemView(
            approval,
            approve,
            reject,
            history=self._history(approval),
            outcome=outcome[0] if outcome else None,
            outcome_good=outcome[1] if outcome else False,
            list_path=self.root if cred.kind != "signed link" else None,
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
        cred, _ = self._item_credential(req, approval_id)
        if not self.signer.csrf_valid(
            req.form.get("csrf"), approval_id, cred.binding, self.clock()
        ):
            raise Refused(
                HTTPStatus.FORBIDDEN,
                "This form is missing its check or is too old: open the item's page again "
                "and decide there. Nothing was done.",
            )
        remote = self._remote(req.environ)
        by = f"web:{remote} ({cred.kind})"
        self.queue.audit_decision(
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
        return self._redirect(self._item_path(cred, approval_id, f"outcome={nonce}"))

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

    @staticmethod
    def _remote(environ: WSGIEnvironment) -> str:
        """The peer's address; behind a proxy, with what its X-Forwarded-For says (only
        an address list is kept: the header is the client's to write)."""
        remote = str(environ.get("REMOTE_ADDR", "?"))
        forwarded = str(environ.get("HTTP_X_FORWARDED_FOR", "")).strip()
        if forwarded and _FORWARDED.fullmatch(forwarded):
            return f"{remote} for {forwarded}"
        return remote

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
