"""`macha-obs learn`: what the operator taught the sidecar, and `learn clear`.

The table of outcomes per problem and fix, the agreement between the person's decisions
and what auto-safe would have done, the fixes a person could trust (with the exact line
to add: the sidecar never grants trust to itself, invariant 14) and what is suppressed.
`learn clear` lifts a suppression; it is audited with who did it.
"""

from __future__ import annotations

import json

import click

from macha_obs.cli.common import Group, ctx_config, open_store, who
from macha_obs.config import Config
from macha_obs.metrics.learning import LearnState
from macha_obs.models import Signature
from macha_obs.remediate.learn import learned, render_json, render_text
from macha_obs.store import Outcomes
from macha_obs.terminal import inert


@click.group("learn", invoke_without_command=True, cls=Group)
@click.option("--json", "as_json", is_flag=True, help="The same, as JSON.")
@click.pass_context
def learn_group(ctx: click.Context, as_json: bool) -> None:
    """What the sidecar learned from you: outcomes, agreement, trust candidates."""
    if ctx.invoked_subcommand is not None:
        return
    cfg = ctx_config(ctx)
    with open_store(cfg, create=False) as store:
        found = learned(store.outcomes, cfg)
    if as_json:
        click.echo(json.dumps(render_json(found), indent=2, ensure_ascii=True))
    else:
        click.echo(inert_lines(render_text(found)))


@learn_group.command("clear")
@click.argument("signature", required=False)
@click.option("--all", "clear_all", is_flag=True, help="Lift every suppression.")
@click.pass_context
def learn_clear(ctx: click.Context, signature: str | None, clear_all: bool) -> None:
    """Lift the suppression of SIGNATURE's fixes (e.g. unit_failed:nginx.service), or
    --all. The counts stay; the rejections and failures that suppressed them are
    forgotten. Audited with who did it."""
    if clear_all == (signature is not None):
        raise click.UsageError("give a SIGNATURE (as `macha-obs learn` shows it) or --all")
    target = Signature.parse(signature) if signature is not None else None
    cfg = ctx_config(ctx)
    with open_store(cfg) as store:
        gone = store.outcomes.clear_suppression(target, who())
    what = inert(str(target)) if target is not None else "every signature"
    click.echo(f"cleared {what}: {gone} rejection(s)/failure(s) forgotten")


def inert_lines(text: str) -> str:
    """Every line made inert (signatures and reasons come from alerts and people)."""
    return "\n".join(inert(line) for line in text.split("\n"))


def learn_state(outcomes: Outcomes, config: Config) -> LearnState:
    """The persisted totals and the suppression count, for the metrics collector."""
    return LearnState(
        totals=tuple(outcomes.learn_totals()),
        suppressed=len(outcomes.suppressions(config)),
    )
