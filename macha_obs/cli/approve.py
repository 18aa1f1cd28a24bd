"""`macha-approve`: review and decide the actions waiting for a human."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from macha_obs import __version__
from macha_obs.cli.common import (
    HELP,
    Group,
    config_options,
    ctx_config,
    keep_options,
    open_store,
    who,
)
from macha_obs.cli.discuss import discuss
from macha_obs.cli.errors import EXIT_FAILED
from macha_obs.cli.wiring import (
    remediator,
)
from macha_obs.models import (
    SETTINGS_PATCHES,
    Approval,
    ApprovalStatus,
    ConfigChange,
    SettingsPatch,
    describe_action,
)
from macha_obs.remediate.hardening import nixos_patch
from macha_obs.remediate.learn import history_line
from macha_obs.remediate.patches import PatchChecker, PatchRefused, parse_diff
from macha_obs.remediate.status import approval_json as approval_dict
from macha_obs.store import Store
from macha_obs.store.approvals import DECIDABLE
from macha_obs.terminal import inert, is_unsafe

# ---------------------------------------------------------------- macha-approve

# SQLite's INTEGER is 64-bit signed: no approval can have a larger id (and asking for one
# raises OverflowError)
MAX_APPROVAL_ID = 2**63 - 1


def _approval_id(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    """An approval id in ASCII digits. Anything else (`0x10`, `-1`, an Arabic-Indic digit)
    is a usage error (exit 2), never another approval than the one meant: int() alone
    would read U+0661 as 1."""
    if not (value.isascii() and value.isdigit()):
        raise click.BadParameter(f"'{inert(value)}' is not an approval id (ASCII digits, like 0)")
    digits = value.lstrip("0") or "0"
    if len(digits) > len(str(MAX_APPROVAL_ID)):
        # beyond any id, and beyond what int() converts past 4,300 digits: the message
        # every missing id gets, the id shortened
        shown = value if len(value) <= 40 else f"{value[:20]}… ({len(value)} digits)"
        raise click.ClickException(f"no approval with id {shown}")
    return int(digits)


def _existing_id(approval_id: int) -> int:
    """`approval_id` when one could exist; else the message a missing id gets (exit 1)."""
    if approval_id > MAX_APPROVAL_ID:
        raise click.ClickException(f"no approval with id {approval_id}")
    return approval_id


def _print_table(
    items: list[Approval], *, notes: bool = False, history: dict[int, str] | None = None
) -> None:
    """The queue; with `notes` (list --all) why each decided item ended as it did; under
    each item, what a person decided about the same fix for the same problem before."""
    if not items:
        click.echo("no approvals")
        return
    rows = [
        (
            str(a.id),
            a.status.value,
            a.risk.value,
            inert(describe_action(a.action)),
            inert(a.incident_id)
            + (f" (+{len(a.incident_ids) - 1})" if len(a.incident_ids) > 1 else ""),
            a.expires_at.strftime("%Y-%m-%d %H:%M"),
            *([inert(a.note) or "-"] if notes else []),
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
    click.echo("  ".join(cell.ljust(w) for cell, w in zip(header, widths, strict=True)).rstrip())
    for item, row in zip(items, rows, strict=True):
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if history and item.id in history:
            click.echo(f"    history: {inert(history[item.id])}")


@click.group(cls=Group, context_settings=HELP)
@click.version_option(__version__, prog_name="macha-approve")
@config_options
@click.pass_context
def approve_main(ctx: click.Context, /, config_path: Path | None, **flags: Any) -> None:
    """Review and decide the actions waiting for a human."""
    keep_options(ctx, config_path, flags)


approve_main.add_command(discuss)  # macha_obs/cli/discuss.py


def _recovered(store: Store) -> Store:
    """The store, with what a `macha-approve` that died mid-action left recorded
    `interrupted` (and so listed and decidable), without waiting for the daemon."""
    store.ledger.recover_interrupted()
    return store


@approve_main.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.option("--all", "show_all", is_flag=True, help="Include decided items.")
@click.pass_context
def approve_list(ctx: click.Context, as_json: bool, show_all: bool) -> None:
    """The queue: what waits for a decision (pending, or interrupted mid-action); --all
    for history."""
    cfg = ctx_config(ctx)
    with open_store(cfg, create=False) as store:
        _recovered(store).approvals.expire_approvals()
        items = store.approvals.list_approvals(None if show_all else set(DECIDABLE))
        history = _histories(store, items)
    if as_json:
        listed = [approval_dict(a) | {"history": history.get(a.id)} for a in items]
        click.echo(json.dumps(listed, indent=2, ensure_ascii=True))
    else:
        _print_table(items, notes=show_all, history=history)


def _histories(store: Store, items: list[Approval]) -> dict[int, str]:
    """Each item's history line (only the decidable ones: history is for deciding)."""
    found: dict[int, str] = {}
    for item in items:
        if item.status in DECIDABLE:
            line = history_line(store, item)
            if line is not None:
                found[item.id] = line
    return found


