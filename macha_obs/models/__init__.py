"""Domain types shared by every room, one module per concept; this is their public face.

    units      systemd's unit-name grammar, and a unit's state as systemd reports it
    findings   what a collector saw that may need attention
    alerts     the Alertmanager webhook payload, version 4
    actions    the closed, typed union of what may be done, and its risks
    incidents  incidents, the analysis's decisions, the policy's verdicts
    ledger     the action ledger's records and the approvals queue's items
    snapshot   what the collectors saw in one cycle

Import from here (`from macha_obs.models import Incident`), never from the modules:
`__all__` is what the rest of the package uses, and a test holds it to that.
"""

from macha_obs.models.actions import (
    ACTION_ADAPTER,
    UNIT_ACTIONS,
    Action,
    ConfigChange,
    Diagnostic,
    DiskUsage,
    FailedUnits,
    Investigate,
    JournalTail,
    JournalVacuum,
    ListeningSockets,
    NixActivate,
    NixGc,
    NixGcKeep,
    NixRebuild,
    NixRollback,
    ResetFailed,
    RestartUnit,
    Risk,
    StartUnit,
    TopProcesses,
    UnitStatus,
    action_json,
    describe_action,
    parse_action,
)
from macha_obs.models.alerts import Alert, AlertGroup
from macha_obs.models.findings import FINDING_SOURCE, Finding, FindingKind, Severity
from macha_obs.models.incidents import (
    Assessment,
    Decision,
    DecisionSource,
    Incident,
    Outcome,
    Proposal,
    Verdict,
    utcnow,
)
from macha_obs.models.ledger import (
    ActionRecord,
    ActionStatus,
    Approval,
    ApprovalStatus,
    Execution,
    ExecutionResult,
)
from macha_obs.models.snapshot import (
    SNAPSHOT_READINGS,
    BootReading,
    CollectorRun,
    DisksReading,
    FilesystemReading,
    JournalReading,
    NetworkReading,
    NixosReading,
    ProbeResult,
    ResourcesReading,
    Snapshot,
    SystemdReading,
    UnitReading,
)
from macha_obs.models.units import (
    InvalidUnitName,
    UnitState,
    canonical_unit_name,
    validate_unit_name,
)

__all__ = [
    "ACTION_ADAPTER",
    "FINDING_SOURCE",
    "SNAPSHOT_READINGS",
    "UNIT_ACTIONS",
    "Action",
    "ActionRecord",
    "ActionStatus",
    "Alert",
    "AlertGroup",
    "Approval",
    "ApprovalStatus",
    "Assessment",
    "BootReading",
    "CollectorRun",
    "ConfigChange",
    "Decision",
    "DecisionSource",
    "Diagnostic",
    "DiskUsage",
    "DisksReading",
    "Execution",
    "ExecutionResult",
    "FailedUnits",
    "FilesystemReading",
    "Finding",
    "FindingKind",
    "Incident",
    "InvalidUnitName",
    "Investigate",
    "JournalReading",
    "JournalTail",
    "JournalVacuum",
    "ListeningSockets",
    "NetworkReading",
    "NixActivate",
    "NixGc",
    "NixGcKeep",
    "NixRebuild",
    "NixRollback",
    "NixosReading",
    "Outcome",
    "ProbeResult",
    "Proposal",
    "ResetFailed",
    "ResourcesReading",
    "RestartUnit",
    "Risk",
    "Severity",
    "Snapshot",
    "StartUnit",
    "SystemdReading",
    "TopProcesses",
    "UnitReading",
    "UnitState",
    "UnitStatus",
    "Verdict",
    "action_json",
    "canonical_unit_name",
    "describe_action",
    "parse_action",
    "utcnow",
    "validate_unit_name",
]
