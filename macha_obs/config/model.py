"""The single configuration model: TOML file < MACHA_* environment < CLI flags.

Read once at start (by the CLI) and passed down; nothing else reads the environment.
"""

from __future__ import annotations

import socket
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from macha_obs.config import checks
from macha_obs.config.checks import split_host_port
from macha_obs.protected import BUILTIN_PROTECTED_UNITS, ProtectedClass, protection

_PATH_FIELDS = ("state_dir", "webhook_token_file", "journal_dir", "nixos_config_dir", "nix_root")


class AutonomyLevel(StrEnum):
    """How much the sidecar may do by itself (DESIGN.md invariant 4)."""

    OBSERVE = "observe"
    SUGGEST = "suggest"
    AUTO_SAFE = "auto-safe"
    AUTO_FULL = "auto-full"


class AnalysisMode(StrEnum):
    RUNBOOKS_FIRST = "runbooks-first"
    LLM_FIRST = "llm-first"
    RUNBOOKS_ONLY = "runbooks-only"


class Config(BaseModel):
    """Everything the sidecar can be told. Field names are the TOML keys."""

    # Every number has a bound a person could mean; inf and nan are never meant.
    model_config = ConfigDict(
        extra="forbid", frozen=True, use_enum_values=False, allow_inf_nan=False
    )

    # autonomy and loop
    autonomy_level: AutonomyLevel = AutonomyLevel.SUGGEST
    check_interval: float = Field(300.0, ge=1.0, le=86400.0, description="seconds between cycles")
    analysis: AnalysisMode = AnalysisMode.RUNBOOKS_FIRST

    # the model
    llm_enabled: bool = True
    llm_backend: Literal["ollama", "openai"] = "ollama"
    model: str = Field("llama3.1:70b", min_length=1, max_length=200)
    ollama_url: str = "http://127.0.0.1:11434"
    openai_url: str = "http://127.0.0.1:8080"
    # llama.cpp's server answers OpenAI's json_schema form with a 500: "json_object" there.
    openai_response_format: Literal["json_schema", "json_object"] = "json_schema"
    # The model's endpoint is trusted only when it is what the user configured: a key
    # file for OpenAI-compatible servers (sent as a bearer token) ...
    openai_api_key_file: Path | None = None
    # ... and, for an endpoint on this host's loopback, the user that must own the
    # listening socket ("" skips the check; the NixOS module sets Ollama's user). A
    # local user who binds the port while the model is down gets no prompt.
    llm_endpoint_user: str = Field("", max_length=64, pattern=r"^([a-z_][a-z0-9_-]*\$?)?$")
    llm_timeout: float = Field(120.0, gt=0, le=3600)
    llm_keep_alive: str = "30m"
    llm_max_steps: int = Field(3, ge=1, le=10)

    # where things live
    state_dir: Path = Path("/var/lib/macha-autonomous")
    listen_address: str = "127.0.0.1:9847"
    webhook_token_file: Path | None = None
    # DESIGN.md invariant 13: intake is authenticated by default. Without
    # webhook_token_file the daemon keeps a generated token in `<state_dir>/webhook.token`
    # (0600). `false` is an explicit opt-out, refused beyond loopback.
    webhook_auth: bool = True
    webhook_max_body_bytes: int = Field(1_048_576, ge=1024, le=64 * 1_048_576)
    hostname: str = Field(default_factory=socket.gethostname, min_length=1, max_length=253)
    # Alerts whose host label (first present of these) names another host are ignored.
    host_labels: tuple[str, ...] = ("instance", "host", "hostname", "nodename")
    host_aliases: tuple[str, ...] = ()
    journal_dir: Path | None = None
    nixos_flake: str | None = Field(None, max_length=500)
    # The user's NixOS configuration (e.g. /etc/nixos): the sidecar reads it, never writes
    # it. A config_change proposal is a unified diff against a file under it; unset, none
    # can be proposed.
    nixos_config_dir: Path | None = None
    # Empty: run root-only actions (nix gc, rebuild, journal vacuum) directly. Set (the
    # NixOS module sets "macha-autonomous-privileged"): start <this>@<instance>.service.
    privileged_unit: str = Field("", max_length=200, pattern=r"^([A-Za-z0-9:_.\-]+)?$")
    # Where /nix and /run/current-system are: "/" on a host; tests point it at a fake tree.
    nix_root: Path = Path("/")
    # The rebuild sequence (nix_rebuild switch): after `nixos-rebuild test`, every check
    # must hold for this many seconds before the new generation becomes the boot default;
    # otherwise the recorded generation is activated again.
    rebuild_health_window: float = Field(60.0, ge=1, le=3600)
    # Units that must be active after a switch, beside "no unit failed that was active".
    rebuild_check_units: tuple[str, ...] = ()
    # nix gc deletes system generations but the newest N first (0: deletes none). At
    # least 2, so the generation to roll back to survives.
    nix_gc_keep_generations: int = Field(3, ge=0, le=1000)
    # Units failing within this many seconds after the running generation changed get a
    # nix_rollback proposed (high risk: always queued for a human).
    nix_rollback_window: float = Field(900.0, ge=1, le=86400)

    # safety
    protected_units: tuple[str, ...] = BUILTIN_PROTECTED_UNITS
    # systemd's start limit (result start-limit-hit) is the unit author's "stop trying":
    # resetting it is queued for a human unless this is true.
    auto_reset_start_limit: bool = False
    max_actions_per_target_per_hour: int = Field(3, ge=0, le=1000)
    max_actions_per_hour: int = Field(10, ge=0, le=10000)
    breaker_threshold: int = Field(3, ge=1, le=100, description="failed verifications to open")
    breaker_window: float = Field(
        3600.0, ge=60, le=30 * 86400, description="seconds over which failures count"
    )
    approval_ttl: float = Field(
        86400.0, ge=60, le=30 * 86400, description="seconds a pending approval lives"
    )
    verify_timeout: float = Field(30.0, gt=0, le=600)
    verify_settle: float = Field(2.0, ge=0, le=120)
    # An alert-driven fix is verified again by its alert resolving within this window.
    alert_verify_window: float = Field(300.0, ge=1, le=86400)
    # React to units entering `failed` at once through D-Bus signals (the event path);
    # off, failures reach the loop through the collectors and alerts only.
    dbus_events: bool = True
    # D-Bus unit events are coalesced per unit over this window (a flap is one event).
    event_debounce: float = Field(0.1, ge=0, le=60)
    dbus_timeout: float = Field(10.0, gt=0, le=120)
    # None: the system bus. Tests and containers point this at another systemd.
    systemd_bus_address: str | None = Field(None, max_length=500)

    # eyes
    # How often the collectors run (and /metrics is refreshed); the orchestrator's own
    # timer is check_interval, and failed units reach it at once through D-Bus events.
    collect_interval: float = Field(15.0, ge=1.0, le=3600.0)
    snapshot_retention: int = Field(20, ge=1, le=10000)

    # retention: every file in the state dir stays bounded (store/retention.py, run by
    # the daemon's timer cycle). Webhook bodies and seen-alert keys: by age and count;
    # forgetting a key only lets a re-sent alert count as new once (one more analysis).
    inbox_retention: float = Field(
        7 * 86400.0, ge=86400, le=365 * 86400, description="seconds webhook bodies are kept"
    )
    inbox_max_rows: int = Field(10_000, ge=100, le=1_000_000)
    # Caps held at every delivery, so a storm of distinct alerts cannot grow the state
    # dir between retention passes (store/intake_bounds.py): webhook bodies kept, open
    # incidents, alerts per incident, and alerts of all incidents together. Past a cap
    # the oldest evidence goes first, counted in macha_intake_dropped_total{what}.
    inbox_max_bytes: int = Field(32 * 1024 * 1024, ge=1024 * 1024, le=16 * 1024**3)
    incident_max_open: int = Field(500, ge=10, le=100_000)
    incident_max_alerts: int = Field(1000, ge=10, le=100_000)
    incident_alerts_max_bytes: int = Field(32 * 1024 * 1024, ge=1024 * 1024, le=16 * 1024**3)
    # Resolved incidents and their alerts; never one a pending approval still names.
    incident_retention: float = Field(30 * 86400.0, ge=86400, le=3650 * 86400)
    incident_max_resolved: int = Field(10_000, ge=100, le=1_000_000)
    # decisions.jsonl, actions.jsonl, orchestrator.log: rotated by rename at this size,
    # `log_keep` rotated files kept each (so a log takes at most (log_keep + 1) times this).
    log_max_bytes: int = Field(16 * 1024 * 1024, ge=64 * 1024, le=1024 * 1024 * 1024)
    log_keep: int = Field(5, ge=1, le=100)
    dns_names: tuple[str, ...] = ()
    tcp_targets: tuple[str, ...] = ()
    network_timeout: float = Field(2.0, gt=0, le=30)
    disk_fill_threshold: float = Field(0.90, gt=0, le=1)
    inode_threshold: float = Field(0.90, gt=0, le=1)
    memory_pressure_threshold: float = Field(0.90, gt=0, le=1)
    # the host is busy (resources findings, and the rules rendered from them): the share of
    # CPU time not idle over a collection interval, the 15-minute load per CPU, swap in use
    cpu_busy_threshold: float = Field(0.95, gt=0, le=1)
    load_per_cpu_threshold: float = Field(2.0, gt=0, le=1000)
    swap_used_threshold: float = Field(0.80, gt=0, le=1)
    journal_error_burst: int = Field(20, ge=1, le=1_000_000)
    flapping_restarts: int = Field(3, ge=1, le=10_000)
    # posture: exposure. Each running service's `systemd-analyze security` score, re-read
    # every exposure_interval seconds (it costs a process per service); at most
    # exposure_max_units services per run (the rest are named as skipped). A service
    # listening beyond loopback above exposure_threshold is a finding (service_exposed).
    exposure_interval: float = Field(3600.0, ge=300, le=7 * 86400)
    exposure_threshold: float = Field(7.0, ge=0, le=10)
    exposure_max_units: int = Field(200, ge=1, le=10_000)

    # --- Prometheus-native and the fleet -------------------------------------------
    # This host runs node_exporter: the sidecar leaves out the families it exports
    # (filesystem, memory, swap, load, CPU, boot time) and its rules use node_* series;
    # the sidecar's own findings still come from its own collection.
    node_exporter: bool = False
    # MachaDiskFilling* (predict_linear): warn when a writable filesystem will be full
    # within this many hours at the recent rate, page when within the critical bound.
    disk_predict_warning_hours: float = Field(24.0, gt=0, le=24 * 30)
    disk_predict_critical_hours: float = Field(4.0, gt=0, le=24 * 30)
    # Every rule's runbook_url is <this>/<AlertName>.md (docs/runbooks/ in the repo).
    runbook_url_base: str = Field(
        "https://github.com/macha-obs/macha-obs/blob/main/docs/runbooks", max_length=500
    )
    # Pull intake: ask these Alertmanagers (API v2) for this host's alerts, beside or
    # instead of the webhook. Empty: push (webhook) only.
    alertmanager_urls: tuple[str, ...] = ()
    alertmanager_pull_interval: float = Field(15.0, ge=1, le=3600)
    # Each peer's whole answer (connect, headers, body, a trickle included) within this
    # many seconds, or it counts as a timeout; every peer is asked at once, each with its
    # own deadline, so a slow one delays no other.
    alertmanager_pull_timeout: float = Field(10.0, gt=0, le=600)
    # Per answer, read as it streams: past any bound the answer is refused (too_large),
    # nothing is taken or resolved on its account. Memory per answer is about its bytes.
    alertmanager_pull_max_bytes: int = Field(16 * 1_048_576, ge=65_536, le=256 * 1_048_576)
    alertmanager_pull_max_groups: int = Field(5_000, ge=1, le=1_000_000)
    alertmanager_pull_max_alerts: int = Field(20_000, ge=1, le=1_000_000)
    # The fleet's blast radius: before an automatic action, ask this Prometheus how many
    # hosts acted within fleet_window (from the sidecars' own action counters); at
    # fleet_max_hosts or more, or when it cannot answer, queue instead. 0: off.
    fleet_prometheus_url: str | None = Field(None, max_length=500)
    fleet_max_hosts: int = Field(0, ge=0, le=100_000)
    fleet_window: float = Field(3600.0, ge=60, le=7 * 86400)

    # --- the approvals page -------------------------------------------------------
    # The URL people reach this listener at (behind a reverse proxy: its public URL).
    # Links in alerts are built from it; unset, from listen_address.
    external_url: str | None = Field(None, max_length=500)
    # Also one alert per pending approval (MachaApprovalPendingItem), each with its link.
    approval_alert_per_item: bool = False

    # --- learning from the operator ---------------------------------------------
    # Per-action trust, granted by a person: "KIND" or "KIND:TARGET_GLOB" entries run
    # automatically below the global autonomy level (invariant 14: only a config change
    # moves trust toward permission). Protected units, the scope lock, rate limits and
    # the breaker still apply.
    trusted_actions: tuple[str, ...] = ()
    # A fix rejected, or failing verification, this many times for one problem
    # signature within suppress_window is not proposed again for suppress_window.
    suppress_after_rejections: int = Field(3, ge=1, le=1000)
    suppress_after_failures: int = Field(3, ge=1, le=1000)
    suppress_window: float = Field(7 * 86400.0, ge=3600, le=365 * 86400)
    # Learning metrics carry a unit label only when asked (cardinality).
    learn_metrics_unit_label: bool = False

    # --- talking to it: the MCP server at /mcp (macha_obs/mcp/) ----------------
    mcp_enabled: bool = True
    # The bearer token /mcp takes: this file, else the webhook's token. `mcp_auth =
    # false` serves /mcp without one, and only on a loopback listener.
    mcp_token_file: Path | None = None
    mcp_auth: bool = True

    # posture: backups (collect/backups.py). Globs of backup services over the canonical
    # unit name (a set value replaces these defaults); the grace a backup may be late by,
    # beyond its expected interval (its timer's, else a day); per-glob intervals (seconds).
    backup_units: tuple[str, ...] = checks.DEFAULT_BACKUP_UNITS
    backup_grace: float = Field(6 * 3600.0, ge=0, le=30 * 86400)
    backup_intervals: dict[str, float] = Field(default_factory=dict)
    # posture: intrusion
    # SSH/sudo/su authentication failures: an auth_failures finding (and the rule
    # MachaAuthFailuresBurst) at this many of one service within the window (seconds).
    auth_failure_burst: int = Field(10, ge=1, le=1_000_000)
    auth_failure_window: float = Field(600.0, ge=60, le=86400)
    # Enabled units and setuid/setgid files are compared with the accepted baseline at
    # most this often (seconds; listeners every cycle); setid dirs are scanned directly
    # (not below), each re-read only when its mtime changed, or hourly.
    posture_interval: float = Field(300.0, ge=10, le=86400)
    posture_setid_dirs: tuple[Path, ...] = Field(checks.DEFAULT_SETID_DIRS, max_length=64)

    @field_validator("posture_setid_dirs", mode="before")
    @classmethod
    def _check_setid_dirs(cls, value: Any) -> tuple[Path, ...]:
        return checks.absolute_paths(value)

    @field_validator("protected_units", mode="before")
    @classmethod
    def _merge_protected(cls, value: Any) -> tuple[str, ...]:
        """User additions merge with the built-ins; the built-ins cannot be removed."""
        if isinstance(value, str):
            value = checks.split_list(value)
        return checks.merged_protected([str(v) for v in (value or ())])

    @field_validator("trusted_actions", mode="before")
    @classmethod
    def _check_trusted(cls, value: Any, info: ValidationInfo) -> tuple[str, ...]:
        """Per-action trust a person grants (`trust_refusal` says what is refused and
        why); the protected units are the ones this config merges."""
        if isinstance(value, str):
            value = checks.split_list(value)
        protected = info.data.get("protected_units", BUILTIN_PROTECTED_UNITS)
        return checks.trusted([str(v) for v in (value or ())], protected)

    @field_validator("backup_units", mode="before")
    @classmethod
    def _check_backup_units(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = checks.split_list(value)
        return checks.unit_globs([str(v) for v in (value or ())])

    @field_validator("backup_intervals", mode="before")
    @classmethod
    def _check_backup_intervals(cls, value: Any) -> dict[str, float]:
        return checks.unit_intervals(value)

    @field_validator("nix_gc_keep_generations")
    @classmethod
    def _keep_enough(cls, value: int) -> int:
        if value == 1:
            raise ValueError("1 would leave no generation to roll back to: use 0 or >= 2")
        return value

    @field_validator("rebuild_check_units")
    @classmethod
    def _check_unit_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(checks.unit_name(unit) for unit in value)

    @field_validator("listen_address")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        return split_host_port(value) and value

    @field_validator("alertmanager_urls", mode="before")
    @classmethod
    def _check_alertmanager_urls(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = checks.split_list(value)
        return checks.alertmanager_urls([str(v) for v in (value or ())])

    @field_validator("external_url")
    @classmethod
    def _check_external_url(cls, value: str | None) -> str | None:
        return None if value is None else checks.external_url(value)

    @field_validator("runbook_url_base")
    @classmethod
    def _check_runbook_base(cls, value: str) -> str:
        return checks.runbook_base(value)

    @field_validator("disk_predict_critical_hours")
    @classmethod
    def _critical_before_warning(cls, value: float, info: ValidationInfo) -> float:
        warning = info.data.get("disk_predict_warning_hours")
        if warning is not None and value > warning:
            raise ValueError(f"must not exceed disk_predict_warning_hours ({warning:g})")
        return value

    @field_validator("ollama_url", "openai_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return checks.http_url(value)

    @field_validator("fleet_prometheus_url")
    @classmethod
    def _check_fleet_url(cls, value: str | None) -> str | None:
        return checks.http_url(value) if value else None  # "" (an empty variable) is unset

    @field_validator("*", mode="before")
    @classmethod
    def _strict_kinds(cls, value: Any, info: ValidationInfo) -> Any:
        return checks.same_kind(value, cls.model_fields[str(info.field_name)].annotation)

    @field_validator(*_PATH_FIELDS, "openai_api_key_file", mode="before")
    @classmethod
    def _check_path(cls, value: Any) -> Any:
        return checks.no_nul(value)

    @field_validator("state_dir")
    @classmethod
    def _state_dir_absolute(cls, value: Path) -> Path:
        # a relative state dir would follow the daemon's working directory
        return checks.absolute(value)

    @field_validator("hostname")
    @classmethod
    def _check_hostname(cls, value: str) -> str:
        return checks.host_name(value)

    @field_validator("host_aliases")
    @classmethod
    def _check_aliases(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(checks.host_alias(v) for v in value)

    @field_validator("fleet_max_hosts")
    @classmethod
    def _fleet_needs_prometheus(cls, value: int, info: ValidationInfo) -> int:
        # a limit nobody can ask about would queue every automatic fix: say so at start
        if value and not info.data.get("fleet_prometheus_url"):
            raise ValueError(
                "needs fleet_prometheus_url (the Prometheus that scrapes every sidecar); "
                "0 turns the fleet limit off"
            )
        return value

    def is_protected(self, unit: str) -> bool:
        """True when the canonical unit name matches a protected name or glob."""
        return self.protection(unit) is not None

    def protection(self, unit: str) -> ProtectedClass | None:
        """The protected class `unit` falls in (built-in first, then the operator's)."""
        return protection(unit, self.protected_units)

    @property
    def listen_host(self) -> str:
        return split_host_port(self.listen_address)[0]

    @property
    def listen_port(self) -> int:
        return split_host_port(self.listen_address)[1]