@approve_main.command("show")
@click.argument("approval_id", callback=_approval_id)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def approve_show(ctx: click.Context, approval_id: int, as_json: bool) -> None:
    """One item with its evidence and the reason it was queued."""
    cfg = ctx_config(ctx)
    with open_store(cfg, create=False) as store:
        approval = store.approvals.get_approval(_existing_id(approval_id))
        history = history_line(store, approval) if approval is not None else None
    if approval is None:
        raise click.ClickException(f"no approval with id {approval_id}")
    if as_json:
        shown = approval_dict(approval) | {"history": history}
        click.echo(json.dumps(shown, indent=2, ensure_ascii=True))
        return
    # every field from an alert, a model or a person on its own line, made inert
    label = inert(describe_action(approval.action))
    click.echo(f"approval {approval.id}: {label}  [{approval.status}]")
    incidents = ", ".join(inert(i) for i in approval.incident_ids) or inert(approval.incident_id)
    click.echo(f"  incident:  {incidents}")
    click.echo(f"  risk:      {approval.risk}")
    click.echo(
        f"  queued:    {approval.created_at:%Y-%m-%d %H:%M:%S} UTC, "
        f"expires {approval.expires_at:%Y-%m-%d %H:%M:%S} UTC"
    )
    click.echo(f"  why:       {inert(approval.reason)}")
    if history:
        click.echo(f"  history:   {inert(history)}")
    for line in approval.evidence:
        click.echo(f"  evidence:  {inert(line)}")
    shown = approval.action.model_dump(mode="json", exclude={"diff"})
    click.echo(f"  action:    {json.dumps(shown, separators=(',', ':'))}")
    if approval.decided_by or approval.note:
        click.echo(f"  decided:   by {inert(approval.decided_by) or '-'}: {inert(approval.note)}")
    if isinstance(approval.action, ConfigChange):
        _show_diff(approval.id, approval.action, ctx_config(ctx).nixos_config_dir)
    if isinstance(approval.action, SETTINGS_PATCHES):
        _show_settings(approval.id, approval.action, ctx_config(ctx).nixos_config_dir)


def _show_settings(approval_id: int, patch: SettingsPatch, config_dir: Path | None) -> None:
    """Each setting's reason and risk, the patch as it would be exported, and how to
    apply it (approving never does)."""
    for line in patch.explain():
        click.echo(f"  setting:   {line}")
    if config_dir is not None:
        try:
            text = nixos_patch(patch, config_dir).diff
        except PatchRefused as exc:
            click.echo(f"  patch:     cannot be made now: {inert(str(exc))}")
            return
        click.echo(f"  patch:     a diff of {inert(config_dir)}/configuration.nix")
        apply = f"cd {inert(config_dir)} && patch -p1 < fix.patch; then nixos-rebuild"
    else:
        text = patch.dropin()
        click.echo(f"  patch:     the drop-in {patch.dropin_path}")
        unit = getattr(patch, "unit", "systemd-journald.service")
        apply = (
            f"install -D -m 0644 fix.patch {patch.dropin_path}; systemctl daemon-reload; "
            f"systemctl restart {unit}"
        )
    for line in text.rstrip("\n").split("\n"):
        click.echo(f"    {inert(line)}")
    click.echo(
        f"  apply:     macha-approve export {approval_id} > fix.patch; {apply}. "
        "Approving only marks it read."
    )


