"""The approvals page's HTTP plumbing, pure of decisions: a request read (its query and
its form, bounded), a refusal as an exception, and every reply with the same headers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs
from wsgiref.types import StartResponse, WSGIEnvironment

from macha_obs.errors import MachaError
from macha_obs.web import render

MAX_FORM_BYTES = 16 * 1024
_FORWARDED = re.compile(r"[0-9A-Fa-f.:, \[\]]{1,200}")  # addresses only, never free text

Reply = tuple[HTTPStatus, list[tuple[str, str]], bytes]  # status, headers, page


class Refused(MachaError):
    """A request the page refuses: its status and a message for the person; `login`
    offers the login form on the page."""

    def __init__(
        self,
        status: HTTPStatus,
        message: str,
        *,
        login: bool = False,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.login, self.headers = status, message, login, headers


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # after /approvals
    query: dict[str, str]
    form: dict[str, str]
    environ: WSGIEnvironment

    @property
    def address(self) -> str:
        """The peer's own address: what wrong tokens count against."""
        return str(self.environ.get("REMOTE_ADDR", "?"))

    @property
    def remote(self) -> str:
        """The peer's address; behind a proxy, with what its X-Forwarded-For says (only
        an address list is kept: the header is the client's to write)."""
        forwarded = str(self.environ.get("HTTP_X_FORWARDED_FOR", "")).strip()
        if forwarded and _FORWARDED.fullmatch(forwarded):
            return f"{self.address} for {forwarded}"
        return self.address

    def cookie(self, name: str) -> str | None:
        for part in str(self.environ.get("HTTP_COOKIE", "")).split(";"):
            key, eq, value = part.strip().partition("=")
            if eq and key == name:
                return value
        return None


def _first(values: Mapping[str, list[str]]) -> dict[str, str]:
    return {k: v[0] for k, v in values.items() if v}


def read_request(environ: WSGIEnvironment, method: str) -> Request:
    path = environ.get("PATH_INFO", "")
    rest = path[len("/approvals") :] if path.startswith("/approvals") else path
    try:
        query = _first(
            parse_qs(environ.get("QUERY_STRING", ""), max_num_fields=10, errors="strict")
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(HTTPStatus.BAD_REQUEST, "The link's query cannot be read.") from exc
    form = _form(environ) if method == "POST" else {}
    return Request(method, rest.rstrip("/") if rest != "/" else "", query, form, environ)


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
        return _first(parse_qs(text, keep_blank_values=True, max_num_fields=10, errors="strict"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(HTTPStatus.BAD_REQUEST, "The form cannot be read.") from exc


def redirect(location: str, headers: list[tuple[str, str]] | None = None) -> Reply:
    page = render.page("See other", f'<p><a href="{render.esc(location)}">Continue</a></p>')
    return HTTPStatus.SEE_OTHER, [("Location", location), *(headers or [])], page


def send(
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
