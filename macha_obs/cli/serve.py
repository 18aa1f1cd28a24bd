"""`macha-obs serve` and `macha-check`: the daemon, and one cycle by hand."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import click

from macha_obs import __version__
from macha_obs.cli.common import (
    HELP,
    config_options,
    ctx_config,
    keep_options,
    log,
    open_store,
)
from macha_obs.cli.errors import Command
from macha_obs.cli.learn import learn_state
from macha_obs.cli.mcp import McpTokenError, mount, preload_sdk
from macha_obs.cli.wiring import (
    Parts,
    assemble,
    persistent_state,
    remediator,
)
from macha_obs.config import AutonomyLevel, Config
from macha_obs.daemon import AlreadyRunning, Extra, Notifier, Sidecar, StateLock, setup_logging
from macha_obs.errors import UsageError
from macha_obs.intake.pull import AlertmanagerPuller, PullThread
from macha_obs.intake.webhook import ReceiverApp
from macha_obs.mcp.http import McpHttp
from macha_obs.mcp.stats import McpStats
from macha_obs.metrics import (
    IntakeDropCollector,
    ListenerCollector,
    LlmCollector,
    SelfCollector,
    WebhookCollector,
    build_registry,
)
from macha_obs.metrics.learning import LearnCollector
from macha_obs.metrics.mcp import McpCollector
from macha_obs.metrics.pull import PullCollector
from macha_obs.metrics.web import LoginCollector
from macha_obs.models import (
    ApprovalStatus,
    describe_action,
)
from macha_obs.orchestrator import CycleReport
from macha_obs.remediate.learn import history_line
from macha_obs.server import Listener, ListenerStats, make_app, shutdown, start_server
from macha_obs.server.health import CollectorStreaks, Health, ThreadWatch
from macha_obs.statedir import StateDirError
from macha_obs.store import Store, StoreError
from macha_obs.systemd.events import UnitWatcher
from macha_obs.terminal import inert
from macha_obs.web import Pages, approvals_pages


def refuse(message: str) -> NoReturn:
    """A startup refusal: the message, exit 2 (bad configuration or usage)."""
    raise UsageError(message)


def _open_state(cfg: Config, *, start_fresh: bool) -> tuple[Store, StateLock, set[str]]:
    """The state dir, locked, checked for lost history, logging to it, and recovered;
    the incidents whose action a crash interrupted."""
    try:
        store = Store(cfg.state_dir, retention=cfg)
    except StoreError as exc:
        refuse(str(exc))
    lock = StateLock(cfg.state_dir)
    try:
        lock.acquire()
    except (AlreadyRunning, StateDirError) as exc:
        refuse(str(exc))
    if not store.has_history() and (records := store.audit.audit_records()):
        if not start_fresh:
            refuse(
                f"{cfg.state_dir / 'state.db'} holds no history, but the audit logs hold "
                f"{records} record(s): the database was lost or replaced, and with it the "
                "queue, the ledger, the rate limits and the breaker. Restore it from a "
                "backup, or start anew with `macha-obs serve --start-fresh` (the audit "
                "logs are kept)"
            )
        store.meta.set_meta("started_fresh", str(store.clock()))  # history from here on
        store.audit.audit_action({"event": "started_fresh", "audit_records": records})
    setup_logging(store.audit.orchestrator_log, journald=bool(os.environ.get("JOURNAL_STREAM")))
    interrupted = store.ledger.recover_interrupted()
    for record in interrupted:
        log.warning(
            "action %d (%s) was interrupted by a crash; recorded, not re-run",
            record.id,
            describe_action(record.action),
        )
    return store, lock, {r.incident_id for r in interrupted}


def _pull_intake(cfg: Config, store: Store, side: Parts) -> PullThread | None:
    """The pull intake (`alertmanager_urls`: this host's alerts from Alertmanager's API
    v2), not started yet; None when no Alertmanager is configured."""
    if not cfg.alertmanager_urls:
        return None
    puller = AlertmanagerPuller.from_config(
        cfg, store, on_incident=lambda _result: side.orchestrator.note_webhook()
    )
    return PullThread(puller, cfg.alertmanager_pull_interval)


def _approvals_pages(cfg: Config, store: Store, side: Parts) -> Pages:
    """The approvals page (/approvals): it decides through macha-approve's path (the
    Remediator), on the daemon's executor."""
    try:
        return approvals_pages(
            cfg,
            store,
            remediator(cfg, store, side.executor),
            history=partial(history_line, store),
        )
    except (StateDirError, ValueError, OSError) as exc:  # an untrusted key or token file
        refuse(f"approvals page: {exc}")