def _show_diff(approval_id: int, change: ConfigChange, config_dir: Path | None) -> None:
    """The diff, a line per line with anything that could act on the terminal made
    visible, and how to apply it (approving never does)."""
    click.echo(f"  summary:   {inert(change.summary) or '-'}")
    click.echo("  diff:")
    for line in change.diff.split("\n")[: -1 if change.diff.endswith("\n") else None]:
        click.echo(f"    {inert(line)}")
    try:
        strip = f"-p{parse_diff(change.diff, change.path).strip}"
    except PatchRefused:
        strip = "-p1"  # an item queued before diffs were checked
    where = inert(config_dir) if config_dir is not None else "<your NixOS configuration>"
    click.echo(
        f"  apply:     macha-approve export {approval_id} > fix.patch; "
        f"cd {where} && patch {strip} < fix.patch; then nixos-rebuild. "
        "Approving only marks it read."
    )


@approve_main.command("export")
@click.argument("approval_id", callback=_approval_id)
@click.pass_context
def approve_export(ctx: click.Context, approval_id: int) -> None:
    """Write a config_change's diff to stdout, byte for byte, to apply by hand:
    `macha-approve export ID > fix.patch`."""
    cfg = ctx_config(ctx)
    with open_store(cfg, create=False) as store:
        approval = store.approvals.get_approval(_existing_id(approval_id))
    if approval is None:
        raise click.ClickException(f"no approval with id {approval_id}")
    change = approval.action
    if isinstance(change, SETTINGS_PATCHES):
        change = _settings_export(change, cfg.nixos_config_dir)
    if not isinstance(change, ConfigChange):
        raise click.ClickException(
            f"approval {approval_id} is {inert(describe_action(change))}, not a "
            "config_change or a settings patch: it has nothing to export"
        )
    out = sys.stdout.buffer
    if out.isatty() and any(is_unsafe(c) for c in change.diff if c not in "\n\t"):
        raise click.ClickException(
            f"the diff of approval {approval_id} carries control characters; redirect it "
            f"to a file (macha-approve export {approval_id} > fix.patch) or read it with show"
        )
    out.write(change.diff.encode("utf-8"))
    out.flush()


def _settings_export(patch: SettingsPatch, config_dir: Path | None) -> ConfigChange:
    """What `export` writes for a settings patch: the drop-in text, or on NixOS the diff
    of configuration.nix as it is now, checked as a config_change is."""
    if config_dir is None:
        return ConfigChange(path=patch.dropin_path, diff=patch.dropin())
    try:
        change = nixos_patch(patch, config_dir)
        PatchChecker(config_dir).check(change)
    except PatchRefused as exc:
        raise click.ClickException(f"the patch cannot be exported now: {exc}") from exc
    return change


@approve_main.command("approve")
@click.argument("approval_id", callback=_approval_id)
@click.pass_context
def approve_approve(ctx: click.Context, approval_id: int) -> None:
    """Carry out an item now (pending, or interrupted: approved again), if the policy
    still allows it."""
    cfg = ctx_config(ctx)
    with open_store(cfg) as store:
        handled = remediator(cfg, _recovered(store)).approve(_existing_id(approval_id), who())
    click.echo(f"approval {approval_id}: {inert(handled.summary)}")
    if handled.approval is None or handled.approval.status is not ApprovalStatus.EXECUTED:
        if handled.approval and handled.approval.status is ApprovalStatus.ACKNOWLEDGED:
            return
        ctx.exit(EXIT_FAILED)


@approve_main.command("reject")
@click.argument("approval_id", callback=_approval_id)
@click.option("--reason", default="", help="Why (kept in the audit log).")
@click.pass_context
def approve_reject(ctx: click.Context, approval_id: int, reason: str) -> None:
    """Refuse an item: nothing is done, and the reason is kept in the audit log."""
    cfg = ctx_config(ctx)
    with open_store(cfg) as store:
        remediator(cfg, _recovered(store)).reject(_existing_id(approval_id), who(), reason)
    click.echo(f"approval {approval_id}: rejected")
