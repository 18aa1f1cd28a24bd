"""The pull's answer reader (macha_obs/intake/pull_answer.py), on literals: bounds, shape,
and the same groups however the answer is cut into chunks."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from macha_obs.intake.pull_answer import (
    MAX_DEPTH,
    MAX_ITEM_VALUES,
    AnswerLimits,
    AnswerReader,
    AnswerRefused,
    RawGroup,
    read_answer,
)

GROUPS: list[dict[str, Any]] = [
    {
        "labels": {"alertname": 'Tricky "]},[{'},
        "receiver": {"name": "x,y"},
        "alerts": [
            {
                "labels": {"alertname": "A\\", "instance": "h:1", "k": "[{"},
                "annotations": {"summary": "é ünïcode \u2028"},
                "fingerprint": "f1",
                "startsAt": "2026-12-01T10:00:00.000Z",
                "endsAt": "2099-01-01T00:00:00.000Z",
                "status": {"state": "active", "silencedBy": [], "inhibitedBy": []},
                "receivers": [{"name": "x"}],
            },
            {"labels": {}, "fingerprint": "f2"},
        ],
    },
    {"labels": {}, "receiver": {"name": "y"}, "alerts": []},
]
TEXT = json.dumps(GROUPS, ensure_ascii=False).encode()


def as_json(groups: list[RawGroup]) -> list[dict[str, Any]]:
    return [{**json.loads(g.meta), "alerts": [json.loads(a) for a in g.alerts]} for g in groups]


@given(st.lists(st.integers(min_value=1, max_value=len(TEXT)), max_size=40))
def test_any_cut_into_chunks_reads_the_same(cuts: list[int]) -> None:
    reader = AnswerReader(AnswerLimits())
    points = sorted({0, len(TEXT), *cuts})
    for start, end in itertools.pairwise(points):
        reader.feed(TEXT[start:end])
    assert as_json(reader.finish()) == GROUPS


def test_each_group_keeps_its_text_without_its_alerts() -> None:
    [first, second] = read_answer(TEXT)
    assert json.loads(first.meta)["alerts"] == []
    assert [json.loads(a)["fingerprint"] for a in first.alerts] == ["f1", "f2"]
    assert second.alerts == []


@pytest.mark.parametrize(
    ("text", "result"),
    [
        (b"", "invalid"),
        (b"[", "invalid"),
        (b"{}", "invalid"),
        (b"null", "invalid"),
        (b"[1, 2]", "invalid"),
        (b'["a"]', "invalid"),
        (b"[[]]", "invalid"),
        (b"[{},]", "invalid"),
        (b"[,{}]", "invalid"),
        (b"[{}{}]", "invalid"),
        (b"[{}] x", "invalid"),
        (b"[{]", "invalid"),
        (b'[{"alerts": [1]}]', "invalid"),
        (b'[{"alerts": [{}{}]}]', "invalid"),
        (b'[{"alerts": [{"a":}]}]', "invalid"),
        (b'[{"other": []}]', "invalid"),
        (b'[{"alerts": [], "alerts": []}]', "invalid"),
        (b'[{"alerts": [{"a": ' + b"[" * 20 + b"]" * 20 + b"}]}]", "too_large"),
        (b'[{"alerts": [{"a": [' + b"1," * MAX_ITEM_VALUES + b"1]}]}]", "too_large"),
    ],
)
def test_what_is_refused(text: bytes, result: str) -> None:
    with pytest.raises(AnswerRefused) as refused:
        read_answer(text)
    assert refused.value.result == result


def test_an_empty_answer_is_no_groups() -> None:
    assert read_answer(b" [ ] \n") == []


def test_the_caps_refuse_as_soon_as_they_are_passed() -> None:
    limits = AnswerLimits(max_bytes=1000, max_groups=2, max_alerts=3)
    for text, why in [
        (b"[{},{},{}]", "over 2 groups"),
        (b'[{"alerts":[{},{}]},{"alerts":[{},{}]}]', "over 3 alerts"),
        (b"[" + b" " * 1000 + b"]", "answer over 1000 bytes"),
    ]:
        with pytest.raises(AnswerRefused, match=why) as refused:
            read_answer(text, limits)
        assert refused.value.result == "too_large"


def test_a_flood_is_refused_after_reading_little_of_it() -> None:
    """[{},{},…]: refused at the group cap, long before the 60 MB it would go on for."""
    reader = AnswerReader(AnswerLimits())
    block = b"{}," * 21_845  # 64 KiB: 1,000 of them are 62.5 MiB

    def flood() -> None:
        reader.feed(b"[")
        for _ in range(1000):
            reader.feed(block)

    with pytest.raises(AnswerRefused, match="over 5000 groups"):
        flood()
    assert reader.bytes < 100_000


def test_nesting_is_refused_past_its_depth() -> None:
    text = b'[{"alerts": [{"a": ' + b"[" * (MAX_DEPTH - 4) + b"]" * (MAX_DEPTH - 4) + b"}]}]"
    [group] = read_answer(text)  # as deep as allowed
    assert len(group.alerts) == 1
    deeper = text.replace(b"[[", b"[[[", 1).replace(b"]]", b"]]]", 1)
    with pytest.raises(AnswerRefused, match=f"nested deeper than {MAX_DEPTH}"):
        read_answer(deeper)
