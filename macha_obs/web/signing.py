"""The approvals page's CSRF tokens, pure: an HMAC-SHA256 under the state dir's
`approvals.key` (keys.py) over a JSON list (a purpose, then the fields it covers), so no
field can be shifted into another.

A CSRF token covers the item, the credential that loaded the form (the bearer token, or
one login session) and its expiry, so a form from one session cannot be replayed with
another, nor after its session ended. No capability here stands for the token: no URL
signed here decides anything (sessions.py keeps the sessions, on the server).

The clock is the caller's: nothing here reads the time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re

CSRF_SECONDS = 3600
_DIGITS = re.compile(r"[0-9]{1,12}")  # an expiry, in whole seconds since the epoch
_MAC = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes, unpadded base64url


def parse_expiry(text: str | None) -> int | None:
    """An expiry in ASCII digits (at most 12), else None."""
    return int(text) if text is not None and _DIGITS.fullmatch(text) else None


def well_formed(mac: str | None) -> bool:
    return mac is not None and _MAC.fullmatch(mac) is not None


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
