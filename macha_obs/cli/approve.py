"""`macha-approve`: review and decide the actions waiting for a human."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from macha_obs.cli.common import (
    EXIT_FAILED,
    config_options,
    ctx_config,
    keep_options,
    open_store,
    who,
)
from macha_obs.cli.wiring import (
    remediator,
)
from macha_obs.models import (
    Approval,
    ApprovalStatus,
    describe_action,
)
from macha_obs.store import ApprovalError

# ---------------------------------------------------------------- macha-approve


def approval_dict(a: Approval) -> dict[str, Any]:
    return a.model_dump(mode="json") | {"label": describe_action(a.action)}


def _print_table(items: list[Approval], *, notes: bool = False) -> None:
    """The queue; with `notes` (list --all) why each decided item ended as it did."""
    if not items:
        click.echo("no approvals")
        return
    rows = [
        (
            str(a.id),
            a.status.value,
            a.risk.value,
            describe_action(a.action),
            a.incident_id + (f" (+{len(a.incident_ids) - 1})" if len(a.incident_ids) > 1 else ""),
            a.expires_at.strftime("%Y-%m-%d %H:%M"),
            *([a.note or "-"] if notes else []),
        )
        for a in items
    ]
    header = (
        "ID",
        "STATUS",
        "RISK",
        "ACTION",
        "INCIDENT",
        "EXPIRES (UTC)",
        *(["NOTE"] if notes else []),
    )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@config_options
@click.pass_context
def approve_main(ctx: click.Context, /, config_path: Path | None, **flags: Any) -> None:
    """Review and decide the actions waiting for a human."""
    keep_options(ctx, config_path, flags)


@approve_main.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.option("--all", "show_all", is_flag=True, help="Include decided items.")
@click.pass_context
def approve_list(ctx: click.Context, as_json: bool, show_all: bool) -> None:
    """The queue (pending items; --all for history)."""
    cfg = ctx_config(ctx)
    with open_store(cfg) as store:
        store.expire_approvals()
        items = store.list_approvals(None if show_all else {ApprovalStatus.PENDING})
    if as_json:
        click.echo(json.dumps([approval_dict(a) for a in items], indent=2))
    else:
        _print_table(items, notes=show_all)


@approve_main.command("show")
@click.argument("approval_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def approve_show(ctx: click.Context, approval_id: int, as_json: bool) -> None:
    """One item with its evidence and the reason it was queued."""
    cfg = ctx_config(ctx)
    with open_store(cfg) as store:
        approval = store.get_approval(approval_id)
    if approval is None:
        raise click.ClickException(f"no approval with id {approval_id}")
    if as_json:
        click.echo(json.dumps(approval_dict(approval), indent=2))
        return
    click.echo(f"approval {approval.id}: {describe_action(approval.action)}  [{approval.status}]")
    click.echo(f"  incident:  {', '.join(approval.incident_ids) or approval.incident_id}")
    click.echo(f"  risk:      {approval.risk}")
    click.echo(
        f"  queued:    {approval.created_at:%Y-%m-%d %H:%M:%S} UTC, "
        f"expires {approval.expires_at:%Y-%m-%d %H:%M:%S} UTC"
    )
    click.echo(f"  why:       {approval.reason}")
    for line in approval.evidence:
        click.echo(f"  evidence:  {line}")
    click.echo(f"  action:    {approval.action.model_dump_json()}")
    if approval.decided_by or approval.note:
        click.echo(f"  decided:   by {approval.decided_by or '-'}: {approval.note}")


@approve_main.command("approve")
@click.argument("approval_id", type=int)
@click.pass_context
def approve_approve(ctx: click.Context, approval_id: int) -> None:
    """Carry out an item now, if the policy still allows it."""
    cfg = ctx_config(ctx)
    with open_store(cfg) as store:
        try:
            handled = remediator(cfg, store).approve(approval_id, who())
        except ApprovalError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"approval {approval_id}: {handled.summary}")
    if handled.approval is None or handled.approval.status is not ApprovalStatus.EXECUTED:
        if handled.approval and handled.approval.status is ApprovalStatus.ACKNOWLEDGED:
            return
        sys.exit(EXIT_FAILED)


@approve_main.command("reject")
@click.argument("approval_id", type=int)
@click.option("--reason", default="", help="Why (kept in the audit log).")
@click.pass_context
def approve_reject(ctx: click.Context, approval_id: int, reason: str) -> None:
    cfg = ctx_config(ctx)
    with open_store(cfg) as store:
        try:
            remediator(cfg, store).reject(approval_id, who(), reason)
        except ApprovalError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"approval {approval_id}: rejected")