def _recover(side: Parts, interrupted: set[str]) -> None:
    """What a crash left behind, before anything else is decided."""
    # A rebuild a crash interrupted between its switch and its boot default is brought
    # back to the generation it recorded.
    recovered = side.executor.recover_rebuild()
    if recovered is not None:
        log.warning("an interrupted rebuild was recovered: %s", recovered.detail)
    # A crash may have come between a decision and its action: every open incident is
    # decided again from the host as it is now. One whose action the crash interrupted
    # is not: an interrupted action is recorded, never silently re-run (invariant 6).
    reopened = side.incidents.reopen_all(keep=interrupted)
    if reopened:
        log.info("%d open incident(s) will be looked at again", reopened)


def _mcp(cfg: Config, store: Store, side: Parts, stats: McpStats) -> McpHttp | None:
    """/mcp (macha_obs/mcp/), or None when `mcp_enabled = false`."""
    if not cfg.mcp_enabled:
        return None
    try:
        return mount(cfg, store, side.executor, side.loop.latest, stats)
    except (McpTokenError, StateDirError, ValueError, OSError) as exc:  # a token file too
        refuse(f"mcp: {exc}")


def _health(store: Store, side: Parts, pull: PullThread | None, threads: ThreadWatch) -> Health:
    """What /readyz, macha_ready and `status` say, fed by every snapshot."""
    health = Health(
        store,
        side.loop.ready,
        side.stats,
        pull_problem=pull.puller.stats.problem if pull is not None else lambda: None,
        collectors=CollectorStreaks(),
        threads=threads,
    )
    side.loop.listeners.append(health.note)
    return health


def _listen(
    cfg: Config,
    store: Store,
    side: Parts,
    receiver: ReceiverApp,
    pull: PullThread | None,
    *,
    health: Health,
    mcp: tuple[McpHttp | None, McpStats],
) -> tuple[Listener, threading.Thread]:
    """Health, the registry and the pages behind one listener, serving."""
    pages = _approvals_pages(cfg, store, side)
    listener_stats = ListenerStats()
    registry = build_registry(
        side.loop.latest,
        extra=[
            SelfCollector(
                side.stats,
                lambda: persistent_state(cfg, store, side.remediator, pages.links),
                health.problems,
            ),
            WebhookCollector(receiver.stats),
            IntakeDropCollector(store.intake_drops),
            LlmCollector(side.llm_metrics),
            ListenerCollector(listener_stats),
            LoginCollector(pages.login_stats),
            *([PullCollector(pull.puller.stats)] if pull is not None else []),
            LearnCollector(
                lambda: learn_state(store.outcomes, cfg), unit_label=cfg.learn_metrics_unit_label
            ),
            McpCollector(mcp[1].snapshot),
        ],
        node_exporter=cfg.node_exporter,
    )
    app = make_app(
        registry,
        alerts_app=receiver,
        pages_app=pages.app,
        mcp_app=mcp[0],
        health=health.problems,
    )
    try:
        return start_server(cfg.listen_host, cfg.listen_port, app, stats=listener_stats)
    except OSError as exc:
        refuse(f"cannot listen on {cfg.listen_address}: {exc}")


