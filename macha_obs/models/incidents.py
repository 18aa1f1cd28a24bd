"""Incidents and decisions: what is wrong, what the analysis concluded, what the policy said."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from macha_obs.config import AutonomyLevel
from macha_obs.models.actions import Action, Risk, Text200, Text500
from macha_obs.models.alerts import Alert
from macha_obs.models.findings import Finding, Severity


def utcnow() -> datetime:
    """Now, timezone-aware: naive and aware datetimes never meet in a comparison."""
    return datetime.now(UTC)


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
    # invariant 14: a fix held back by its record (rejected or failing too often for this
    # problem); the orchestrator puts a read-only investigation in its place
    suppressed: bool = False
