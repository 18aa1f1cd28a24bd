"""`ask` and `discuss`: a question about this host answered by the sidecar's own model
from facts gathered by the read-only tools, with what was used cited (invariant 15).

Pure of I/O but for the injected chat client: the caller gathers the facts (the same
read-only tools the MCP server offers) and prints the answer. The model gets no tools
and its answer is only ever printed: nothing here can approve, queue or execute. When
the model is off, down, or answers outside the schema, the answer says so and the facts
gathered are still there to show (invariant 8: unknown, never made up).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from macha_obs.agent.llm import ChatClient, Message
from macha_obs.agent.llm_errors import LlmError
from macha_obs.agent.prompt import clean_line, estimate_tokens, template
from macha_obs.agent.schema import OutputInvalid, parse_output, wire_schema

# What the facts may take of the prompt; the model's context is 4096 tokens at least.
FACTS_BUDGET = 2200
HISTORY_TURNS = 4


@dataclass(frozen=True)
class Fact:
    """One thing a read-only tool answered: what it is (its citation) and its data."""

    cite: str  # e.g. "incident fd-…", "unit nginx.service", "journal nginx.service@…"
    data: Any


class ConversationReply(BaseModel):
    """The model's answer: text, and the citations it relied on."""

    # llama.cpp turns maxLength into a grammar rule per character: 2000 is over its limit
    answer: str = Field(max_length=500)
    used: list[str] = Field(default_factory=list, max_length=10)


@dataclass
class Answer:
    question: str
    text: str | None  # None: the model gave none (error says why)
    cited: list[str]  # the facts gathered (always shown)
    used: list[str] = field(default_factory=list)  # of those, what the model says it used
    error: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.text,
            "error": self.error or None,
            "cited": self.cited,
            "used": self.used,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "seconds": round(self.seconds, 3),
            "acted": False,
        }


def render_facts(facts: Sequence[Fact], budget: int = FACTS_BUDGET) -> tuple[str, list[str]]:
    """The facts as JSON blocks within the budget (first ones first); what fitted."""
    blocks: list[str] = []
    kept: list[str] = []
    used = 0
    for fact in facts:
        block = f"[{fact.cite}]\n" + json.dumps(fact.data, ensure_ascii=True, default=str)
        cost = estimate_tokens(block)
        if used + cost > budget:
            block = f"[{fact.cite}] (left out: over the prompt's budget)"
            cost = estimate_tokens(block)
            if used + cost > budget:
                continue
        else:
            kept.append(fact.cite)
        blocks.append(block)
        used += cost
    return "\n\n".join(blocks), kept


def build_messages(
    question: str,
    facts: Sequence[Fact],
    *,
    hostname: str,
    now: datetime,
    history: Sequence[tuple[str, str]] = (),
) -> tuple[list[Message], list[str]]:
    """The system message, the facts and the question (with the last turns of a
    discussion); which facts fitted the budget."""
    system = template("conversation.txt").substitute(
        hostname=clean_line(hostname), now=now.isoformat(timespec="seconds")
    )
    rendered, kept = render_facts(facts)
    messages: list[Message] = [
        {"role": "system", "content": system},
        {"role": "user", "content": f"Facts:\n\n{rendered}"},
        {"role": "assistant", "content": "I have read the facts."},
    ]
    for asked, answered in list(history)[-HISTORY_TURNS:]:
        messages.append({"role": "user", "content": clean_line(asked)})
        messages.append({"role": "assistant", "content": answered})
    messages.append({"role": "user", "content": clean_line(question)})
    return messages, kept


def answer(
    client: ChatClient | None,
    question: str,
    facts: Sequence[Fact],
    *,
    hostname: str,
    now: datetime,
    history: Sequence[tuple[str, str]] = (),
) -> Answer:
    """Ask the model; on any failure the answer says so and keeps the facts' citations."""
    messages, kept = build_messages(question, facts, hostname=hostname, now=now, history=history)
    cited = [f.cite for f in facts]
    if client is None:
        return Answer(question, None, cited, error="the model is off (llm_enabled = false)")
    try:
        reply = client.chat(messages, wire_schema(ConversationReply))
        parsed = parse_output(reply.content, ConversationReply)
    except (LlmError, OutputInvalid) as exc:
        return Answer(question, None, cited, error=f"the model failed: {exc}")
    # a citation the model made up is dropped: only facts it was shown count
    used = [c for c in parsed.used if c in kept]
    return Answer(
        question,
        parsed.answer,
        cited,
        used=used,
        tokens_in=reply.tokens_in,
        tokens_out=reply.tokens_out,
        seconds=reply.duration_seconds,
    )
