"""A 5,000-digit approval id (issue 20) gets the ordinary "no such item" answer on every
door that parses an id: past Python's 4,300-digit int() limit, nothing raises. The
command line is covered by tests/test_cli_fresh.py (`{long_id}` cases)."""

from __future__ import annotations

import pytest
import requests

from tests.test_web import TOKEN, Bench, bench  # noqa: F401

LONG_ID = "1" + "0" * 5000
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def answer(method: str, url: str) -> tuple[int, str]:
    data = {"csrf": "x"} if method == "POST" else None
    reply = requests.request(method, url, data=data, headers=BEARER, timeout=10)
    assert "Traceback" not in reply.text
    assert 'File "' not in reply.text
    return reply.status_code, reply.text


@pytest.mark.parametrize("verb", ["", "/approve", "/reject"])
@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
def test_a_5000_digit_id_on_the_approvals_page_is_answered_like_a_missing_one(
    bench: Bench,  # noqa: F811
    verb: str,
    method: str,
) -> None:
    bench.queue()
    status, text = answer(method, f"{bench.url}/approvals/{LONG_ID}{verb}")
    assert status == 404  # no id is that long: no such page, whatever the method
    assert method == "HEAD" or "There is no such page." in text
    assert bench.executor.ran == []
