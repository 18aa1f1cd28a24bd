"""The redaction corpus (tests/fixtures/redaction_corpus.txt), through the path `macha-obs
analyze` takes: a webhook payload and a unit's journal → analyze_payload → Analyzer →
build_prompt → OllamaChat → a real HTTP server that records what it was sent. Every secret
must be gone from what the server received, and every ordinary line must arrive unchanged.

All values are made up in the public formats their vendors document; none is a real secret.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from macha_obs.agent.analyze import Analyzer
from macha_obs.agent.llm import OllamaChat
from macha_obs.agent.redact import redact
from macha_obs.agent.report import analyze_payload
from macha_obs.collect.journal import MESSAGE_MAX, parse_entries
from macha_obs.config import AnalysisMode
from macha_obs.policy.judge import PolicyContext, judge
from tests.harness.llm_fixtures import ScriptedOllama
from tests.harness.receiver_support import alert, payload

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CORPUS = Path(__file__).parent / "fixtures" / "redaction_corpus.txt"


@dataclass(frozen=True)
class Corpus:
    secrets: list[tuple[str, str]]  # (journal line, the secret it must lose)
    blocks: list[tuple[list[str], list[str]]]  # (one journal's key block, its secrets)
    ordinary: list[str]  # lines that must come through unchanged


def load_corpus(path: Path = CORPUS) -> Corpus:
    """The format is described at the top of the file."""
    corpus = Corpus([], [], [])
    lines = iter(path.read_text().split("\n"))
    for line in lines:
        if line.startswith("secret: "):
            corpus.secrets.append((next(lines), line.removeprefix("secret: ")))
        elif line.startswith("block: "):
            block = list(iter(lines.__next__, "end"))
            corpus.blocks.append((block, line.removeprefix("block: ").split(" | ")))
        elif line == "ordinary:":
            corpus.ordinary.extend(x for x in lines if x)
        elif line and not line.startswith("#"):
            raise ValueError(f"{path}: unexpected line {line!r}")
    return corpus


DECISION = {
    "assessment": "failing",
    "severity": "warning",
    "summary": "app.service failed",
    "root_cause": "",
    "confidence": 0.5,
    "proposals": [],
}
MARK = "2026-11-25T11:59:57+0000 web1 app[4242]: marker line before the case"


def _prompt_for(server: ScriptedOllama, lines: list[str], make_config: Any) -> str:
    """What the model server received for an alert on app.service with this journal."""
    cfg = make_config()
    server.push(server.chat_reply(json.dumps(DECISION)))
    analyzer = Analyzer(
        mode=AnalysisMode.LLM_FIRST,
        client=OllamaChat(server.url, "llama3.1:8b", sleep=lambda _s: None),
        hostname="web1",
        now=lambda: NOW,
    )
    analyze_payload(
        json.dumps(payload(alert(unit="app.service"))),
        analyzer=analyzer,
        judge=lambda action, _inc: judge(action, PolicyContext(config=cfg, now=NOW)),
        journals={"app.service": [MARK, *lines]},
    )
    body = server.chats()[-1]
    return "\n".join(m["content"] for m in body["messages"])


def test_corpus_through_analyze(scripted_ollama: ScriptedOllama, make_config: Any) -> None:
    corpus = load_corpus()
    assert len(corpus.secrets) + sum(len(b) for b, _ in corpus.blocks) >= 100
    assert len(corpus.ordinary) >= 40
    # each secret is in its case: a typo would make a case pass without testing anything
    assert all(secret in line for line, secret in corpus.secrets)
    assert all(any(s in x for x in b) for b, secrets in corpus.blocks for s in secrets)
    leaks: list[str] = []
    for line, secret in corpus.secrets:
        sent = _prompt_for(scripted_ollama, [line], make_config)
        assert MARK in sent  # the journal reached the prompt
        if secret in sent or "[REDACTED" not in sent:
            leaks.append(f"{secret!r} in {line!r}")
    block_lines = 0
    for lines, secrets in corpus.blocks:
        sent = _prompt_for(scripted_ollama, lines, make_config)
        assert MARK in sent
        block_lines += len(lines)
        leaks += [f"{s!r} of a block" for s in secrets if s in sent]
    changed: list[str] = []
    for line in corpus.ordinary:
        sent = _prompt_for(scripted_ollama, [line], make_config)
        if line not in sent.splitlines():
            changed.append(line)
    total = len(corpus.secrets) + block_lines
    redacted = total - len(leaks)
    kept = len(corpus.ordinary) - len(changed)
    print(
        f"\nredaction corpus: {redacted} of {total} secret-bearing lines redacted "
        f"({len(corpus.secrets)} single lines, {len(corpus.blocks)} key blocks of "
        f"{block_lines} lines); {kept} of {len(corpus.ordinary)} ordinary lines unchanged"
    )
    assert not leaks, "secrets reached the model:\n" + "\n".join(leaks)
    assert not changed, "ordinary lines changed:\n" + "\n".join(changed)


AWS_SECRET = "7Hq2mZ9vB4xL1pW8nK3/rT6yF0sQe5Vd9Gj2Ub4A"  # 40 characters, made up


def test_a_secret_cut_by_an_alerts_summary_bound_never_reaches_the_model(
    scripted_ollama: ScriptedOllama, make_config: Any
) -> None:
    """The summary is shown to 160 characters: redacted first, then cut, so no prefix of
    the key is left for the model, wherever the cut falls in it."""
    cfg = make_config()
    for at in (140, 150, 155):
        a = alert(unit="app.service")
        a["annotations"]["summary"] = "upload failed: " + "x " * ((at - 15) // 2) + AWS_SECRET
        scripted_ollama.push(scripted_ollama.chat_reply(json.dumps(DECISION)))
        analyzer = Analyzer(
            mode=AnalysisMode.LLM_FIRST,
            client=OllamaChat(scripted_ollama.url, "llama3.1:8b", sleep=lambda _s: None),
            hostname="web1",
            now=lambda: NOW,
        )
        analyze_payload(
            json.dumps(payload(a)),
            analyzer=analyzer,
            judge=lambda action, _inc: judge(action, PolicyContext(config=cfg, now=NOW)),
            journals={"app.service": [MARK]},
        )
        sent = "\n".join(m["content"] for m in scripted_ollama.chats()[-1]["messages"])
        assert "upload failed" in sent
        assert AWS_SECRET[:8] not in sent, at


def test_a_secret_cut_by_the_journals_message_bound_is_redacted(
    scripted_ollama: ScriptedOllama, make_config: Any
) -> None:
    """collect/journal.py keeps 300 characters of a message and marks the cut with "…";
    what is left of a key before the mark is redacted like the key."""
    message = "s3 sync failed: " + "a " * 130 + AWS_SECRET
    record = {"__CURSOR": "c1", "_SYSTEMD_UNIT": "app.service", "PRIORITY": "3"}
    [entry] = parse_entries(json.dumps(record | {"MESSAGE": message}))
    assert entry.message.endswith("…")
    assert len(entry.message) == MESSAGE_MAX
    kept = entry.message.split()[-1].rstrip("…")
    assert 12 <= len(kept) < len(AWS_SECRET)  # a prefix of the key survived the cut
    # every reader redacts first: the cut-off prefix goes like the whole key would
    assert kept not in redact(entry.message)
    assert redact(entry.message).endswith(f"[REDACTED {len(kept)} chars]…")
    sent = _prompt_for(
        scripted_ollama, [f"2026-11-25T11:59:58+0000 web1 app[4242]: {entry.message}"], make_config
    )
    assert kept not in sent
