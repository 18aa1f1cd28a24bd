"""LLM clients against a scripted server speaking Ollama's real /api/chat wire format."""

from __future__ import annotations

import json

import pytest
import requests

from macha_obs.agent.llm import (
    LlmMetrics,
    LlmProtocolError,
    LlmServerError,
    LlmTimeout,
    LlmUnavailable,
    ModelMissing,
    OllamaChat,
    OpenAIChat,
    client_from_config,
)
from macha_obs.agent.schema import LlmDecision, parse_output, to_proposals, wire_schema
from macha_obs.models import RestartUnit
from tests.harness.llm_fixtures import Scripted, ScriptedOllama, free_port

DECISION = {
    "assessment": "failing",
    "severity": "critical",
    "summary": "nginx.service failed",
    "root_cause": "port 80 already in use",
    "confidence": 0.7,
    "proposals": [
        {
            "action": {
                "kind": "restart_unit",
                "unit": "nginx.service",
                "tool": "",
                "mode": "dry-build",
                "path": "",
                "diff": "",
            },
            "reason": "the unit failed",
            "evidence": ["bind() failed"],
        }
    ],
}
MESSAGES = [{"role": "user", "content": "hello"}]


def client(server: ScriptedOllama, **kw) -> OllamaChat:
    kw.setdefault("sleep", delays.append)
    return OllamaChat(server.url, "llama3.1:8b", **kw)


delays: list[float] = []


@pytest.fixture(autouse=True)
def _clear_delays():
    delays.clear()


def test_request_wire_format(scripted_ollama: ScriptedOllama) -> None:
    scripted_ollama.push(scripted_ollama.chat_reply(json.dumps(DECISION)))
    schema = wire_schema(LlmDecision)
    reply = client(scripted_ollama, keep_alive="5m").chat(MESSAGES, schema)
    body = scripted_ollama.chats()[0]
    assert body["stream"] is False
    assert body["format"] == schema
    assert body["options"]["temperature"] == 0.0
    assert body["options"]["seed"] == 0
    assert body["keep_alive"] == "5m"
    assert body["messages"] == MESSAGES
    assert (reply.tokens_in, reply.tokens_out, reply.finish_reason) == (812, 97, "stop")
    decision = parse_output(reply.content, LlmDecision)
    assert to_proposals(decision)[0].action == RestartUnit(unit="nginx.service")


def test_exact_content_is_returned_verbatim(scripted_ollama: ScriptedOllama) -> None:
    text = '{"a": "line\x01with control"}'
    scripted_ollama.push(scripted_ollama.chat_reply(text))
    assert client(scripted_ollama).chat(MESSAGES, {}).content == text


def test_500_is_retried_then_succeeds(scripted_ollama: ScriptedOllama) -> None:
    scripted_ollama.push(
        Scripted(500, {"error": "llama runner process has terminated"}),
        Scripted(503, {"error": "busy"}),
        scripted_ollama.chat_reply("{}"),
    )
    metrics = LlmMetrics()
    assert client(scripted_ollama, metrics=metrics).chat(MESSAGES, {}).content == "{}"
    assert len(scripted_ollama.chats()) == 3
    assert delays == [0.5, 1.0]  # tenacity's intended waits, not slept
    assert metrics.requests == {"ok": 1}


def test_500_gives_up_after_the_attempts(scripted_ollama: ScriptedOllama) -> None:
    scripted_ollama.push(*[Scripted(500, {"error": "boom"})] * 3)
    metrics = LlmMetrics()
    with pytest.raises(LlmServerError, match="HTTP 500: boom"):
        client(scripted_ollama, metrics=metrics).chat(MESSAGES, {})
    assert len(scripted_ollama.chats()) == 3
    assert metrics.requests == {"server_error": 1}


def test_4xx_is_not_retried(scripted_ollama: ScriptedOllama) -> None:
    scripted_ollama.push(Scripted(400, {"error": "invalid format"}))
    with pytest.raises(LlmProtocolError, match="invalid format"):
        client(scripted_ollama).chat(MESSAGES, {})
    assert len(scripted_ollama.chats()) == 1


