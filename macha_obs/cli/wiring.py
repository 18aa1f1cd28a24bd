"""The one place that wires the rooms together (DESIGN.md: only the CLI does)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from macha_obs.agent.analyze import Analyzer
from macha_obs.agent.history import History, no_history
from macha_obs.agent.llm import LlmMetrics, client_from_config
from macha_obs.collect import CollectionLoop, build_collectors
from macha_obs.collect.unit_journal import PersonCheck
from macha_obs.config import AnalysisMode, Config
from macha_obs.execute.diagnostics import Diagnostics
from macha_obs.execute.dispatch import HostExecutor
from macha_obs.execute.journal import JournalExecutor
from macha_obs.execute.nix import STORE, NixExecutor, free_bytes
from macha_obs.execute.privileged import PrivilegedExecutor
from macha_obs.execute.rebuild import HealthChecks, RebuildSequence
from macha_obs.execute.runner import subprocess_runner
from macha_obs.execute.systemd import SystemdExecutor
from macha_obs.intake.incidents import IncidentStore
from macha_obs.metrics import LoopStats, PersistentState
from macha_obs.metrics.sidecar import ApprovalLink
from macha_obs.models import ApprovalStatus
from macha_obs.orchestrator import Orchestrator
from macha_obs.policy.judge import effective_autonomy
from macha_obs.remediate.fleet import fleet_limit
from macha_obs.remediate.patches import config_files
from macha_obs.remediate.pause import PauseBook
from macha_obs.remediate.remediator import Remediator
from macha_obs.remediate.verify import Verifier
from macha_obs.store import Store, owner_alive
from macha_obs.systemd.bus import IsolatedBus
from macha_obs.web import Links


def build_executor(
    cfg: Config, store: Store | None = None, bus: IsolatedBus | None = None
) -> HostExecutor:
    """The executor; with the store, also the health-gated rebuild sequence (without it,
    a `nix_rebuild switch` is refused: nothing switches the system unguarded)."""
    if bus is None:
        bus = IsolatedBus(cfg.systemd_bus_address, timeout=cfg.dbus_timeout)
    executor = HostExecutor(
        SystemdExecutor(
            bus,
            is_protected=cfg.is_protected,
            verify_timeout=cfg.verify_timeout,
            settle=cfg.verify_settle,
        ),
        NixExecutor(subprocess_runner, flake=cfg.nixos_flake, nix_root=cfg.nix_root),
        JournalExecutor(subprocess_runner, journal_dir=cfg.journal_dir),
        Diagnostics(bus, subprocess_runner, journal_dir=cfg.journal_dir),
        privileged=PrivilegedExecutor(bus, cfg.privileged_unit) if cfg.privileged_unit else None,
        gc_keep_generations=cfg.nix_gc_keep_generations,
        measure_store=partial(free_bytes, cfg.nix_root / STORE),
    )
    if store is not None:
        executor.rebuild = RebuildSequence(
            executor.root_step,
            bus,
            store,
            nix_root=cfg.nix_root,
            checks=HealthChecks(
                window=cfg.rebuild_health_window, must_be_active=cfg.rebuild_check_units
            ),
            owner_alive=owner_alive,
            self_check=store.problem,
        )
    return executor


def remediator(cfg: Config, store: Store, executor: HostExecutor | None = None) -> Remediator:
    """The Remediator `macha-approve` decides through; the approvals page passes the
    daemon's executor (its one D-Bus child) and gets the same path."""
    executor = executor or build_executor(cfg, store)
    return Remediator(
        cfg, store, executor, scope_of=IncidentStore(store).scope_of, verifier=verifier(cfg, store)
    )


def verifier(cfg: Config, store: Store) -> Verifier:
    """Verification, told by the journal whether a person changed a unit meanwhile."""
    return Verifier(cfg, store, person=PersonCheck(cfg.journal_dir))


@dataclass
class Parts:
    """Every room, wired: the parts `serve` hands to daemon.Sidecar, and `macha-check`
    runs one cycle of. Built by `assemble`."""

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
    bus: IsolatedBus  # the one D-Bus child: executor, collectors and event watcher

    def close(self) -> None:
        self.executor.close()


def build_analyzer(
    cfg: Config,
    diagnostics: Diagnostics | None,
    metrics: LlmMetrics,
    audit: Callable[[Mapping[str, Any]], None] | None = None,
    history: History = no_history,
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
        config_files=config_files(cfg.nixos_config_dir),
        history=history,
    )


def assemble(cfg: Config, store: Store) -> Parts:
    bus = IsolatedBus(cfg.systemd_bus_address, timeout=cfg.dbus_timeout)
    executor = build_executor(cfg, store, bus)
    llm_metrics = LlmMetrics()
    incidents = IncidentStore(store)
    analyzer = build_analyzer(
        cfg,
        executor.diagnostics,
        llm_metrics,
        store.audit.audit_decision,
        store.outcomes.fix_history,
    )
    fleet = fleet_limit(cfg)
    remediator = Remediator(
        cfg,
        store,
        executor,
        scope_of=incidents.scope_of,
        verifier=verifier(cfg, store),
        fleet_check=fleet.check if fleet is not None else None,
    )
    stats = LoopStats()
    loop = CollectionLoop(
        build_collectors(cfg, store.meta, bus),
        hostname=cfg.hostname,
        interval=cfg.collect_interval,
        state_dir=cfg.state_dir,
        retention=cfg.snapshot_retention,
    )
    orchestrator = Orchestrator(
        cfg, store, incidents, analyzer, remediator, snapshot=loop.latest, stats=stats
    )
    loop.listeners.append(orchestrator.note_snapshot)
    return Parts(
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
        bus,
    )


def persistent_state(
    cfg: Config, store: Store, remediator: Remediator, links: Links | None = None
) -> PersistentState:
    """What the store knows for /metrics; with `links`, each pending item's page (its
    plain URL: /metrics has no authentication, so it carries no capability)."""
    breaker = remediator.breaker()
    pause = PauseBook(store).current(store.clock())
    pending = (
        links.pending(store.approvals.list_approvals({ApprovalStatus.PENDING})) if links else []
    )
    return PersistentState(
        approval_links=tuple(
            ApprovalLink(a.id, a.action.kind, a.risk.value, url) for a, url in pending
        ),
        approvals_pending=store.approvals.pending_count(),
        breaker_open=breaker.open,
        configured=cfg.autonomy_level,
        effective=effective_autonomy(cfg, breaker),
        paused=pause is not None,
        pause_until=pause.until.timestamp() if pause and pause.until else None,
    )