@click.command("serve")
@click.option(
    "--start-fresh",
    is_flag=True,
    help="Start on an empty state database although the audit logs show history.",
)
@click.pass_context
def serve(ctx: click.Context, start_fresh: bool) -> None:
    """Run the sidecar: collect, serve /metrics /alerts /approvals /healthz /readyz, and
    heal."""
    cfg = ctx_config(ctx, preload=preload_sdk)
    store, lock, interrupted = _open_state(cfg, start_fresh=start_fresh)
    side = assemble(cfg, store)
    _recover(side, interrupted)
    try:
        receiver = ReceiverApp.from_config(
            cfg, store, on_incident=lambda _result: side.orchestrator.note_webhook()
        )
    except (ValueError, OSError) as exc:  # e.g. no token on a non-loopback listener
        refuse(f"webhook: {exc}")
    pull = _pull_intake(cfg, store, side)
    threads = ThreadWatch()
    threading.excepthook = threads.excepthook  # a thread that dies is logged and reported
    health = _health(store, side, pull, threads)
    mcp_stats = McpStats()
    mcp_http = _mcp(cfg, store, side, mcp_stats)
    server, server_thread = _listen(
        cfg, store, side, receiver, pull, health=health, mcp=(mcp_http, mcp_stats)
    )
    watcher = (
        UnitWatcher(
            cfg.systemd_bus_address,
            side.orchestrator.note_unit_event,
            bus=side.bus,
            debounce=cfg.event_debounce,
        )
        if cfg.dbus_events
        else None
    )
    extras = [Extra("alertmanager pull", pull, 2.0)] if pull is not None else []
    if watcher is not None:
        extras.insert(0, Extra("unit watcher", watcher, 1.0))
    daemon = Sidecar(
        lanes=side.orchestrator,
        loop=side.loop,
        threads=threads,
        notifier=Notifier(os.environ),
        stop_listening=partial(shutdown, server, server_thread),
        status=f"{cfg.autonomy_level} on {cfg.listen_host}:{server.server_port}",
        serving=(
            f"macha-obs {__version__} serving on {cfg.listen_host}:{server.server_port}, "
            f"autonomy {cfg.autonomy_level}, state {cfg.state_dir}"
        ),
        interrupt=side.remediator.interrupt_in_flight,
        extras=extras,
        closers=[
            *([mcp_http.close] if mcp_http is not None else []),
            side.close,
            store.close,
            lock.release,
        ],
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    daemon.run(stop)


def _print_cycle(side: Parts, report: CycleReport, acted: bool) -> None:
    """The cycle for a person; alert, log and model text made inert on the terminal."""
    snap = side.loop.latest()
    findings = snap.findings if snap else []
    click.echo(f"findings: {len(findings)}")
    for f in findings:
        click.echo(f"  [{f.severity.value}] {f.kind.value}: {inert(f.summary)}")
    if snap is not None:
        failed = [name for name, run in snap.collectors.items() if not run.success]
        if failed:
            click.echo(f"collectors that failed: {', '.join(sorted(failed))}")
    if not report.analysed:
        click.echo("decisions: none (no incident needed analysis)")
    for incident, decision in report.analysed:
        click.echo(
            f"incident {incident.id}: {decision.assessment.value} by "
            f"{inert(decision.backend or decision.source.value)}: {inert(decision.summary)}"
        )
        if decision.error:
            click.echo(f"  analysis error: {inert(decision.error)}")
    for incident_id, proposal, handled in report.handled:
        click.echo(f"  {inert(describe_action(proposal.action))} ({inert(incident_id)})")
        click.echo(f"    policy: {handled.verdict.outcome.value}: {inert(handled.verdict.reason)}")
        if handled.result is not None:
            click.echo(f"    result: {inert(handled.summary)}")
        elif handled.approval is not None:
            click.echo(
                f"    queued as approval {handled.approval.id} (macha-approve show "
                f"{handled.approval.id})"
            )
    for item in report.deferred:
        click.echo(f"  left to systemd: {inert(item)}")
    for approval_id in report.escalated:
        click.echo(f"  escalated to a human: approval {approval_id}")
    if not acted:
        click.echo("(the daemon is running: this check only recorded what it would do)")


@click.command("check")
@click.pass_context
def check(ctx: click.Context) -> None:
    """Run one full cycle now and print what was found, decided and done."""
    _check(ctx)


@click.command(cls=Command, context_settings=HELP)
@click.version_option(__version__, prog_name="macha-check")
@config_options
@click.pass_context
def check_main(ctx: click.Context, /, config_path: Path | None, **flags: Any) -> None:
    """Run one full cycle now and print what was found, decided and done (one
    `macha-obs check`, with the same options)."""
    keep_options(ctx, config_path, flags)
    _check(ctx)


def _check(ctx: click.Context) -> None:
    cfg = ctx_config(ctx)
    open_store(cfg).close()  # the state dir exists and can be trusted before the lock
    lock = StateLock(cfg.state_dir)
    try:
        lock.acquire()
    except AlreadyRunning:
        _check_beside_daemon(cfg)
        return
    try:
        _one_cycle(cfg, acted=True)
    finally:
        lock.release()


def _one_cycle(cfg: Config, *, acted: bool) -> None:
    store = open_store(cfg)
    side = assemble(cfg, store)
    try:
        side.loop.run_once()
        report = side.orchestrator.run_cycle("check")
        _print_cycle(side, report, acted)
    finally:
        side.close()
        store.close()


def _check_beside_daemon(cfg: Config) -> None:
    """The daemon owns the host and the state dir: look and decide in a scratch state
    dir, in observe mode, and only read the daemon's queue. Nothing of the daemon's is
    consumed (incidents, revisions, the journal cursor, approvals)."""
    with tempfile.TemporaryDirectory(prefix="macha-check-") as scratch:
        scratch_cfg = cfg.model_copy(
            update={"autonomy_level": AutonomyLevel.OBSERVE, "state_dir": Path(scratch)}
        )
        _one_cycle(scratch_cfg, acted=False)
    with open_store(cfg) as daemon_store:
        pending = daemon_store.approvals.list_approvals({ApprovalStatus.PENDING})
    click.echo(f"the daemon's queue: {len(pending)} pending (macha-approve list)")
