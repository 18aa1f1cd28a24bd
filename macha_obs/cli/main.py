"""`macha-obs`: the group, config, autonomy, status, analyze and the privileged helper."""

from __future__ import annotations

import json
import sys
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
from macha_obs.cli.approve import approval_dict
from macha_obs.cli.common import (
    Group,
    config_options,
    ctx_config,
    keep_options,
    open_store,
    who,
)
from macha_obs.cli.errors import EXIT_FAILED, EXIT_USAGE
from macha_obs.cli.wiring import (
    build_analyzer,
)
from macha_obs.config import AnalysisMode
from macha_obs.daemon import AlreadyRunning, StateLock
from macha_obs.errors import ExecutorError
from macha_obs.execute.diagnostics import Diagnostics
from macha_obs.execute.privileged import run_as_root
from macha_obs.execute.runner import subprocess_runner
from macha_obs.models import (
    UNIT_ACTIONS,
    Action,
    ApprovalStatus,
    Incident,
    JournalTail,
    UnitState,
    UnitStatus,
    Verdict,
    describe_action,
)
from macha_obs.orchestrator import LAST_CYCLE_KEY
from macha_obs.policy.judge import PolicyContext, effective_autonomy, judge
from macha_obs.policy.scope import Scope, confirm
from macha_obs.remediate.patches import PatchChecker
from macha_obs.remediate.pause import PauseBook
from macha_obs.remediate.remediator import context_of, patch_checked
from macha_obs.remediate.verify import Breaker
from macha_obs.statedir import StateDir
from macha_obs.store import Store
from macha_obs.systemd.bus import IsolatedBus
from macha_obs.terminal import inert

# ---------------------------------------------------------------- macha-obs


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
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
    cfg = ctx_config(ctx)
    with open_store(cfg) as store:
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
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(0 if code == 0 else EXIT_FAILED)


@main.command("status")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Autonomy, breaker, approval queue and the last cycle."""
    cfg = ctx_config(ctx)
    with open_store(cfg) as store:
        store.expire_approvals()
        breaker = Breaker(cfg, store).state()
        pending = store.list_approvals({ApprovalStatus.PENDING})
        last = _meta_json(store.get_meta(LAST_CYCLE_KEY))
        pause = PauseBook(store).current(store.clock())
    lock = StateLock(cfg.state_dir)
    try:
        lock.acquire()
        running = False
        lock.release()
    except AlreadyRunning:
        running = True
    data = {
        "daemon_running": running,
        "autonomy": {
            "configured": cfg.autonomy_level.value,
            "effective": effective_autonomy(cfg, breaker).value,
        },
        "breaker": {"open": breaker.open, "failures": breaker.failures, "reason": breaker.reason},
        "pause": None
        if pause is None
        else {
            "since": pause.since.isoformat(),
            "until": pause.until.isoformat() if pause.until else None,
            "reason": pause.reason,
            "by": pause.by,
        },
        "approvals_pending": [approval_dict(a) for a in pending],
        "last_cycle": last,
    }
    if as_json:
        # ensure_ascii: alert-derived text stays \u escapes, inert even when `cat`-ed
        click.echo(json.dumps(data, indent=2, ensure_ascii=True))
        return
    # the text view: every field from an alert, a model or a person made inert
    click.echo(f"daemon:    {'running' if running else 'not running'} ({cfg.state_dir})")
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


def _meta_json(raw: str | None) -> Any:
    """A JSON value the daemon keeps in the store; a damaged one is shown, not a traceback."""
    try:
        return json.loads(raw or "null")
    except ValueError:
        return {"unreadable": raw}


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
        click.echo(f"error: not an Alertmanager v4 payload: {problem}", err=True)
        sys.exit(EXIT_USAGE)
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

    def journal_source(unit: str) -> list[str]:
        done = diagnostics.run(JournalTail(unit=unit, lines=100))
        return done.output.splitlines() if done.ok else []

    def status_source(unit: str) -> str:
        done = diagnostics.run(UnitStatus(unit=unit))
        return done.output if done.ok else f"unavailable ({done.detail})"

    # The ledger's rate limits and breaker when a state dir exists; never create one here.
    policy = PolicyContext(config=cfg, now=datetime.now(UTC))

    patches = PatchChecker(cfg.nixos_config_dir)

    def verdict(action: Action, incident: Incident) -> Verdict:
        """The daemon's judgement, scope lock and patch check included, from systemd's state now."""
        scope = Scope.of([incident])
        problem = None
        if isinstance(action, UNIT_ACTIONS):
            try:
                state: UnitState | None = bus.unit_state(action.unit)
            except ExecutorError:
                state = None
            problem = confirm(action.unit, state, scope)
        judged = judge(action, policy, scope=scope, problem=problem)
        return patch_checked(action, judged, patches)

    if StateDir(cfg.state_dir).db.exists():
        with Store(cfg.state_dir) as store:
            policy = context_of(cfg, store, datetime.now(UTC))
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


from macha_obs.cli import eval as _eval  # noqa: E402, F401  (registers eval on main)
from macha_obs.cli import learn as _learn  # noqa: E402, F401  (registers learn on main)