def test_read_timeout_is_not_retried(scripted_ollama: ScriptedOllama) -> None:
    scripted_ollama.push(scripted_ollama.chat_reply("{}"), scripted_ollama.chat_reply("{}"))
    scripted_ollama.script[0].delay = 1.0
    metrics = LlmMetrics()
    with pytest.raises(LlmTimeout, match=r"no answer within 0\.2s"):
        client(scripted_ollama, read_timeout=0.2, metrics=metrics).chat(MESSAGES, {})
    assert len(scripted_ollama.chats()) == 1
    assert metrics.requests == {"timeout": 1}


def test_missing_model_on_chat_and_check(scripted_ollama: ScriptedOllama) -> None:
    chat = OllamaChat(scripted_ollama.url, "mistral:7b", sleep=delays.append)
    with pytest.raises(ModelMissing, match=r"not pulled.*ollama pull mistral:7b"):
        chat.chat(MESSAGES, {})
    with pytest.raises(ModelMissing, match=r"have: llama3.1:8b"):
        chat.check()
    assert delays == []
    client(scripted_ollama).check()  # present: no error


def test_server_down_is_retried_then_reported() -> None:
    port = free_port()  # nothing listens here
    chat = OllamaChat(f"http://127.0.0.1:{port}", "m", sleep=delays.append, connect_timeout=0.5)
    with pytest.raises(LlmUnavailable, match="not reachable") as info:
        chat.chat(MESSAGES, {})
    assert not isinstance(info.value, LlmTimeout)
    assert delays == [0.5, 1.0]
    with pytest.raises(LlmUnavailable):
        chat.check()


def test_answer_without_message_is_a_protocol_error(scripted_ollama: ScriptedOllama) -> None:
    scripted_ollama.push(Scripted(200, {"done": True}))
    with pytest.raises(LlmProtocolError, match=r"no message\.content"):
        client(scripted_ollama).chat(MESSAGES, {})


def test_openai_response_format_forms(make_config) -> None:
    session = requests.Session()
    cfg = make_config(llm_backend="openai", model="smollm2", openai_url="http://127.0.0.1:1")
    std = client_from_config(cfg, session=session)
    compat = client_from_config(cfg, session=session, openai_response_format="json_object")
    assert isinstance(std, OpenAIChat)
    assert isinstance(compat, OpenAIChat)
    assert (std.response_format, compat.response_format) == ("json_schema", "json_object")
    assert std.timeout == (3.0, cfg.llm_timeout)
    ollama = client_from_config(make_config(llm_keep_alive="1h"))
    assert isinstance(ollama, OllamaChat)
    assert ollama.keep_alive == "1h"


def test_metrics_are_exported(scripted_ollama: ScriptedOllama) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from macha_obs.intake.webhook import ReceiverStats
    from macha_obs.metrics import LlmCollector, WebhookCollector

    metrics, stats = LlmMetrics(), ReceiverStats()
    scripted_ollama.push(scripted_ollama.chat_reply("{}"), Scripted(400, {"error": "bad"}))
    chat = client(scripted_ollama, metrics=metrics)
    chat.chat(MESSAGES, {})
    with pytest.raises(LlmProtocolError):
        chat.chat(MESSAGES, {})
    stats.count("accepted", new=3, duplicate=1)
    registry = CollectorRegistry()
    registry.register(WebhookCollector(stats))
    registry.register(LlmCollector(metrics))
    value = registry.get_sample_value
    assert value("macha_llm_requests_total", {"outcome": "ok"}) == 1
    assert value("macha_llm_requests_total", {"outcome": "protocol"}) == 1
    assert value("macha_llm_tokens_total", {"direction": "in"}) == 812
    assert value("macha_llm_tokens_total", {"direction": "out"}) == 97
    assert value("macha_llm_request_duration_seconds_count") == 2
    assert value("macha_webhook_deliveries_total", {"result": "accepted"}) == 1
    assert value("macha_webhook_deliveries_total", {"result": "unauthorized"}) == 0
    assert value("macha_webhook_alerts_total", {"result": "new"}) == 3
    assert b"macha_webhook_truncated_alerts_total 0.0" in generate_latest(registry)
