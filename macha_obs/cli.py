"""Command line: the one place that wires the rooms together and maps errors to exit codes.

Exit codes: 0 ok, 1 the request could not be done (e.g. approval not pending), 2 bad
configuration or usage.
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from macha_obs import __version__
from macha_obs import config as config_mod
from macha_obs.config import AnalysisMode, AutonomyLevel, Config, ConfigError
from macha_obs.execute.dbus_worker import IsolatedBus
from macha_obs.execute.diagnostics import Diagnostics
from macha_obs.execute.dispatch import HostExecutor
from macha_obs.execute.errors import RunnerError
from macha_obs.execute.journal import JournalExecutor, vacuum_argv
from macha_obs.execute.nix import NixExecutor, nix_argv
from macha_obs.execute.privileged import PrivilegedExecutor, parse_instance
from macha_obs.execute.runner import subprocess_runner
from macha_obs.execute.systemd import SystemdExecutor
from macha_obs.models import Approval, ApprovalStatus, JournalVacuum, describe_action
from macha_obs.remediate import Remediator
from macha_obs.store import ApprovalError, Store, StoreError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED = 1
EXIT_USAGE = 2


# ---------------------------------------------------------------- wiring


def build_executor(cfg: Config) -> HostExecutor:
    bus = IsolatedBus(cfg.systemd_bus_address, timeout=cfg.dbus_timeout)
    return HostExecutor(
        SystemdExecutor(
            bus,
            is_protected=cfg.is_protected,
            verify_timeout=cfg.verify_timeout,
            settle=cfg.verify_settle,
        ),
        NixExecutor(subprocess_runner, flake=cfg.nixos_flake),
        JournalExecutor(subprocess_runner, journal_dir=cfg.journal_dir),
        Diagnostics(bus, subprocess_runner, journal_dir=cfg.journal_dir),
        privileged=PrivilegedExecutor(bus, cfg.privileged_unit) if cfg.privileged_unit else None,
    )


def open_store(cfg: Config) -> Store:
    try:
        return Store(cfg.state_dir)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc


def config_options(fn: F) -> F:
    """--config and the settings people most often override, on every entry point."""
    options = [
        click.option(
            "--config",
            "config_path",
            type=click.Path(path_type=Path, dir_okay=False),
            help="TOML config (default: /etc/macha-obs/config.toml when present).",
        ),
        click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False)),
        click.option("--autonomy-level", type=click.Choice([a.value for a in AutonomyLevel])),
        click.option("--listen-address", help="HOST:PORT for /metrics, /alerts, /healthz."),
        click.option("--check-interval", type=float, help="Seconds between cycles."),
        click.option("--model", help="LLM model name."),
        click.option("--ollama-url"),
        click.option("--analysis", type=click.Choice([a.value for a in AnalysisMode])),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def load_config(config_path: Path | None = None, **flags: Any) -> Config:
    try:
        return config_mod.load(config_path, overrides=flags)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)


def remediator(cfg: Config, store: Store) -> Remediator:
    return Remediator(cfg, store, build_executor(cfg))


def who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# ---------------------------------------------------------------- macha-obs


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="macha-obs")
@config_options
@click.pass_context
def main(ctx: click.Context, /, config_path: Path | None, **flags: Any) -> None:
    """macha-obs: watch the host, explain what is wrong, fix only what policy allows."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    ctx.obj["flags"] = flags


def ctx_config(ctx: click.Context) -> Config:
    if "config" not in ctx.obj:
        ctx.obj["config"] = load_config(ctx.obj["config_path"], **ctx.obj["flags"])
    cfg: Config = ctx.obj["config"]
    return cfg


