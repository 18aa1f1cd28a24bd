"""Share of schema-valid answers a real model gives to the analyzer's own prompt.

    python bench/llm_schema.py --url http://127.0.0.1:8080 --model smollm2 \
        --calls 20 --temperature 0 --temperature 1.5 [--backend openai|ollama]

Each call is the analyzer's real prompt (one incident, journal lines) with the decision
schema; an answer counts as valid only if it parses, matches the schema and every action
validates into `models.Action`. Failures are counted by cause.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from datetime import UTC, datetime

from macha_obs.agent.llm import LlmError, OllamaChat, OpenAIChat
from macha_obs.agent.prompt import PromptContext, build_prompt
from macha_obs.agent.schema import (
    LlmDecision,
    OutputInvalid,
    parse_output,
    to_proposals,
    wire_schema,
)
from macha_obs.models import Alert, Incident

JOURNAL = [
    "nginx[812]: nginx: [emerg] bind() to 0.0.0.0:80 failed (98: Address already in use)",
    "systemd[1]: nginx.service: Main process exited, code=exited, status=1/FAILURE",
    "systemd[1]: nginx.service: Failed with result 'exit-code'.",
]


def incident() -> Incident:
    alert = Alert.model_validate(
        {
            "status": "firing",
            "labels": {"alertname": "UnitFailed", "unit": "nginx.service", "severity": "critical"},
            "annotations": {"summary": "nginx.service failed"},
            "startsAt": "2026-11-25T10:00:00Z",
        }
    )
    return Incident(id="am-bench", source="alert", alerts=[alert])


VERBOSE = False


def classify(text: str, finish: str) -> str:
    try:
        to_proposals(parse_output(text, LlmDecision))
    except OutputInvalid as exc:
        msg = str(exc)
        if VERBOSE:
            print(f"  {finish}: {msg}: {text[:400]!r}", flush=True)
        if finish == "length":
            return "truncated"
        if msg.startswith("not JSON"):
            return "not_json"
        if msg.startswith("invalid"):
            return "bad_action"
        return "schema"
    return "valid"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--backend", choices=["openai", "ollama"], default="openai")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--temperature", type=float, action="append", default=[])
    ap.add_argument("--max-tokens", type=int, default=1000)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    global VERBOSE  # noqa: PLW0603 - a script's switch
    VERBOSE = args.verbose
    prompt = build_prompt(
        PromptContext(
            incident=incident(),
            hostname="web1",
            now=datetime(2026, 11, 25, 12, tzinfo=UTC),
            unit_status={"nginx.service": "failed (Result: exit-code)"},
            journals={"nginx.service": JOURNAL},
        )
    )
    schema = wire_schema(LlmDecision)
    for temperature in args.temperature or [0.0]:
        counts: Counter[str] = Counter()
        durations = []
        for seed in range(args.calls):
            kw = {"temperature": temperature, "seed": seed, "max_tokens": args.max_tokens}
            client = (
                OpenAIChat(args.url, args.model, response_format="json_object", **kw)
                if args.backend == "openai"
                else OllamaChat(args.url, args.model, **kw)
            )
            try:
                reply = client.chat(prompt.messages, schema)
            except LlmError as exc:
                counts[f"error:{exc.kind}"] += 1
                continue
            durations.append(reply.duration_seconds)
            counts[classify(reply.content, reply.finish_reason)] += 1
        print(
            json.dumps(
                {
                    "backend": args.backend,
                    "temperature": temperature,
                    "calls": args.calls,
                    "valid": counts["valid"],
                    "share_valid": round(counts["valid"] / args.calls, 3),
                    "by_outcome": dict(counts),
                    "median_seconds": round(statistics.median(durations), 2) if durations else None,
                    "prompt_tokens_estimate": prompt.tokens,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
