"""Domain types shared by every room: findings, alerts, incidents, actions, decisions.

Actions are a closed, typed union: the LLM picks one of these shapes and fills bounded
fields; the executor builds any argv itself (DESIGN.md invariants 1 and 9). Every string a
model can fill carries a max_length, which also keeps small models' structured output
from looping inside a string.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter

from macha_obs.config import AutonomyLevel

__all__ = [
    "Action",
    "ActionRecord",
    "ActionStatus",
    "AutonomyLevel",
    "Finding",
    "FindingKind",
    "Risk",
    "UnitName",
    "parse_action",
]

# systemd's unit-name grammar (src/basic/unit-name.c): a prefix of [A-Za-z0-9:_.\-],
# an optional "@instance", a known type suffix, at most 255 bytes. We are stricter than
# systemd in one place: no "..", no leading "." or "-" except the root slice/mount
# names, so a name can never look like a path or an option.
UNIT_TYPES = (
    "service",
    "socket",
    "target",
    "device",
    "mount",
    "automount",
    "swap",
    "timer",
    "path",
    "slice",
    "scope",
)
_UNIT_RE = re.compile(
    r"^(?P<prefix>[A-Za-z0-9:_][A-Za-z0-9:_.\\-]*)"
    r"(?:@(?P<instance>[A-Za-z0-9:_.\\-]+))?"
    r"\.(?P<type>" + "|".join(UNIT_TYPES) + r")$"
)
_ROOT_UNITS = {"-.slice", "-.mount"}
UNIT_NAME_MAX = 255


class InvalidUnitName(ValueError):
    pass


def validate_unit_name(name: str) -> str:
    """Return `name` if it is a valid, canonical systemd unit name; raise otherwise."""
    if name in _ROOT_UNITS:
        return name
    if not name or len(name.encode()) > UNIT_NAME_MAX:
        raise InvalidUnitName(f"unit name must be 1..{UNIT_NAME_MAX} bytes")
    if ".." in name:
        raise InvalidUnitName(f"{name!r}: '..' is not allowed in a unit name")
    if _UNIT_RE.fullmatch(name) is None:
        raise InvalidUnitName(
            f"{name!r} is not a systemd unit name (letters, digits, ':_.\\-', optional "
            f"@instance, and a type suffix such as .service)"
        )
    return name


def canonical_unit_name(name: str) -> str:
    """'nginx' → 'nginx.service' (systemctl's rule), then validated."""
    if name.rsplit(".", 1)[-1] not in UNIT_TYPES:
        name = name + ".service"
    return validate_unit_name(name)


UnitName = Annotated[str, AfterValidator(validate_unit_name)]

Text200 = Annotated[str, Field(max_length=200)]
Text500 = Annotated[str, Field(max_length=500)]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Risk(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    FORBIDDEN = "forbidden"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


# ---------------------------------------------------------------- findings


class FindingKind(StrEnum):
    UNIT_FAILED = "unit_failed"
    UNIT_FLAPPING = "unit_flapping"
    DISK_FILLING = "disk_filling"
    INODES_LOW = "inodes_low"
    MEMORY_PRESSURE = "memory_pressure"
    JOURNAL_ERROR_BURST = "journal_error_burst"
    DNS_FAILING = "dns_failing"
    TARGET_UNREACHABLE = "target_unreachable"
    UNEXPECTED_REBOOT = "unexpected_reboot"
    # units failed soon after the running NixOS generation changed: the switch is suspect
    UNITS_FAILED_AFTER_SWITCH = "units_failed_after_switch"


# The collector that reports each kind: when it fails, what it would say is unknown.
FINDING_SOURCE: dict[FindingKind, str] = {
    FindingKind.UNIT_FAILED: "systemd",
    FindingKind.UNIT_FLAPPING: "systemd",
    FindingKind.DISK_FILLING: "disks",
    FindingKind.INODES_LOW: "disks",
    FindingKind.MEMORY_PRESSURE: "resources",
    FindingKind.JOURNAL_ERROR_BURST: "journal",
    FindingKind.DNS_FAILING: "network",
    FindingKind.TARGET_UNREACHABLE: "network",
    FindingKind.UNEXPECTED_REBOOT: "boot",
    FindingKind.UNITS_FAILED_AFTER_SWITCH: "nixos",
}


class Finding(BaseModel):
    """Something a collector saw that may need attention."""

    model_config = ConfigDict(frozen=True)

    kind: FindingKind
    severity: Severity = Severity.WARNING
    subject: str = Field(max_length=300, description="unit, mountpoint, name or target")
    summary: str = Field(max_length=500)
    unit: UnitName | None = None
    details: dict[str, str | float | int | bool] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.kind.value}:{self.subject}"


# ---------------------------------------------------------------- Alertmanager v4

ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)