@main.group("config")
def config_group() -> None:
    """Show or check the effective configuration."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of TOML-like text.")
@click.pass_context
def config_show(ctx: click.Context, as_json: bool) -> None:
    """Print the effective configuration (file < MACHA_* env < flags)."""
    data = config_mod.to_toml_dict(ctx_config(ctx))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        click.echo(f"{key} = {json.dumps(value)}")


@config_group.command("validate")
@click.argument("file", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.pass_context
def config_validate(ctx: click.Context, file: Path | None) -> None:
    """Check a config file (or the effective config); exit 2 naming the bad field."""
    if file is not None:
        ctx.obj["config_path"] = file
    cfg = ctx_config(ctx)
    click.echo(f"ok: autonomy {cfg.autonomy_level}, state dir {cfg.state_dir}")


@main.group("autonomy")
def autonomy_group() -> None:
    """The effective autonomy level and the circuit breaker."""


@autonomy_group.command("show")
@click.pass_context
def autonomy_show(ctx: click.Context) -> None:
    cfg = ctx_config(ctx)
    with open_store(cfg) as store:
        rem = remediator(cfg, store)
        breaker = rem.breaker()
        effective = rem.context()
    click.echo(f"configured: {cfg.autonomy_level}")
    from macha_obs.policy import effective_autonomy

    click.echo(f"effective:  {effective_autonomy(cfg, effective.breaker)}")
    state = "OPEN" if breaker.open else "closed"
    click.echo(
        f"breaker:    {state} ({breaker.failures} recent failed verifications) {breaker.reason}"
    )


@autonomy_group.command("reset")
@click.pass_context
def autonomy_reset(ctx: click.Context) -> None:
    """Close the circuit breaker after a human has looked at the failures."""
    cfg = ctx_config(ctx)
    with open_store(cfg) as store:
        store.reset_breaker(who())
    click.echo(f"breaker reset; autonomy back to {cfg.autonomy_level}")


@main.command("privileged", hidden=True)
@click.argument("instance")
@click.pass_context
def privileged(ctx: click.Context, instance: str) -> None:
    """Root side of the privileged oneshot unit: INSTANCE is a typed action, not a command."""
    cfg = ctx_config(ctx)
    try:
        action = parse_instance(instance)
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    if isinstance(action, JournalVacuum):
        argv = vacuum_argv(action, journal_dir=cfg.journal_dir)
    else:
        argv = nix_argv(action, flake=cfg.nixos_flake)
    click.echo(f"running: {' '.join(argv)}")
    try:
        done = subprocess_runner(argv, timeout=3600)
    except RunnerError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(done.output)
    sys.exit(0 if done.returncode == 0 else EXIT_FAILED)


# ---------------------------------------------------------------- macha-approve


def _approval_dict(a: Approval) -> dict[str, Any]:
    return a.model_dump(mode="json") | {"label": describe_action(a.action)}


def _print_table(items: list[Approval]) -> None:
    if not items:
        click.echo("no approvals")
        return
    rows = [
        (
            str(a.id),
            a.status.value,
            a.risk.value,
            describe_action(a.action),
            a.incident_id,
            a.expires_at.strftime("%Y-%m-%d %H:%M"),
        )
        for a in items
    ]
    header = ("ID", "STATUS", "RISK", "ACTION", "INCIDENT", "EXPIRES (UTC)")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@config_options
@click.pass_context
def approve_main(ctx: click.Context, /, config_path: Path | None, **flags: Any) -> None:
    """Review and decide the actions waiting for a human."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    ctx.obj["flags"] = flags


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
        click.echo(json.dumps([_approval_dict(a) for a in items], indent=2))
    else:
        _print_table(items)


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
        click.echo(json.dumps(_approval_dict(approval), indent=2))
        return
    click.echo(f"approval {approval.id}: {describe_action(approval.action)}  [{approval.status}]")
    click.echo(f"  incident:  {approval.incident_id}")
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


# ---------------------------------------------------------------- macha-logs

LOG_KINDS = ("service", "decisions", "actions", "orchestrator")


def _format_audit(line: str) -> str:
    """One JSONL audit record as a line a person reads."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return line.rstrip("\n")
    if not isinstance(rec, dict):
        return line.rstrip("\n")
    head = f"{rec.pop('ts', '-')} {rec.pop('event', '-'):<12}"
    incident = rec.pop("incident_id", None)
    bits = [f"incident={incident}"] if incident else []
    for key in ("label", "outcome", "risk", "status", "reason", "assessment", "summary"):
        if rec.get(key) not in (None, ""):
            bits.append(f"{key}={rec[key]}")
    if "action" in rec and "label" not in rec and isinstance(rec["action"], dict):
        bits.append(f"action={rec['action'].get('kind')} {rec['action'].get('unit', '')}".rstrip())
    return f"{head} {' '.join(bits)}"


def _follow(path: Path, lines: int, render: Callable[[str], str]) -> None:
    import time

    with path.open() as fh:
        for line in fh.readlines()[-lines:]:
            click.echo(render(line))
        while True:
            line = fh.readline()
            if line:
                click.echo(render(line))
            else:
                time.sleep(0.5)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("kind", type=click.Choice(LOG_KINDS))
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--json", "as_json", is_flag=True, help="Raw JSON lines (audit logs).")
@click.option("-n", "--lines", default=50, show_default=True, type=click.IntRange(1))
@config_options
def logs_main(
    kind: str, follow: bool, as_json: bool, lines: int, config_path: Path | None, **flags: Any
) -> None:
    """Read the sidecar's logs: its journal, the audit logs, or orchestrator.log."""
    cfg = load_config(config_path, **flags)
    if kind == "service":
        import subprocess

        argv = ["journalctl", "--no-pager", "-u", "macha-autonomous.service", "-n", str(lines)]
        argv += ["-o", "json"] if as_json else []
        argv += ["-f"] if follow else []
        sys.exit(subprocess.call(argv))
    path = (
        cfg.state_dir
        / {
            "decisions": "decisions.jsonl",
            "actions": "actions.jsonl",
            "orchestrator": "orchestrator.log",
        }[kind]
    )
    if not path.exists():
        raise click.ClickException(f"{path} does not exist yet (nothing logged)")

    def render(line: str) -> str:
        if as_json or kind == "orchestrator":
            return line.rstrip("\n")
        return _format_audit(line)

    if follow:
        _follow(path, lines, render)
        return
    with path.open() as fh:
        for line in fh.readlines()[-lines:]:
            click.echo(render(line))


if __name__ == "__main__":  # pragma: no cover
    main()
