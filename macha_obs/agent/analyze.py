"""Incident → Decision: runbooks, the model (with a bounded tool loop), or both.

Whatever happens, a decision comes out: a model that is down, slow or answers outside
the schema gives assessment "unknown" with the runbooks' proposals (invariant 8), and
every decision is appended to the decision log with what produced it (invariant 10).
What people decided about the same problems before (`history`, agent/history.py) orders
the runbooks' proposals and is summarised in the model's prompt.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from macha_obs.agent.history import History, history_lines, no_history
from macha_obs.agent.llm import ChatClient, LlmError
from macha_obs.agent.prompt import (
    TOKEN_BUDGET,
    PromptContext,
    build_prompt,
    system_message,
    template,
)
from macha_obs.agent.runbooks import runbook_decision, runbook_proposals
from macha_obs.agent.schema import (
    LlmDecision,
    LlmStep,
    OutputInvalid,
    output_hash,
    parse_output,
    to_proposals,
    wire_schema,
)
from macha_obs.agent.tools import DiagnosticsRunner, ToolSession, describe_call
from macha_obs.config import AnalysisMode
from macha_obs.models import (
    UNIT_ACTIONS,
    Assessment,
    Decision,
    DecisionSource,
    Incident,
    Proposal,
    Severity,
    utcnow,
)

log = logging.getLogger(__name__)

Audit = Callable[[Mapping[str, Any]], None]
_TOOL_SHARE = 1000  # tokens of the budget kept for tool results when tools are offered


@dataclass
class _Run:
    """What one model conversation cost and saw, for the decision and its log line."""

    latency: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    prompt_hash: str = ""
    raw_hash: str = ""
    steps: int = 0
    tool_calls: list[str] = field(default_factory=list)


def unit_fixes_missing(decision: Decision, runbooks: Decision) -> list[Proposal]:
    """The runbooks' unit fixes (restart/start/reset-failed) for units the model's
    proposals do not act on at all. Pure."""
    acted_on = {p.action.unit for p in decision.proposals if isinstance(p.action, UNIT_ACTIONS)}
    return [
        p
        for p in runbooks.proposals
        if isinstance(p.action, UNIT_ACTIONS) and p.action.unit not in acted_on
    ]


class Analyzer:
    def __init__(
        self,
        *,
        mode: AnalysisMode,
        client: ChatClient | None,
        hostname: str,
        diagnostics: DiagnosticsRunner | None = None,
        max_steps: int = 3,
        audit: Audit | None = None,
        now: Callable[[], datetime] = utcnow,
        budget: int = TOKEN_BUDGET,
        config_files: Sequence[str] = (),
        history: History = no_history,
    ) -> None:
        """`config_files`: the files under nixos_config_dir a config_change may patch
        (read once at start; the check before queueing reads the file itself again).
        `history`: the learning record's per-fix counts for a problem signature."""
        self.mode = mode
        self.client = client
        self.hostname = hostname
        self.diagnostics = diagnostics
        self.max_steps = max_steps if diagnostics is not None else 1
        self.audit = audit
        self.now = now
        self.budget = budget
        self.config_files = tuple(config_files)
        self.history = history
        self.llm_calls = 0

    def runbooks(self, incident: Incident, unit_status: Mapping[str, str], **kw: str) -> Decision:
        """The runbooks' decision, ordered by what has worked on this host."""
        return runbook_decision(incident, unit_status=unit_status, history=self.history, **kw)

    def context(
        self,
        incident: Incident,
        *,
        unit_status: Mapping[str, str] | None = None,
        journals: Mapping[str, Sequence[str]] | None = None,
        past: bool = True,
    ) -> PromptContext:
        """What the model's first prompt for `incident` is built from (build_prompt);
        with `past`, the summary of past decisions about its problems (read only when
        the model is asked: the record is in the store)."""
        status = unit_status or {}
        ctx = PromptContext(
            incident=incident,
            hostname=self.hostname,
            now=self.now(),
            unit_status=status,
            journals=journals or {},
            steps_left=self.max_steps,
            budget=self.budget - (_TOOL_SHARE if self.max_steps > 1 else 0),
            config_files=self.config_files,
        )
        return self._with_history(ctx) if past else ctx

    def _with_history(self, ctx: PromptContext) -> PromptContext:
        proposals, _ = runbook_proposals(ctx.incident, ctx.unit_status)
        return replace(ctx, history=history_lines(ctx.incident, proposals, self.history))

    def analyze(
        self,
        incident: Incident,
        *,
        unit_status: Mapping[str, str] | None = None,
        journals: Mapping[str, Sequence[str]] | None = None,
    ) -> Decision:
        ctx = self.context(incident, unit_status=unit_status, journals=journals, past=False)
        decision, run, flags = self._decide(incident, ctx)
        if self.audit is not None:
            record = decision.model_dump(mode="json")
            record.update(
                event="decision",
                untrusted_flags=flags,
                steps=run.steps,
                tool_calls=run.tool_calls,
            )
            self.audit(record)
        return decision

    def _decide(self, incident: Incident, ctx: PromptContext) -> tuple[Decision, _Run, list[str]]:
        run = _Run()
        if self.mode is AnalysisMode.RUNBOOKS_ONLY or self.client is None:
            return self.runbooks(incident, ctx.unit_status), run, []
        if self.mode is AnalysisMode.RUNBOOKS_FIRST:
            fast = self.runbooks(incident, ctx.unit_status)
            if fast.assessment is not Assessment.UNKNOWN and fast.proposals:
                return fast, run, []
        prompt = build_prompt(self._with_history(ctx))
        run.prompt_hash = prompt.hash
        client = self.client
        try:
            decision = self._converse(client, incident, prompt.messages, run)
        except (LlmError, OutputInvalid) as exc:
            log.warning("analysis of %s fell back to runbooks: %s", incident.id, exc)
            error = f"{type(exc).__name__}: {exc}"
            decision = self.runbooks(
                incident, ctx.unit_status, error=error, raw_output_hash=run.raw_hash
            )
        meta = {
            "backend": client.backend,
            "model": client.model,
            "latency_seconds": round(run.latency, 3),
            "tokens_in": run.tokens_in,
            "tokens_out": run.tokens_out,
            "prompt_hash": run.prompt_hash,
        }
        if decision.source is DecisionSource.RUNBOOKS:
            meta["backend"] = f"runbooks (after {client.backend})"
        else:
            added = unit_fixes_missing(decision, self.runbooks(incident, ctx.unit_status))
            if added:
                # A well-formed answer that leaves a failed unit alone is no reason to
                # leave it failed: the runbooks' fix joins (and the policy still judges).
                meta["backend"] = f"{client.backend} + runbooks"
                meta["proposals"] = [*decision.proposals, *added][:5]
        return decision.model_copy(update=meta), run, prompt.flags

    def _converse(
        self,
        client: ChatClient,
        incident: Incident,
        messages: list[dict[str, str]],
        run: _Run,
    ) -> Decision:
        session = ToolSession(self.diagnostics) if self.diagnostics is not None else None
        if session is not None and self.max_steps > 1:
            # two calls a step, every step but the last: together within the tools' share
            session.token_limit = _TOOL_SHARE // (2 * (self.max_steps - 1)) - 20
        for step in range(self.max_steps):
            last = step == self.max_steps - 1 or session is None
            if last and step > 0:  # no tools offered on the last step
                messages = [
                    {
                        "role": "system",
                        "content": system_message(self.hostname, self.now(), 1, self.config_files),
                    },
                    *messages[1:],
                ]
            model: type[LlmDecision] = LlmDecision if last else LlmStep
            reply = client.chat(messages, wire_schema(model))
            self.llm_calls += 1
            run.steps += 1
            run.latency += reply.duration_seconds
            run.tokens_in += reply.tokens_in
            run.tokens_out += reply.tokens_out
            run.raw_hash = output_hash(reply.content)
            try:
                parsed = parse_output(reply.content, model)
            except OutputInvalid as exc:
                why = (
                    f" (stopped: {reply.finish_reason})" if reply.finish_reason == "length" else ""
                )
                raise OutputInvalid(f"{exc}{why}") from exc
            calls = parsed.tool_calls if isinstance(parsed, LlmStep) else []
            if calls and session is not None and not last:
                results = [session.invoke(c) for c in calls]
                run.tool_calls += [describe_call(c) for c in calls]
                asked = {"tool_calls": [c.model_dump() for c in calls]}
                messages = [
                    *messages,
                    {"role": "assistant", "content": json.dumps(asked)},
                    {
                        "role": "user",
                        "content": template("tool_results.txt").substitute(
                            results="\n".join(r.render() for r in results)
                        ),
                    },
                ]
                continue
            if parsed.assessment == "healthy" and _still_wrong(incident):
                # monitoring says otherwise; a model (or a log line talking to it) cannot
                # overrule a firing alert
                raise OutputInvalid("the model called the host healthy while the incident is open")
            return Decision(
                incident_id=incident.id,
                assessment=Assessment(parsed.assessment),
                summary=parsed.summary,
                severity=Severity(parsed.severity),
                root_cause=parsed.root_cause,
                confidence=parsed.confidence,
                proposals=to_proposals(parsed),
                source=DecisionSource.LLM,
                raw_output_hash=run.raw_hash,
            )
        raise OutputInvalid("no conclusion within the step limit")  # pragma: no cover


def _still_wrong(incident: Incident) -> bool:
    return bool(incident.findings) or any(a.firing for a in incident.alerts)
