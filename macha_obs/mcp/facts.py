"""What a person or their assistant may read: the record and the host, never a change.

The read-only half of the MCP tools (and of `ask` and `discuss`): the status, the
incidents and their whole audit chain, the queue with each item's history, the latest
findings, a recorded unit's state and journal, what the policy would say about an action
now (judged, never recorded), and what was learned. Text that came from an alert, a
journal or a model leaves through untrusted.py (invariant 9). A unit is reachable only
when the record names it and it is not protected (invariants 3, 12, 15).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from macha_obs.agent.tools import DiagnosticsRunner
from macha_obs.config import Config
from macha_obs.errors import InvalidInput
from macha_obs.intake.incidents import IncidentStore
from macha_obs.mcp.untrusted import untrusted
from macha_obs.models import (
    Action,
    Approval,
    ApprovalStatus,
    Incident,
    JournalTail,
    Snapshot,
    UnitStatus,
    describe_action,
)
from macha_obs.policy.judge import effective_autonomy
from macha_obs.policy.scope import Scope
from macha_obs.remediate.learn import history_line, learned, render_json
from macha_obs.remediate.pause import PauseBook
from macha_obs.remediate.remediator import Remediator
from macha_obs.store import Store
from macha_obs.store import incidents as tables

# The audit log's tail read for one incident's chain: enough for weeks of one host.
AUDIT_TAIL_BYTES = 4 * 1024 * 1024
MAX_CHAIN_RECORDS = 200
JOURNAL_MAX_LINES = 200

Snapshots = Callable[[], Snapshot | None]
LinkOf = Callable[[Approval], str | None]


class NotInRecord(InvalidInput):
    """The client named something the record does not hold (or may not reach)."""


class Facts:
    """The read-only questions, over the store, the remediator's judgement and the host."""

    def __init__(
        self,
        config: Config,
        store: Store,
        remediator: Remediator,
        *,
        snapshot: Snapshots,
        diagnostics: DiagnosticsRunner,
        link_of: LinkOf | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.remediator = remediator
        self.incidents = IncidentStore(store)
        self.snapshot = snapshot
        self.diagnostics = diagnostics
        self.link_of = link_of or (lambda _approval: None)

    # ------------------------------------------------------------ the sidecar

    def status(self) -> dict[str, Any]:
        breaker = self.remediator.breaker()
        now = self.store.clock()
        pause = PauseBook(self.store).current(now)
        snap = self.snapshot()
        return {
            "hostname": self.config.hostname,
            "autonomy": self.config.autonomy_level.value,
            "effective_autonomy": effective_autonomy(self.config, breaker).value,
            "breaker_open": breaker.open,
            "breaker_reason": breaker.reason,
            "paused": pause is not None,
            "pending_approvals": self.store.approvals.pending_count(),
            "open_incidents": len(tables.open_ids(self.store.db)),
            "findings": len(snap.findings) if snap is not None else None,
            "snapshot_age_seconds": round(now - snap.taken_at, 1) if snap else None,
        }

    # ------------------------------------------------------------ incidents

    def list_incidents(self, *, open_only: bool, limit: int) -> list[dict[str, Any]]:
        ids = (
            tables.open_ids(self.store.db) if open_only else tables.recent_ids(self.store.db, limit)
        )
        found = []
        for incident_id in ids[:limit]:
            state = self.incidents.get(incident_id)
            if state is not None:
                found.append(_incident_head(state.incident, state.status))
        return found

    def get_incident(self, incident_id: str) -> dict[str, Any]:
        """The whole chain: evidence, decisions, verdicts with reasons, intents,
        outcomes and verifications, in the order they were written."""
        state = self.incidents.get(incident_id)
        if state is None:
            raise NotInRecord(f"no incident {incident_id!r}; list_incidents shows the ids")
        incident = state.incident
        evidence = [_alert_line(a.status, a.labels, a.annotations) for a in incident.alerts]
        evidence += [f"finding {f.kind.value} {f.subject}: {f.summary}" for f in incident.findings]
        decisions = [
            _audited(record)
            for record in _audit_tail(self.store.audit.decisions_log)
            if record.get("incident_id") == incident_id
        ][-MAX_CHAIN_RECORDS:]
        actions = [
            {
                "action_id": r.id,
                "label": describe_action(r.action),
                "approval_id": r.approval_id,
                "status": r.status.value,
                "started_at": r.started_at.isoformat(),
                "finished_at": r.finished_at.isoformat() if r.finished_at else None,
                "verified": r.result.verified if r.result else None,
                "detail": untrusted([r.result.detail], source="executor") if r.result else None,
            }
            for r in reversed(self.store.ledger.list_actions(1000))
            if r.incident_id == incident_id
        ]
        approvals = [
            self.approval_brief(a)
            for a in self.store.approvals.list_approvals()
            if incident_id in (a.incident_ids or [a.incident_id])
        ]
        return {
            **_incident_head(incident, state.status),
            "revision": state.revision,
            "analyzed_revision": state.analyzed_revision,
            "evidence": untrusted(evidence, source="alerts and findings"),
            "decisions": decisions,
            "actions": actions,
            "approvals": approvals,
        }

    # ------------------------------------------------------------ the queue

    def list_approvals(self, *, include_decided: bool) -> list[dict[str, Any]]:
        self.store.approvals.expire_approvals()
        statuses = None if include_decided else {ApprovalStatus.PENDING}
        return [self.approval_brief(a) for a in self.store.approvals.list_approvals(statuses)]

    def approval(self, approval_id: int) -> Approval:
        found = self.store.approvals.get_approval(approval_id)
        if found is None:
            raise NotInRecord(f"no approval {approval_id}; list_approvals shows the ids")
        return found

    def get_approval(self, approval_id: int) -> dict[str, Any]:
        """One item as `macha-approve show` prints it, with its history and its link."""
        item = self.approval(approval_id)
        return {
            **self.approval_brief(item),
            "why": untrusted([item.reason], source="policy and proposal"),
            "evidence": untrusted(item.evidence, source="evidence"),
            "action": item.action.model_dump(mode="json", exclude={"diff"}),
            "history": history_line(self.store, item),
            "decided_by": item.decided_by or None,
            "note": untrusted([item.note], source="decision") if item.note else None,
            "approvals_page": self.link_of(item) if item.status is ApprovalStatus.PENDING else None,
        }

    def approval_brief(self, item: Approval) -> dict[str, Any]:
        return {
            "id": item.id,
            "status": item.status.value,
            "risk": item.risk.value,
            "label": describe_action(item.action),
            "incident_ids": item.incident_ids or [item.incident_id],
            "created_at": item.created_at.isoformat(),
            "expires_at": item.expires_at.isoformat(),
        }

    # ------------------------------------------------------------ the host

    def findings(self) -> dict[str, Any]:
        snap = self.snapshot()
        if snap is None:
            return {"snapshot": None, "findings": []}
        return {
            "taken_at": snap.taken_at,
            "failed_collectors": sorted(n for n, run in snap.collectors.items() if not run.success),
            "findings": [
                {
                    "kind": f.kind.value,
                    "severity": f.severity.value,
                    "subject": f.subject,
                    "unit": f.unit,
                    "summary": untrusted([f.summary], source="finding"),
                }
                for f in snap.findings
            ],
        }

    def recorded_units(self) -> set[str]:
        """The units the record names: open incidents, pending items, latest findings."""
        units: set[str] = set()
        for state in self.incidents.open_incidents():
            units.update(state.incident.units)
        for item in self.store.approvals.list_approvals({ApprovalStatus.PENDING}):
            if (unit := getattr(item.action, "unit", None)) is not None:
                units.add(unit)
        snap = self.snapshot()
        for finding in snap.findings if snap else []:
            if finding.unit:
                units.add(finding.unit)
        return units

    def reachable(self, unit: str) -> str:
        """`unit` when a client may look at it; else NotInRecord, saying why."""
        if self.config.is_protected(unit):
            raise NotInRecord(f"{unit} is protected: no tool reaches it")
        if unit not in self.recorded_units():
            raise NotInRecord(
                f"{unit} is not named by an open incident, a pending item or the latest "
                "findings: no tool reaches a unit outside the record"
            )
        return unit

    def unit_status(self, unit: str) -> dict[str, Any]:
        done = self.diagnostics.run(UnitStatus(unit=self.reachable(unit)))
        text = done.output if done.ok else (done.detail or "failed")
        return {"unit": unit, "ok": done.ok, "status": untrusted([text], source="systemd")}

    def unit_journal(self, unit: str, lines: int) -> dict[str, Any]:
        lines = max(1, min(lines, JOURNAL_MAX_LINES))
        done = self.diagnostics.run(JournalTail(unit=self.reachable(unit), lines=lines))
        text = done.output if done.ok else (done.detail or "failed")
        return {"unit": unit, "ok": done.ok, "journal": untrusted([text], source="journal")}

    # ------------------------------------------------------------ judgement

    def scope(self, incident_id: str) -> Scope:
        if self.incidents.get(incident_id) is None:
            raise NotInRecord(f"no incident {incident_id!r}; list_incidents shows the ids")
        return self.incidents.scope_of([incident_id])

    def explain_policy(self, incident_id: str, action: Action) -> dict[str, Any]:
        """What the policy would decide about `action` for this incident now, and why.
        Judged exactly as a proposal is (scope lock, systemd's state, limits, trust,
        suppression); nothing is recorded, queued or run."""
        seen = self.remediator.preview(incident_id, action, self.scope(incident_id))
        verdict, problem, suppressed = seen.verdict, seen.problem, seen.suppressed
        return {
            "action": describe_action(action),
            "outcome": verdict.outcome.value,
            "risk": verdict.risk.value,
            "autonomy": verdict.autonomy.value,
            "reason": verdict.reason,
            "rate_limited": verdict.rate_limited,
            "problem_confirmed": None if problem is None else problem.present,
            "problem": None if problem is None else problem.reason,
            "suppressed": None if suppressed is None else str(suppressed),
            "recorded": False,
        }

    def explain_approval(self, item: Approval) -> dict[str, Any]:
        """What approving `item` would do now: judged as an approval is (the scope lock
        and systemd's state again, limits, protection), recording nothing."""
        scope = self.incidents.scope_of(item.incident_ids or [item.incident_id])
        seen = self.remediator.preview(None, item.action, scope, approved=True)
        verdict, problem = seen.verdict, seen.problem
        return {
            "action": describe_action(item.action),
            "outcome": verdict.outcome.value,
            "reason": verdict.reason,
            "problem_confirmed": None if problem is None else problem.present,
            "recorded": False,
        }

    def learned(self) -> dict[str, Any]:
        return render_json(learned(self.store.outcomes, self.config))


def _incident_head(incident: Incident, status: str) -> dict[str, Any]:
    return {
        "id": incident.id,
        "status": status,
        "source": incident.source,
        "opened_at": incident.opened_at.isoformat(),
        "units": incident.units,
        "alerts": len(incident.alerts),
        "findings": [f.key for f in incident.findings],
    }


def _alert_line(status: str, labels: dict[str, str], annotations: dict[str, str]) -> str:
    named = " ".join(f"{k}={v}" for k, v in sorted(labels.items()))
    said = " ".join(f"{k}: {v}" for k, v in sorted(annotations.items()))
    return f"alert {status} {named} {said}".rstrip()


# Fields of an audit record that carry text from an alert, a journal or a model.
_UNTRUSTED_FIELDS = ("reason", "summary", "root_cause", "proposed_because", "error", "detail")


def _audited(record: dict[str, Any]) -> dict[str, Any]:
    shown = {k: v for k, v in record.items() if k not in _UNTRUSTED_FIELDS}
    for key in _UNTRUSTED_FIELDS:
        if isinstance(record.get(key), str) and record[key]:
            shown[key] = untrusted([record[key]], source=f"audit {key}")
    if isinstance(shown.get("proposals"), list):  # a decision's proposals: labels only
        shown["proposals"] = [
            p.get("action", {}).get("kind") for p in shown["proposals"] if isinstance(p, dict)
        ]
    return shown


def _audit_tail(path: Path) -> list[dict[str, Any]]:
    """The records of the audit log's last AUDIT_TAIL_BYTES, never through a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return []
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(max(0, size - AUDIT_TAIL_BYTES))
        data = fh.read(AUDIT_TAIL_BYTES)
    records = []
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a torn first line
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