class Alert(BaseModel):
    """One alert of an Alertmanager webhook (payload version 4)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime = Field(alias="startsAt")
    # Alertmanager sends 0001-01-01T00:00:00Z for "no end yet" (still firing).
    ends_at: datetime = Field(ZERO_TIME, alias="endsAt")
    generator_url: str = Field("", alias="generatorURL")
    fingerprint: str = Field("", max_length=64)

    @property
    def firing(self) -> bool:
        return self.status == "firing"

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def unit(self) -> str | None:
        """The unit this alert concerns, if its `unit`/`name` label is a valid unit name."""
        for key in ("unit", "name"):
            value = self.labels.get(key)
            if value:
                try:
                    return canonical_unit_name(value)
                except InvalidUnitName:
                    return None
        return None


class AlertGroup(BaseModel):
    """The whole webhook body."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    version: Literal["4"]
    group_key: str = Field(alias="groupKey")
    truncated_alerts: int = Field(0, alias="truncatedAlerts", ge=0)
    status: Literal["firing", "resolved"]
    receiver: str = ""
    group_labels: dict[str, str] = Field(default_factory=dict, alias="groupLabels")
    common_labels: dict[str, str] = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[str, str] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field("", alias="externalURL")
    alerts: list[Alert]


# ---------------------------------------------------------------- actions


class _ActionBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @property
    def target(self) -> str:
        """What rate limits and the ledger key on: the unit, or the action's scope."""
        return "host"


class _UnitAction(_ActionBase):
    unit: UnitName

    @property
    def target(self) -> str:
        return self.unit


class RestartUnit(_UnitAction):
    kind: Literal["restart_unit"] = "restart_unit"


class StartUnit(_UnitAction):
    kind: Literal["start_unit"] = "start_unit"


class ResetFailed(_UnitAction):
    """reset-failed, then start: what to do after systemd gave up (start-limit-hit)."""

    kind: Literal["reset_failed"] = "reset_failed"
    start: bool = True


class JournalVacuum(_ActionBase):
    kind: Literal["journal_vacuum"] = "journal_vacuum"
    max_size_mb: int = Field(500, ge=16, le=1_000_000)


class NixGc(_ActionBase):
    """nix-collect-garbage; with older_than_days it also deletes old generations."""

    kind: Literal["nix_gc"] = "nix_gc"
    older_than_days: int | None = Field(None, ge=1, le=3650)


class NixRebuild(_ActionBase):
    """nixos-rebuild of the configured flake (never one named by a model)."""

    kind: Literal["nix_rebuild"] = "nix_rebuild"
    mode: Literal["dry-build", "test", "switch", "boot"] = "dry-build"


class NixRollback(_ActionBase):
    kind: Literal["nix_rollback"] = "nix_rollback"


# -- root-side steps the executor derives itself: never proposed, not in `Action`


class NixGcKeep(_ActionBase):
    """Delete system generations but the newest `keep`, then collect garbage. `keep`
    comes from the operator's config (nix_gc_keep_generations), never from a model."""

    kind: Literal["nix_gc_keep"] = "nix_gc_keep"
    keep: int = Field(ge=2, le=1000)


