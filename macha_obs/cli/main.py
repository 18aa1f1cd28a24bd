"""`macha-obs`: the group, config, autonomy, status, analyze and the privileged helper."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import click

from macha_obs import __version__
from macha_obs import config as config_mod
from macha_obs.agent.llm import LlmMetrics
from macha_obs.agent.report import (
    analyze_payload,
    parse_journal_option,
    render_json,
    render_text,
)
from macha_obs.cli.common import (
    HELP,
    Group,
    config_options,
    ctx_config,
    keep_options,
    open_store,
    who,
)
from macha_obs.cli.errors import EXIT_FAILED
from macha_obs.cli.readiness import daemon_health, health_lines
from macha_obs.cli.wiring import (
    build_analyzer,
)
from macha_obs.config import AnalysisMode, Config
from macha_obs.daemon import AlreadyRunning, StateLock
from macha_obs.errors import RefusedError, UsageError
from macha_obs.execute.diagnostics import Diagnostics
from macha_obs.execute.privileged import run_as_root
from macha_obs.execute.runner import subprocess_runner
from macha_obs.models import (
    Action,
    ExecutionResult,
    Incident,
    JournalTail,
    UnitState,
    UnitStatus,
    Verdict,
    describe_action,
)
from macha_obs.policy.judge import effective_autonomy
from macha_obs.policy.scope import Scope
from macha_obs.remediate.patches import PatchChecker
from macha_obs.remediate.remediator import Remediator
from macha_obs.remediate.status import status_json, status_of
from macha_obs.remediate.verify import Breaker
from macha_obs.statedir import StateDir
from macha_obs.store import Store, StoreError
from macha_obs.systemd.bus import IsolatedBus
from macha_obs.terminal import inert

# ---------------------------------------------------------------- macha-obs


@click.group(cls=Group, context_settings=HELP)
@click.version_option(__version__, prog_name="macha-obs")
@config_options
@click.pass_context
def main(ctx: click.Context, /, config_path: Path | None, **flags: Any) -> None:
    """macha-obs: watch the host, explain what is wrong, fix only what policy allows."""
    keep_options(ctx, config_path, flags)


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
    """The configured and the effective autonomy level, and the breaker's state."""
    cfg = ctx_config(ctx)
    with open_store(cfg, create=False) as store:
        breaker = Breaker(cfg, store).state()
    click.echo(f"configured: {cfg.autonomy_level}")
    click.echo(f"effective:  {effective_autonomy(cfg, breaker)}")
    state = "OPEN" if breaker.open else "closed"
    click.echo(
        f"breaker:    {state} ({breaker.failures} recent failed verifications)"
        f" {inert(breaker.reason)}".rstrip()
    )


@autonomy_group.command("reset")
@click.pass_context
def autonomy_reset(ctx: click.Context) -> None:
    """Close the circuit breaker after a human has looked at the failures."""
    cfg = ctx_config(ctx)
    with open_store(cfg) as store:
        Breaker(cfg, store).reset(who())
    click.echo(f"breaker reset; autonomy back to {cfg.autonomy_level}")


