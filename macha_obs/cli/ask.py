"""`macha-obs ask "QUESTION"`: the sidecar's own model answers from the read-only tools.

The facts come from the same read-only tools the MCP server offers (macha_obs/mcp/), the
answer from agent/conversation.py with the configured model. It never acts: no desk,
no approval, no queue; the model's text is only printed. A long call shows a progress
line; Ctrl-C ends it with nothing done.
"""

from __future__ import annotations

from datetime import UTC, datetime

import click

from macha_obs.agent.conversation import answer
from macha_obs.cli.common import ctx_config, open_store
from macha_obs.cli.talk import answer_json, chat_client, local_parts, print_answer, with_progress
from macha_obs.cli.wiring import build_executor
from macha_obs.mcp.gather import for_question

EXIT_INTERRUPTED = 130
FACT_PREVIEW = 300


@click.command("ask")
@click.argument("question")
@click.option("--json", "as_json", is_flag=True, help="The answer, citations and facts as JSON.")
@click.pass_context
def ask(ctx: click.Context, question: str, as_json: bool) -> None:
    """Ask about this host; answered from the record and the read-only tools. Never acts."""
    cfg = ctx_config(ctx)
    with open_store(cfg) as store:
        executor = build_executor(cfg, store)
        try:
            facts, _desk = local_parts(cfg, store, executor)  # the desk stays unused
            gathered = for_question(facts, question)
        finally:
            executor.close()
    client = chat_client(cfg)
    now = datetime.now(UTC)
    reply = with_progress(
        lambda: answer(client, question, gathered, hostname=cfg.hostname, now=now),
        model=cfg.model,
        quiet=as_json or client is None,
    )
    if as_json:
        click.echo(answer_json(reply, gathered))
    else:
        print_answer(reply, gathered)