class NixActivate(_ActionBase):
    """Make system generation `generation` the running one and the boot default again:
    the rebuild sequence's way back to the generation it recorded."""

    kind: Literal["nixos_activate"] = "nixos_activate"
    generation: int = Field(ge=1, le=999_999)


# -- read-only diagnostics: the allowlist shared by `investigate` and agent tools


class UnitStatus(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    tool: Literal["unit_status"] = "unit_status"
    unit: UnitName


class JournalTail(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    tool: Literal["journal_tail"] = "journal_tail"
    unit: UnitName
    lines: int = Field(50, ge=1, le=500)


class DiskUsage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    tool: Literal["disk_usage"] = "disk_usage"


class TopProcesses(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    tool: Literal["top_processes"] = "top_processes"
    count: int = Field(10, ge=1, le=50)


class ListeningSockets(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    tool: Literal["listening_sockets"] = "listening_sockets"


class FailedUnits(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    tool: Literal["failed_units"] = "failed_units"


Diagnostic = Annotated[
    UnitStatus | JournalTail | DiskUsage | TopProcesses | ListeningSockets | FailedUnits,
    Field(discriminator="tool"),
]


class Investigate(_ActionBase):
    kind: Literal["investigate"] = "investigate"
    diagnostic: Diagnostic

    @property
    def target(self) -> str:
        return getattr(self.diagnostic, "unit", "host")


class ConfigChange(_ActionBase):
    """A proposed change for a human to read and apply. Never executed."""

    kind: Literal["config_change"] = "config_change"
    path: str = Field(max_length=300, pattern=r"^[^\x00\n]+$")
    diff: str = Field(max_length=8000)
    summary: Text200 = ""


Action = Annotated[
    RestartUnit
    | StartUnit
    | ResetFailed
    | JournalVacuum
    | NixGc
    | NixRebuild
    | NixRollback
    | Investigate
    | ConfigChange,
    Field(discriminator="kind"),
]
ACTION_ADAPTER: TypeAdapter[Action] = TypeAdapter(Action)
UNIT_ACTIONS = (RestartUnit, StartUnit, ResetFailed)


def parse_action(data: Any) -> Action:
    """Validate untrusted data (dict or JSON text) into an Action; ValidationError otherwise."""
    if isinstance(data, str | bytes):
        return ACTION_ADAPTER.validate_json(data)
    return ACTION_ADAPTER.validate_python(data)


def action_json(action: Action) -> str:
    return ACTION_ADAPTER.dump_json(action).decode()


def describe_action(action: Action) -> str:
    """A short human-readable label: 'restart_unit nginx.service'."""
    target = action.target
    return action.kind if target == "host" else f"{action.kind} {target}"


# ---------------------------------------------------------------- incidents, decisions


class Incident(BaseModel):
    """Alerts (by group key) and local findings about the same problem."""

    id: str = Field(max_length=100)
    source: Literal["alert", "finding", "event", "manual"]
    group_key: str = ""
    opened_at: datetime = Field(default_factory=utcnow)
    alerts: list[Alert] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)

    @property
    def units(self) -> list[str]:
        seen: dict[str, None] = {}
        for alert in self.alerts:
            if alert.unit:
                seen[alert.unit] = None
        for finding in self.findings:
            if finding.unit:
                seen[finding.unit] = None
        return list(seen)


class Proposal(BaseModel):
    """One action the analysis suggests, with why."""

    model_config = ConfigDict(frozen=True)

    action: Action
    reason: Text500 = ""
    evidence: list[Text200] = Field(default_factory=list, max_length=5)


class Assessment(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILING = "failing"
    # Analysis failed (model down, invalid output): never read as healthy (invariant 8).
    UNKNOWN = "unknown"


class DecisionSource(StrEnum):
    LLM = "llm"
    RUNBOOKS = "runbooks"
    NONE = "none"


class Decision(BaseModel):
    """What the analysis concluded about one incident."""

    incident_id: str
    assessment: Assessment
    summary: Text500 = ""
    severity: Severity = Severity.WARNING
    root_cause: Text500 = ""
    confidence: float = Field(0.0, ge=0.0, le=1.0)
    proposals: list[Proposal] = Field(default_factory=list, max_length=5)
    source: DecisionSource = DecisionSource.NONE
    backend: str = ""
    model: str = ""
    latency_seconds: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    prompt_hash: str = ""
    raw_output_hash: str = ""
    error: str = ""
    created_at: datetime = Field(default_factory=utcnow)


# ---------------------------------------------------------------- policy verdicts


class Outcome(StrEnum):
    EXECUTE = "execute"
    QUEUE = "queue"
    RECORD = "record"
    REFUSE = "refuse"


class Verdict(BaseModel):
    """The policy's judgement of one action; `reason` is for a person."""

    model_config = ConfigDict(frozen=True)

    outcome: Outcome
    risk: Risk
    reason: str
    autonomy: AutonomyLevel
    rate_limited: bool = False


# ---------------------------------------------------------------- execution


class UnitState(BaseModel):
    """A unit's state as systemd reports it over D-Bus."""

    model_config = ConfigDict(frozen=True)

    name: str
    load_state: str = ""
    active_state: str = ""
    sub_state: str = ""
    result: str = ""
    n_restarts: int = 0
    main_pid: int = 0
    state_change_usec: int = 0
    job_id: int = 0  # a job systemd is running on the unit; 0: none
    names: tuple[str, ...] = ()  # every name systemd knows the unit by (aliases)

    @property
    def healthy(self) -> bool:
        return self.active_state == "active"


class ActionStatus(StrEnum):
    INTENT = "intent"  # written before any side effect
    SUCCEEDED = "succeeded"  # done and verified
    FAILED = "failed"  # done (or tried) and not verified
    REFUSED = "refused"  # the executor refused before any side effect
    INTERRUPTED = "interrupted"  # the process died between intent and outcome


class ExecutionResult(BaseModel):
    """What the executor did and what it saw before and after."""

    ok: bool
    verified: bool = False
    detail: str = ""
    before: UnitState | None = None
    after: UnitState | None = None
    output: str = ""
    attempts: int = 1
    duration_seconds: float = 0.0
    # nix gc: bytes the store's filesystem got back (None: not measured)
    freed_bytes: int | None = Field(None, ge=0)


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"  # claimed by one approver; being carried out
    EXECUTED = "executed"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"  # the incident resolved or the problem went away
    REFUSED = "refused"  # the policy refused it at execution time
    ACKNOWLEDGED = "acknowledged"  # a config_change a human has read; nothing ran
    INTERRUPTED = "interrupted"


class Approval(BaseModel):
    """An action waiting for (or past) a human's decision."""

    id: int
    incident_id: str
    action: Action
    risk: Risk
    reason: str
    evidence: list[str] = Field(default_factory=list)
    status: ApprovalStatus
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None = None
    decided_by: str = ""
    note: str = ""
    action_id: int | None = None
    # every incident whose evidence it carries (the first is `incident_id`)
    incident_ids: list[str] = Field(default_factory=list)


class ActionRecord(BaseModel):
    """A row of the action ledger."""

    id: int
    incident_id: str
    approval_id: int | None = None
    action: Action
    status: ActionStatus
    started_at: datetime
    finished_at: datetime | None = None
    result: ExecutionResult | None = None


# ---------------- snapshot (eyes)
# What the collectors saw in one cycle. The exporter renders the latest Snapshot; scrapes
# never touch the host. A reading is None when its collector failed or was not run; a
# reading that says "nothing here" (not NixOS, no journal) is a value, not a failure.


class CollectorRun(BaseModel):
    """How one collector fared in one cycle (node_exporter's scrape_collector_*)."""

    model_config = ConfigDict(frozen=True)

    success: bool
    duration_seconds: float = Field(ge=0.0)
    error: str = Field("", max_length=500)


class UnitReading(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str = Field(max_length=255)
    load_state: str = ""
    active_state: str = ""
    sub_state: str = ""
    n_restarts: int | None = None  # services only
    state_change_timestamp: float | None = None  # unix seconds; None when systemd has none


class SystemdReading(BaseModel):
    model_config = ConfigDict(frozen=True)

    units: list[UnitReading] = Field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [u.name for u in self.units if u.active_state == "failed"]


class ResourcesReading(BaseModel):
    model_config = ConfigDict(frozen=True)

    cpu_count: int = Field(ge=1)
    cpu_usage_ratio: float = Field(ge=0.0, le=1.0)  # busy share since the previous cycle
    memory_total_bytes: int = Field(ge=0)
    memory_available_bytes: int = Field(ge=0)
    swap_total_bytes: int = Field(ge=0)
    swap_used_bytes: int = Field(ge=0)
    load1: float = Field(ge=0.0)
    load5: float = Field(ge=0.0)
    load15: float = Field(ge=0.0)


class FilesystemReading(BaseModel):
    model_config = ConfigDict(frozen=True)

    mountpoint: str
    device: str
    fstype: str
    size_bytes: int = Field(ge=0)
    avail_bytes: int = Field(ge=0)  # what an unprivileged writer can still use (f_bavail)
    free_bytes: int = Field(ge=0)
    files: int = Field(ge=0)
    files_free: int = Field(ge=0)


class DisksReading(BaseModel):
    model_config = ConfigDict(frozen=True)

    filesystems: list[FilesystemReading] = Field(default_factory=list)


class JournalReading(BaseModel):
    model_config = ConfigDict(frozen=True)

    entries_read: int = Field(0, ge=0)  # in this cycle
    errors_by_unit: dict[str, int] = Field(default_factory=dict)  # in this cycle
    errors_total_by_unit: dict[str, int] = Field(default_factory=dict)  # since process start
    # Untrusted text, kept for incident context only: never a label, never an argv.
    recent_messages: dict[str, list[str]] = Field(default_factory=dict)


class ProbeResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    target: str = Field(max_length=300)
    ok: bool
    duration_seconds: float = Field(ge=0.0)
    error: str = Field("", max_length=300)


class NetworkReading(BaseModel):
    model_config = ConfigDict(frozen=True)

    default_route: bool
    dns: list[ProbeResult] = Field(default_factory=list)
    tcp: list[ProbeResult] = Field(default_factory=list)


class BootReading(BaseModel):
    model_config = ConfigDict(frozen=True)

    boot_id: str = Field(max_length=64)
    boot_time: float  # unix seconds
    uptime_seconds: float = Field(ge=0.0)
    # The boot id differs from the one recorded earlier and nobody announced the reboot.
    unexpected_reboot: bool = False


class NixosReading(BaseModel):
    model_config = ConfigDict(frozen=True)

    is_nixos: bool
    generation: int | None = None
    generation_timestamp: float | None = None  # when the current generation was created
    # when the running system last changed (activation of any generation, a rollback too)
    switched_at: float | None = None
    generations: int = Field(0, ge=0)
    store_size_bytes: int | None = None  # None: not measured (no readable Nix database)


class Snapshot(BaseModel):
    """One collection cycle: per-collector outcome, readings, and findings."""

    model_config = ConfigDict(frozen=True)

    taken_at: float  # unix seconds, when the cycle started
    hostname: str = Field(max_length=253)
    collectors: dict[str, CollectorRun] = Field(default_factory=dict)
    systemd: SystemdReading | None = None
    resources: ResourcesReading | None = None
    disks: DisksReading | None = None
    journal: JournalReading | None = None
    network: NetworkReading | None = None
    boot: BootReading | None = None
    nixos: NixosReading | None = None
    findings: list[Finding] = Field(default_factory=list)


SNAPSHOT_READINGS = ("systemd", "resources", "disks", "journal", "network", "boot", "nixos")
