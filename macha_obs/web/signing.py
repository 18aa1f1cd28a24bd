"""The approvals page's capabilities, pure: signed item links, sessions and CSRF tokens.

Each is an HMAC-SHA256 under the state dir's `approvals.key` (keys.py) over a JSON list
(a purpose, then the fields it covers), so no field can be shifted into another and no
capability can stand in for another kind:

- a link to one item covers the item's id, its action's kind and target, when it was
  queued, and an expiry no later than the item's TTL end (the alert's URL: stable for the
  item, so an alert carrying it does not flap);
- a session (the cookie a login with the token sets) covers its expiry and a digest of
  the token: a new token ends every session;
- a CSRF token covers the item, the credential that loaded the form and its expiry, so a
  form from one link or session cannot be replayed with another.

The clock is the caller's: nothing here reads the time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass

from macha_obs.models import Approval

SESSION_SECONDS = 12 * 3600
CSRF_SECONDS = 3600
_DIGITS = re.compile(r"[0-9]{1,12}")  # an expiry, in whole seconds since the epoch
_MAC = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes, unpadded base64url


@dataclass(frozen=True)
class Link:
    """A signed link's query: `?exp=<expires>&sig=<sig>` on /approvals/<id>."""

    approval_id: int
    expires: int
    sig: str

    @property
    def query(self) -> str:
        return f"exp={self.expires}&sig={self.sig}"


def parse_expiry(text: str | None) -> int | None:
    """An expiry in ASCII digits (at most 12), else None."""
    return int(text) if text is not None and _DIGITS.fullmatch(text) else None


def well_formed(mac: str | None) -> bool:
    return mac is not None and _MAC.fullmatch(mac) is not None


def link_expiry(approval: Approval) -> int:
    """A link's expiry: the item's TTL end, whole seconds down, so it never outlives it."""
    return int(approval.expires_at.timestamp())


class Signer:
    """Makes and checks the page's capabilities under one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the approvals key must be at least 32 bytes")
        self._key = key

    def _mac(self, purpose: str, *fields: object) -> str:
        message = json.dumps([purpose, *(str(f) for f in fields)], ensure_ascii=True)
        digest = hmac.new(self._key, message.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    @staticmethod
    def _same(expected: str, given: str | None) -> bool:
        return well_formed(given) and hmac.compare_digest(expected, str(given))

    # ------------------------------------------------------------ links to one item

    def _link_mac(self, approval: Approval, expires: int) -> str:
        queued = f"{approval.created_at.timestamp():.6f}"
        action = approval.action
        return self._mac("link", approval.id, action.kind, action.target, queued, expires)

    def link(self, approval: Approval) -> Link:
        expires = link_expiry(approval)
        return Link(approval.id, expires, self._link_mac(approval, expires))

    def link_valid(self, approval: Approval, expires: int, sig: str | None, now: float) -> bool:
        """The link was made by us for this very item (same action, same queueing), and
        is neither past its expiry nor reaching beyond the item's TTL."""
        if expires > link_expiry(approval) or now >= expires:
            return False
        return self._same(self._link_mac(approval, expires), sig)

    # ------------------------------------------------------------ sessions (the token)

    @staticmethod
    def _token_digest(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def session(self, token: str, now: float) -> str:
        expires = int(now) + SESSION_SECONDS
        return f"{expires}.{self._mac('session', expires, self._token_digest(token))}"

    def session_valid(self, value: str, token: str, now: float) -> bool:
        expires_text, _, mac = value.partition(".")
        expires = parse_expiry(expires_text)
        if expires is None or now >= expires:
            return False
        return self._same(self._mac("session", expires, self._token_digest(token)), mac)

    # ------------------------------------------------------------ CSRF

    def csrf(self, approval_id: int, credential: str, now: float, until: float) -> str:
        """A form's token for this item and credential, valid for an hour or until the
        credential ends, whichever is first."""
        expires = int(min(now + CSRF_SECONDS, until))
        return f"{expires}.{self._mac('csrf', approval_id, credential, expires)}"

    def csrf_valid(self, value: str | None, approval_id: int, credential: str, now: float) -> bool:
        expires_text, _, mac = (value or "").partition(".")
        expires = parse_expiry(expires_text)
        if expires is None or now >= expires:
            return False
        return self._same(self._mac("csrf", approval_id, credential, expires), mac)
