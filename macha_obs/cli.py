"""Command line: the one place that wires the rooms together and maps errors to exit codes.

Exit codes: 0 ok, 1 the request could not be done (e.g. approval not pending), 2 bad
configuration or usage.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import click

from macha_obs import __version__
from macha_obs import config as config_mod
from macha_obs.agent.analyze import Analyzer
from macha_obs.agent.llm import LlmMetrics, client_from_config
from macha_obs.agent.report import (
    PayloadError,
    analyze_payload,
    parse_journal_option,
    render_json,
    render_text,
)
from macha_obs.brainmetrics import BrainCollector
from macha_obs.collect import CollectionLoop, build_collectors
from macha_obs.config import AnalysisMode, AutonomyLevel, Config, ConfigError
from macha_obs.daemon import AlreadyRunning, Notifier, StateLock, setup_logging
from macha_obs.execute.dbus_events import UnitWatcher
from macha_obs.execute.dbus_worker import IsolatedBus
from macha_obs.execute.diagnostics import Diagnostics
from macha_obs.execute.dispatch import HostExecutor
from macha_obs.execute.errors import RunnerError
from macha_obs.execute.journal import JournalExecutor, vacuum_argv
from macha_obs.execute.nix import NixExecutor, nix_argv
from macha_obs.execute.privileged import PrivilegedExecutor, parse_instance
from macha_obs.execute.runner import subprocess_runner
from macha_obs.execute.systemd import SystemdExecutor
from macha_obs.exporter import build_registry
from macha_obs.incidents import IncidentStore
from macha_obs.models import (
    Approval,
    ApprovalStatus,
    JournalTail,
    JournalVacuum,
    UnitStatus,
    describe_action,
)
from macha_obs.orchestrator import LAST_CYCLE_KEY, CycleReport, Orchestrator
from macha_obs.policy import PolicyContext, effective_autonomy, judge
from macha_obs.receiver import ReceiverApp
from macha_obs.remediate import Remediator, context_of
from macha_obs.selfmetrics import LoopStats, PersistentState, SelfCollector
from macha_obs.server import make_app, shutdown, start_server
from macha_obs.store import ApprovalError, Store, StoreError

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("macha_obs")

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


# ---------------------------------------------------------------- the sidecar


@dataclass
class Sidecar:
    """Every room, wired. Built by `assemble` for `serve` and `macha-check`."""

    cfg: Config
    store: Store
    executor: HostExecutor
    incidents: IncidentStore
    analyzer: Analyzer
    remediator: Remediator
    loop: CollectionLoop
    orchestrator: Orchestrator
    stats: LoopStats
    llm_metrics: LlmMetrics

    def close(self) -> None:
        self.executor.close()


def build_analyzer(
    cfg: Config,
    diagnostics: Diagnostics | None,
    metrics: LlmMetrics,
    audit: Callable[[Mapping[str, Any]], None] | None = None,
) -> Analyzer:
    use_llm = cfg.llm_enabled and cfg.analysis is not AnalysisMode.RUNBOOKS_ONLY
    client = (
        client_from_config(cfg, metrics=metrics, openai_response_format=cfg.openai_response_format)
        if use_llm
        else None
    )
    return Analyzer(
        mode=cfg.analysis,
        client=client,
        hostname=cfg.hostname,
        diagnostics=diagnostics,
        max_steps=cfg.llm_max_steps,
        audit=audit,
    )


def assemble(cfg: Config, store: Store) -> Sidecar:
    executor = build_executor(cfg)
    llm_metrics = LlmMetrics()
    incidents = IncidentStore(store)
    analyzer = build_analyzer(cfg, executor.diagnostics, llm_metrics, store.audit_decision)
    remediator = Remediator(cfg, store, executor)
    stats = LoopStats()
    loop = CollectionLoop(
        build_collectors(cfg, store),
        hostname=cfg.hostname,
        interval=cfg.collect_interval,
        state_dir=cfg.state_dir,
        retention=cfg.snapshot_retention,
    )
    orchestrator = Orchestrator(
        cfg, store, incidents, analyzer, remediator, snapshot=loop.latest, stats=stats
    )
    loop.listeners.append(orchestrator.note_snapshot)
    return Sidecar(
        cfg,
        store,
        executor,
        incidents,
        analyzer,
        remediator,
        loop,
        orchestrator,
        stats,
        llm_metrics,
    )


def persistent_state(cfg: Config, store: Store, remediator: Remediator) -> PersistentState:
    breaker = remediator.breaker()
    return PersistentState(
        approvals_pending=store.pending_count(),
        breaker_open=breaker.open,
        configured=cfg.autonomy_level,
        effective=effective_autonomy(cfg, breaker),
    )


@main.command("serve")
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run the sidecar: collect, serve /metrics /alerts /healthz /readyz, and heal."""
    cfg = ctx_config(ctx)
    store = open_store(cfg)
    lock = StateLock(cfg.state_dir)
    try:
        lock.acquire()
    except AlreadyRunning as exc:
        raise click.ClickException(str(exc)) from exc
    setup_logging(store.orchestrator_log, journald=bool(os.environ.get("JOURNAL_STREAM")))
    for record in store.recover_interrupted():
        log.warning(
            "action %d (%s) was interrupted by a crash; recorded, not re-run",
            record.id,
            describe_action(record.action),
        )
    side = assemble(cfg, store)
    try:
        receiver = ReceiverApp.from_config(
            cfg, store, on_incident=lambda _result: side.orchestrator.note_webhook()
        )
    except (ValueError, OSError) as exc:  # e.g. no token on a non-loopback listener
        raise click.ClickException(f"webhook: {exc}") from exc
    registry = build_registry(
        side.loop.latest,
        extra=[
            SelfCollector(side.stats, lambda: persistent_state(cfg, store, side.remediator)),
            BrainCollector(receiver.stats, side.llm_metrics),
        ],
    )
    app = make_app(registry, alerts_app=receiver, ready=side.loop.ready)
    try:
        server, server_thread = start_server(cfg.listen_host, cfg.listen_port, app)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {cfg.listen_address}: {exc}") from exc
    watcher = (
        UnitWatcher(
            cfg.systemd_bus_address, side.orchestrator.note_unit_event, debounce=cfg.event_debounce
        )
        if cfg.dbus_events
        else None
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    side.orchestrator.start()
    side.loop.start()
    if watcher is not None:
        watcher.start()
    notifier = Notifier(os.environ)
    notifier.watchdog(side.orchestrator.healthy, stop)
    notifier.ready(f"{cfg.autonomy_level} on {cfg.listen_host}:{server.server_port}")
    log.info(
        "macha-obs %s serving on %s:%d, autonomy %s, state %s",
        __version__,
        cfg.listen_host,
        server.server_port,
        cfg.autonomy_level,
        cfg.state_dir,
    )
    stop.wait()
    # SIGTERM: stop taking work, let the step in flight finish (bounded), record the rest.
    notifier.stopping()
    log.info("stopping")
    if watcher is not None:
        watcher.stop(timeout=1.0)
    side.loop.stop(timeout=1.0)
    if not side.orchestrator.stop(timeout=7.0):
        side.remediator.interrupt_in_flight("the daemon was stopped before the action finished")
    shutdown(server, server_thread, timeout=1.0)
    side.close()
    store.close()
    lock.release()


def _print_cycle(side: Sidecar, report: CycleReport, acted: bool) -> None:
    snap = side.loop.latest()
    findings = snap.findings if snap else []
    click.echo(f"findings: {len(findings)}")
    for f in findings:
        click.echo(f"  [{f.severity.value}] {f.kind.value}: {f.summary}")
    if snap is not None:
        failed = [name for name, run in snap.collectors.items() if not run.success]
        if failed:
            click.echo(f"collectors that failed: {', '.join(sorted(failed))}")
    if not report.analysed:
        click.echo("decisions: none (no incident needed analysis)")
    for incident, decision in report.analysed:
        click.echo(
            f"incident {incident.id}: {decision.assessment.value} by "
            f"{decision.backend or decision.source.value}: {decision.summary}"
        )
        if decision.error:
            click.echo(f"  analysis error: {decision.error}")
    for incident_id, proposal, handled in report.handled:
        click.echo(f"  {describe_action(proposal.action)} ({incident_id})")
        click.echo(f"    policy: {handled.verdict.outcome.value}: {handled.verdict.reason}")
        if handled.result is not None:
            click.echo(f"    result: {handled.summary}")
        elif handled.approval is not None:
            click.echo(
                f"    queued as approval {handled.approval.id} (macha-approve show "
                f"{handled.approval.id})"
            )
    for item in report.deferred:
        click.echo(f"  left to systemd: {item}")
    for approval_id in report.escalated:
        click.echo(f"  escalated to a human: approval {approval_id}")
    if not acted:
        click.echo("(the daemon is running: this check only recorded what it would do)")


@main.command("check")
@click.pass_context
def check(ctx: click.Context) -> None:
    """Run one full cycle now and print what was found, decided and done."""
    cfg = ctx_config(ctx)
    store = open_store(cfg)
    lock = StateLock(cfg.state_dir)
    try:
        lock.acquire()
        acted = True
    except AlreadyRunning:
        # the daemon owns the host: look, decide, record, but never act beside it
        cfg = cfg.model_copy(update={"autonomy_level": AutonomyLevel.OBSERVE})
        acted = False
    side = assemble(cfg, store)
    try:
        side.loop.run_once()
        report = side.orchestrator.run_cycle("check")
        _print_cycle(side, report, acted)
    finally:
        side.close()
        store.close()
        lock.release()


def check_main() -> None:
    """`macha-check`: `macha-obs check` with the same options."""
    main(args=[*sys.argv[1:], "check"])


@main.command("status")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Autonomy, breaker, approval queue and the last cycle."""
    cfg = ctx_config(ctx)
    with open_store(cfg) as store:
        store.expire_approvals()
        executor = build_executor(cfg)
        breaker = Remediator(cfg, store, executor).breaker()
        pending = store.list_approvals({ApprovalStatus.PENDING})
        last = json.loads(store.get_meta(LAST_CYCLE_KEY) or "null")
        executor.close()
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
        "approvals_pending": [_approval_dict(a) for a in pending],
        "last_cycle": last,
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"daemon:    {'running' if running else 'not running'} ({cfg.state_dir})")
    click.echo(
        f"autonomy:  {data['autonomy']['effective']} (configured {cfg.autonomy_level.value})"
    )
    click.echo(
        f"breaker:   {'OPEN: ' + breaker.reason if breaker.open else 'closed'} "
        f"({breaker.failures} recent failed verifications)"
    )
    click.echo(f"queue:     {len(pending)} pending")
    for a in pending:
        click.echo(f"  {a.id}: {describe_action(a.action)} ({a.risk.value}) {a.incident_id}")
    if last:
        when = datetime.fromtimestamp(last["at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(
            f"last cycle: {when} UTC ({last['trigger']}, {last['duration_seconds']}s), "
            f"{len(last['handled'])} action(s)"
        )
    else:
        click.echo("last cycle: none yet")


@main.command("analyze")
@click.argument("file", type=click.File("r"))
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
    file: IO[str],
    journals: tuple[str, ...],
    as_json: bool,
    analysis_mode: str | None,
) -> None:
    """What would you do about this alert? Analyse a webhook payload (FILE or -) and show
    the policy's verdict on each proposal. Executes nothing; reads the host only through
    read-only diagnostics."""
    cfg = ctx_config(ctx)
    supplied: dict[str, list[str]] = {}
    for item in journals:
        try:
            unit, path = parse_journal_option(item)
            supplied[unit] = path.read_text(errors="replace").splitlines()
        except (ValueError, OSError) as exc:
            raise click.BadParameter(str(exc), param_hint="--journal") from exc
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
    if (cfg.state_dir / "state.db").exists():
        with Store(cfg.state_dir) as store:
            policy = context_of(cfg, store, datetime.now(UTC))
    if analysis_mode:
        cfg = cfg.model_copy(update={"analysis": AnalysisMode(analysis_mode)})
    analyzer = build_analyzer(cfg, diagnostics, LlmMetrics())
    try:
        report = analyze_payload(
            file.read(),
            analyzer=analyzer,
            judge=lambda action: judge(action, policy),
            journals=supplied,
            journal_source=journal_source,
            status_source=status_source,
        )
    except PayloadError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    finally:
        bus.close()
    click.echo(render_json(report) if as_json else render_text(report))


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
