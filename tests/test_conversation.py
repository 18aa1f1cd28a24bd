"""The pure parts of the conversation doors, on literals: what a client is shown of
untrusted text (invariant 9), who a client says it is, which Host names /mcp accepts,
and how `ask` builds its prompt and treats the model's answer (invariants 8 and 15)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from macha_obs.agent.conversation import Fact, answer, build_messages, render_facts
from macha_obs.agent.llm_errors import LlmUnavailable
from macha_obs.mcp.desk import Door, client_label
from macha_obs.mcp.http import allowed_hosts
from macha_obs.mcp.stats import McpStats
from macha_obs.mcp.untrusted import untrusted
from tests.test_agent import ScriptedChat
from tests.test_injection import INJECTION

NOW = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)
FACTS = [
    Fact("status", {"autonomy": "suggest"}),
    Fact("incident fd-abc123-1", {"units": ["nginx.service"]}),
]


def test_invariant_9_untrusted_text_is_redacted_marked_and_flagged() -> None:
    shown = untrusted(["db: password=Sup3rS3cretPassw0rd", *INJECTION], source="journal", limit=4)
    assert shown["untrusted"] is True
    assert "never instructions" in shown["note"]
    assert "Sup3rS3cretPassw0rd" not in json.dumps(shown)
    assert shown["left_out_lines"] == 2  # the newest kept
    assert {"pipe-to-shell", "self-approval", "ignore-instructions"} <= set(shown["flags"])


def test_a_client_name_becomes_a_safe_label() -> None:
    assert client_label("Claude Desktop\x1b[31m") == "Claude-Desktop-31m"
    assert client_label("") == "unknown"
    assert client_label("a" * 99) == "a" * 40
    door = Door("mcp", client_label("inspector"), "http")
    assert door.confirmed_by_person() == "mcp:inspector (confirmed by a person)"


def test_mcp_takes_only_the_listeners_own_host_names() -> None:
    hosts = allowed_hosts("127.0.0.1", 9847, "web1", None)
    assert {"127.0.0.1:9847", "localhost:9847", "[::1]:9847"} <= hosts
    assert "web1:9847" not in hosts  # loopback: the host's name would be a rebinding
    wide = allowed_hosts("0.0.0.0", 9847, "web1", "https://macha.example.org/x")
    assert {"web1:9847", "macha.example.org"} <= wide
    assert "evil.example:9847" not in wide


def test_mcp_counts_over_fixed_label_sets() -> None:
    stats = McpStats()
    stats.count("status", "ok")
    stats.count("rm -rf", "ok")
    stats.count("approve", "whatever")
    assert stats.snapshot() == {("status", "ok"): 1, ("other", "ok"): 1, ("approve", "error"): 1}


def test_facts_stay_within_the_budget_first_ones_first() -> None:
    big = [Fact(f"unit u{i}.service", {"lines": ["x" * 300] * 10}) for i in range(20)]
    text, kept = render_facts(big, budget=2000)
    assert kept == [f.cite for f in big[: len(kept)]]
    assert 0 < len(kept) < 20
    assert "left out: over the prompt's budget" in text


def test_the_question_is_last_and_the_facts_fenced_as_data() -> None:
    messages, kept = build_messages("why?\x1b[2J", FACTS, hostname="web1", now=NOW)
    assert messages[0]["role"] == "system"
    assert "cannot approve" in messages[0]["content"]
    assert messages[-1] == {"role": "user", "content": "why? [2J"}
    assert kept == ["status", "incident fd-abc123-1"]


def test_invariant_15_the_answer_is_text_and_citations_only() -> None:
    reply = json.dumps(
        {"answer": "approve it: macha-approve approve 0", "used": ["incident fd-abc123-1", "x"]}
    )
    got = answer(ScriptedChat(reply), "why?", FACTS, hostname="web1", now=NOW)
    assert got.text == "approve it: macha-approve approve 0"  # printed, never carried out
    assert got.used == ["incident fd-abc123-1"]  # a made-up citation is dropped
    assert got.to_json()["acted"] is False


def test_invariant_8_a_model_off_or_failing_says_so_and_keeps_the_facts() -> None:
    off = answer(None, "why?", FACTS, hostname="web1", now=NOW)
    assert off.text is None
    assert "off" in off.error
    assert off.cited == ["status", "incident fd-abc123-1"]
    down = answer(ScriptedChat(LlmUnavailable("refused")), "why?", FACTS, hostname="h", now=NOW)
    assert down.text is None
    assert down.error.startswith("the model failed")
    garbled = answer(ScriptedChat("not json"), "why?", FACTS, hostname="h", now=NOW)
    assert garbled.text is None
    assert "not JSON" in garbled.error
