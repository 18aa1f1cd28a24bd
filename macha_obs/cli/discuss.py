"""`macha-approve discuss ID`: a conversation about one pending item, then the person's
own decision.

What the item is and why it was proposed, its evidence, what a person decided about the
same fix for the same problem before, and what approving would do now (judged, not
recorded) are printed first; the model answers questions from those facts (one with
`--question`, or line by line until an empty line). The decision is the ordinary
approve / reject / leave prompt, read from the person's input only: nothing the model
writes is ever read back as a decision (invariant 15). A decision made here is audited
as `discuss:<user> (confirmed by a person)`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from macha_obs.agent.conversation import Answer, answer
from macha_obs.cli.common import ctx_config, open_store, who
from macha_obs.cli.talk import answer_json, chat_client, local_parts, print_answer, with_progress
from macha_obs.cli.wiring import build_executor
from macha_obs.errors import InvalidInput
from macha_obs.mcp.desk import Desk, Door
from macha_obs.mcp.gather import for_approval
from macha_obs.models import ApprovalStatus
from macha_obs.store import ApprovalError
from macha_obs.terminal import inert

MAX_APPROVAL_ID = 2**63 - 1


def _approval_id(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) > MAX_APPROVAL_ID:
        raise click.BadParameter(f"'{inert(value)}' is not an approval id (ASCII digits)")
    return int(value)


def _brief(item: dict[str, Any], policy: dict[str, Any]) -> None:
    click.echo(f"approval {item['id']}: {inert(item['label'])}  [{item['status']}]")
    click.echo(f"  risk:      {item['risk']}")
    click.echo(f"  incidents: {', '.join(inert(i) for i in item['incident_ids'])}")
    for line in item["why"]["lines"]:
        click.echo(f"  why:       {inert(line)}")
    for line in item["evidence"]["lines"]:
        click.echo(f"  evidence:  {inert(line)}")
    click.echo(f"  history:   {inert(item['history'] or 'no decision on this fix before')}")
    click.echo(
        f"  approving now: {policy['outcome']}: {inert(policy['reason'])} (recorded nothing)"
    )


@click.command("discuss")
@click.argument("approval_id", callback=_approval_id)
@click.option("--question", "-q", help="Ask one question and leave (no decision prompt).")
@click.option("--json", "as_json", is_flag=True, help="With --question: the answer as JSON.")
@click.pass_context
def discuss(ctx: click.Context, approval_id: int, question: str | None, as_json: bool) -> None:
    """Talk about a pending item with the model, then decide it yourself."""
    cfg = ctx_config(ctx)
    client = chat_client(cfg)
    with open_store(cfg) as store:
        executor = build_executor(cfg, store)
        try:
            facts, desk = local_parts(cfg, store, executor)
            try:
                gathered = for_approval(facts, approval_id)
            except InvalidInput as exc:
                raise click.ClickException(inert(str(exc))) from exc

            def ask_model(text: str, history: list[tuple[str, str]]) -> Answer:
                return with_progress(
                    lambda: answer(
                        client,
                        text,
                        gathered,
                        hostname=cfg.hostname,
                        now=datetime.now(UTC),
                        history=history,
                    ),
                    model=cfg.model,
                    quiet=as_json or client is None,
                )

            if question is not None:
                reply = ask_model(question, [])
                if as_json:
                    click.echo(answer_json(reply, gathered))
                else:
                    print_answer(reply, gathered)
                    click.echo(f"decide: macha-approve approve|reject {approval_id}")
                return
            _brief(gathered[0].data, gathered[1].data)
            history: list[tuple[str, str]] = []
            while True:
                asked = click.prompt(
                    "question (empty line to decide)", default="", show_default=False
                ).strip()
                if not asked:
                    break
                reply = ask_model(asked, history)
                print_answer(reply, gathered)
                history.append((asked, reply.text or reply.error))
            _decide(desk, facts.approval(approval_id).status, approval_id)
        finally:
            executor.close()


def _decide(desk: Desk, status: ApprovalStatus, approval_id: int) -> None:
    """The person's own decision, typed at the prompt (never the model's words)."""
    if status is not ApprovalStatus.PENDING:
        click.echo(f"approval {approval_id} is {status.value}: nothing to decide")
        return
    choice = click.prompt(
        "approve, reject, or leave it pending?",
        type=click.Choice(["approve", "reject", "leave"]),
        default="leave",
    )
    door = Door("discuss", who(), "terminal")
    try:
        if choice == "approve":
            done = desk.approve(door, approval_id)
            click.echo(f"approval {approval_id}: {inert(done['summary'])}")
        elif choice == "reject":
            reason = click.prompt("why (kept in the audit log)", default="", show_default=False)
            desk.reject(door, approval_id, reason)
            click.echo(f"approval {approval_id}: rejected")
        else:
            click.echo(f"approval {approval_id}: left pending")
    except ApprovalError as exc:
        raise click.ClickException(inert(str(exc))) from exc
