"""Who is on the approvals page: the token (a bearer header, or the session its login
started), checked here and nowhere else.

Every page needs it; no URL alone opens or decides anything. A wrong token is logged
(the address, never the guess), counted in `LoginStats` (macha_web_login_failures_total)
and slows its address down (sessions.LoginGuard); the right one is never refused for
what other addresses did. Logging out ends the session on the server.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from macha_obs.web import render
from macha_obs.web.sessions import SESSION_SECONDS, LoginGuard, Sessions
from macha_obs.web.signing import CSRF_SECONDS
from macha_obs.web.wsgi import Refused, Reply, Request, redirect

log = logging.getLogger(__name__)

COOKIE = "macha_approvals"
LOGIN_FAILURE_REASONS = ("wrong_token", "throttled")


class LoginStats:
    """Failed logins by reason (a fixed set), for /metrics; no address is kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures = dict.fromkeys(LOGIN_FAILURE_REASONS, 0)

    def failed(self, reason: str) -> None:
        with self._lock:
            self._failures[reason] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._failures)


@dataclass(frozen=True)
class Credential:
    """The token, and how it came: recorded with each decision."""

    kind: str  # "token" (bearer) or "token login" (a session)
    binding: str  # what a CSRF token is bound to
    until: float  # when it ends


class Account:
    """The token's check, the login sessions and the login and logout pages."""

    def __init__(
        self,
        token: str | None,
        root: str,
        *,
        secure_cookie: bool,
        clock: Callable[[], float],
        sessions: Sessions | None = None,
        guard: LoginGuard | None = None,
        stats: LoginStats | None = None,
    ) -> None:
        self.token, self.root, self.secure_cookie, self.clock = token, root, secure_cookie, clock
        self.sessions = sessions if sessions is not None else Sessions()
        self.guard = guard if guard is not None else LoginGuard()
        self.stats = stats if stats is not None else LoginStats()
        self._next = re.compile(rf"{re.escape(root)}(?:/[0-9]{{1,19}})?")

    # ------------------------------------------------------------ the token

    def _check(self, req: Request, given: str) -> bool:
        """`given` against the token, unless its address must wait; counts a failure."""
        now = self.clock()
        wait = self.guard.wait(req.address, now)
        if wait > 0:
            self.stats.failed("throttled")
            seconds = math.ceil(wait)
            raise Refused(
                HTTPStatus.TOO_MANY_REQUESTS,
                f"Too many wrong tokens from your address: try again in {seconds} s. "
                "Nothing was checked.",
                login=True,
                headers=(("Retry-After", str(seconds)),),
            )
        if self.token is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            self.guard.succeeded(req.address)
            return True
        count = self.guard.failed(req.address, now)
        self.stats.failed("wrong_token")
        log.warning(
            "approvals page: a wrong token from %s (%d in a row from there)", req.remote, count
        )
        return False

    def credential(self, req: Request) -> Credential:
        """The token, as a bearer header or as the session its login started; else refuse."""
        header = req.environ.get("HTTP_AUTHORIZATION", "")
        if header:
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not self._check(req, given.strip()):
                raise Refused(HTTPStatus.UNAUTHORIZED, "Wrong bearer token.", login=True)
            return Credential("token", "token", self.clock() + CSRF_SECONDS)
        session = req.cookie(COOKIE)
        until = self.sessions.until(session, self.clock()) if self.token is not None else None
        if session is None or until is None:
            raise Refused(
                HTTPStatus.UNAUTHORIZED,
                "This page needs the sidecar's token: log in with it.",
                login=True,
            )
        digest = hashlib.sha256(session.encode()).hexdigest()
        return Credential("token login", f"session:{digest}", until)

    # ------------------------------------------------------------ the pages

    def next_path(self, wanted: str | None) -> str:
        """Where a login goes on to: the list, or an item's page (nothing else)."""
        return wanted if wanted and self._next.fullmatch(wanted) else self.root

    def login_page(self, message: str = "", wanted: str | None = None) -> bytes:
        return render.login_page(
            f"{self.root}/login", message=message, next_path=self.next_path(wanted)
        )

    def handle(self, req: Request) -> Reply:
        """/login and /logout."""
        if req.path == "/logout":
            if req.method != "POST":
                raise Refused(HTTPStatus.METHOD_NOT_ALLOWED, "Log out with the button.")
            self.sessions.end(req.cookie(COOKIE))  # that cookie is refused from now on
            return redirect(f"{self.root}/login", [("Set-Cookie", self._cookie("", 0))])
        if req.method in ("GET", "HEAD"):
            return HTTPStatus.OK, [], self.login_page(wanted=req.query.get("next"))
        if req.method != "POST":
            raise Refused(HTTPStatus.METHOD_NOT_ALLOWED, "Log in with the form.")
        if self.token is None:
            raise Refused(HTTPStatus.FORBIDDEN, "No token is set up here: use macha-approve.")
        wanted = req.form.get("next")
        try:
            right = self._check(req, req.form.get("token", "").strip())
        except Refused as slowed:  # the form again, still leading where it led
            page = self.login_page(slowed.message, wanted)
            return slowed.status, list(slowed.headers), page
        if not right:
            page = self.login_page("That is not the token.", wanted)
            return HTTPStatus.UNAUTHORIZED, [], page
        value, _ = self.sessions.start(self.clock())
        cookie = ("Set-Cookie", self._cookie(value, SESSION_SECONDS))
        return redirect(self.next_path(wanted), [cookie])

    def _cookie(self, value: str, max_age: int) -> str:
        secure = "; Secure" if self.secure_cookie else ""
        return (
            f"{COOKIE}={value}; Path={self.root}; Max-Age={max_age}; HttpOnly; "
            f"SameSite=Strict{secure}"
        )