@main.command("privileged", hidden=True)
@click.argument("instance")
@click.pass_context
def privileged(ctx: click.Context, instance: str) -> None:
    """Root side of the privileged oneshot unit: INSTANCE is a typed action, not a command."""
    cfg = ctx_config(ctx, as_owner=False)  # it touches no state file; root is its point
    try:
        code = run_as_root(
            instance,
            subprocess_runner,
            click.echo,
            flake=cfg.nixos_flake,
            journal_dir=cfg.journal_dir,
            nix_root=cfg.nix_root,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    ctx.exit(0 if code == 0 else EXIT_FAILED)


@main.command("status")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Autonomy, breaker, approval queue and the last cycle."""
    cfg = ctx_config(ctx)
    try:
        with open_store(cfg, create=False) as store:
            now = status_of(cfg, store)
    except (StoreError, sqlite3.DatabaseError) as exc:
        # a lost state.db: what the daemon says of it is all there is to show
        for line in health_lines(daemon_health(cfg)):
            click.echo(line, err=True)
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"{cfg.state_dir / 'state.db'}: {exc}") from exc
    running = False
    if cfg.state_dir.is_dir():  # no state dir, no daemon: and none is made here
        lock = StateLock(cfg.state_dir)
        try:
            lock.acquire()
            lock.release()
        except AlreadyRunning:
            running = True
    health = daemon_health(cfg) if running else None
    data = {"daemon_running": running, "health": health, **status_json(now)}
    breaker, pause, pending, last = now.breaker, now.pause, now.pending, now.last_cycle
    if as_json:
        # ensure_ascii: alert-derived text stays \u escapes, inert even when `cat`-ed
        click.echo(json.dumps(data, indent=2, ensure_ascii=True))
        return
    # the text view: every field from an alert, a model or a person made inert
    click.echo(f"daemon:    {'running' if running else 'not running'} ({cfg.state_dir})")
    for line in health_lines(health) if health is not None else []:
        click.echo(line)
    click.echo(
        f"autonomy:  {data['autonomy']['effective']} (configured {cfg.autonomy_level.value})"
    )
    click.echo(
        f"breaker:   {'OPEN: ' + inert(breaker.reason) if breaker.open else 'closed'} "
        f"({breaker.failures} recent failed verifications)"
    )
    click.echo(f"paused:    {inert(pause.describe()) if pause else 'no'}")
    click.echo(f"queue:     {len(pending)} pending")
    for a in pending:
        label = inert(describe_action(a.action))
        click.echo(f"  {a.id}: {label} ({a.risk.value}) {inert(a.incident_id)}")
    click.echo(f"last cycle: {_last_cycle(last)}")


def _last_cycle(last: Any) -> str:
    """The daemon's record of its last cycle, in a line; what it cannot read, it says."""
    if not last:
        return "none yet"
    try:
        when = datetime.fromtimestamp(float(last["at"]), UTC).strftime("%Y-%m-%d %H:%M:%S")
        return (
            f"{when} UTC ({inert(last['trigger'])}, {inert(last['duration_seconds'])}s), "
            f"{len(last['handled'])} action(s)"
        )
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        return f"unreadable record: {inert(json.dumps(last))[:200]}"


def _payload_text(file: IO[bytes], limit: int) -> str:
    """The payload as the webhook would take it: UTF-8, at most `limit` bytes; else exit 2."""
    data = file.read(limit + 1)
    problem = f"larger than webhook_max_body_bytes ({limit})" if len(data) > limit else ""
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        problem = problem or f"not UTF-8 ({exc.reason} at byte {exc.start})"
    if problem:
        raise UsageError(f"not an Alertmanager v4 payload: {problem}")
    return text


@main.command("analyze")
@click.argument("file", type=click.File("rb"))
@click.option(
    "--journal",
    "journals",
    multiple=True,
    metavar="UNIT=PATH",
    help="Use PATH's lines as UNIT's journal instead of reading the host's (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="JSON for tools.")
@click.option(
    "--analysis",
    "analysis_mode",
    type=click.Choice([a.value for a in AnalysisMode]),
    help="Override the analysis mode for this run.",
)
@click.pass_context
def analyze(
    ctx: click.Context,
    file: IO[bytes],
    journals: tuple[str, ...],
    as_json: bool,
    analysis_mode: str | None,
) -> None:
    """What would you do about this alert? Analyse a webhook payload (FILE or -) and show
    the policy's verdict on each proposal. Executes nothing; reads the host only through
    read-only diagnostics."""
    cfg = ctx_config(ctx)
    payload = _payload_text(file, cfg.webhook_max_body_bytes)
    supplied: dict[str, list[str]] = {}
    for item in journals:
        try:
            unit, path = parse_journal_option(item)
            supplied[unit] = path.read_text(errors="replace").splitlines()
        except (ValueError, OSError) as exc:
            raise click.BadParameter(inert(exc), param_hint="--journal") from exc
    bus = IsolatedBus(cfg.systemd_bus_address, timeout=cfg.dbus_timeout)
    diagnostics = Diagnostics(bus, subprocess_runner, journal_dir=cfg.journal_dir)

    # The ledger's rate limits and breaker when a state dir exists; never create one here.
    with contextlib.ExitStack() as held:
        if StateDir(cfg.state_dir).db.exists():
            store = held.enter_context(Store(cfg.state_dir))
        else:
            store = held.enter_context(
                Store(Path(held.enter_context(tempfile.TemporaryDirectory())))
            )
        patches = PatchChecker(cfg.nixos_config_dir)
        looking = Remediator(cfg, store, _LookOnly(bus), patches=patches)

        def verdict(action: Action, incident: Incident) -> Verdict:
            """The remediator's own judgement of a proposal (scope lock, systemd's state
            now, limits, the patch check), recording nothing."""
            return looking.preview(None, action, Scope.of([incident])).verdict

        _analyze_and_print(
            cfg,
            payload,
            verdict,
            supplied=supplied,
            diagnostics=diagnostics,
            bus=bus,
            as_json=as_json,
            analysis_mode=analysis_mode,
        )


class _LookOnly:
    """What `analyze` lends the remediator: systemd's state, never an action."""

    def __init__(self, bus: IsolatedBus) -> None:
        self.bus = bus

    def unit_state(self, unit: str) -> UnitState:
        return self.bus.unit_state(unit)

    def run(self, action: Action) -> ExecutionResult:
        raise RefusedError(f"analyze executes nothing ({describe_action(action)})")


def _analyze_and_print(
    cfg: Config,
    payload: str,
    verdict: Callable[[Action, Incident], Verdict],
    *,
    supplied: dict[str, list[str]],
    diagnostics: Diagnostics,
    bus: IsolatedBus,
    as_json: bool,
    analysis_mode: str | None,
) -> None:
    def journal_source(unit: str) -> list[str]:
        done = diagnostics.run(JournalTail(unit=unit, lines=100))
        return done.output.splitlines() if done.ok else []

    def status_source(unit: str) -> str:
        done = diagnostics.run(UnitStatus(unit=unit))
        return done.output if done.ok else f"unavailable ({done.detail})"

    if analysis_mode:
        cfg = cfg.model_copy(update={"analysis": AnalysisMode(analysis_mode)})
    analyzer = build_analyzer(cfg, diagnostics, LlmMetrics())
    try:
        report = analyze_payload(
            payload,
            analyzer=analyzer,
            judge=verdict,
            journals=supplied,
            journal_source=journal_source,
            status_source=status_source,
        )
    finally:
        bus.close()
    click.echo(render_json(report) if as_json else render_text(report))
