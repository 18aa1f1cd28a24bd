"""Read-only investigation tools for the agent loop: the executor's allowlisted diagnostics.

The model names a tool and a unit; this module validates that into a `Diagnostic` (the
same typed allowlist as the `investigate` action) and runs it through an injected
runner, so no new command can appear here. An identical repeated call is refused with a
result that tells the model what to do instead (a small model otherwise repeats itself).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import ValidationError

from macha_obs.agent.prompt import clean_line, estimate_tokens, fence
from macha_obs.agent.schema import LlmToolCall, to_diagnostic
from macha_obs.models import Diagnostic, ExecutionResult, InvalidUnitName

log = logging.getLogger(__name__)


class DiagnosticsRunner(Protocol):
    """What `macha_obs.execute.diagnostics.Diagnostics` offers; injected by the caller."""

    def run(self, diag: Diagnostic) -> ExecutionResult: ...


@dataclass(frozen=True)
class ToolResult:
    call: str
    status: Literal["ok", "error", "refused"]
    output: str
    duration_seconds: float = 0.0

    def render(self) -> str:
        return f"{self.call} → {self.status}\n" + fence(self.call, self.output.splitlines())


def describe_call(call: LlmToolCall) -> str:
    return f"{call.tool}({call.unit})" if call.unit else f"{call.tool}()"


class ToolSession:
    """The tools of one analysis: remembers what was called, bounds every output."""

    def __init__(
        self,
        diagnostics: DiagnosticsRunner,
        *,
        token_limit: int = 250,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.diagnostics = diagnostics
        self.token_limit = token_limit
        self.clock = clock
        self.seen: set[str] = set()
        self.results: list[ToolResult] = []

    def invoke(self, call: LlmToolCall) -> ToolResult:
        result = self._invoke(call)
        log.info("tool %s: %s (%.2fs)", result.call, result.status, result.duration_seconds)
        self.results.append(result)
        return result

    def _invoke(self, call: LlmToolCall) -> ToolResult:
        name = describe_call(call)
        try:
            diag = to_diagnostic(call)
        except (InvalidUnitName, ValidationError) as exc:
            return ToolResult(
                name,
                "error",
                f"invalid arguments ({str(exc)[:200]}); {call.tool} needs a systemd unit name "
                "from the incident, such as nginx.service",
            )
        key = diag.model_dump_json()
        if key in self.seen:
            return ToolResult(
                name,
                "refused",
                "already called with these arguments; its result is above. Call a different "
                "tool or conclude.",
            )
        self.seen.add(key)
        start = self.clock()
        try:
            done = self.diagnostics.run(diag)
        except Exception as exc:  # a tool failure is a result for the model, not a crash
            return ToolResult(name, "error", f"failed: {type(exc).__name__}", self.clock() - start)
        text = done.output if done.ok else (done.detail or "failed")
        return ToolResult(
            name, "ok" if done.ok else "error", self._bound(text), self.clock() - start
        )

    def _bound(self, text: str) -> str:
        """Clean each line; keep the newest lines within the limit (logs end with news)."""
        lines = text.splitlines()
        kept: list[str] = []
        used = 0
        for raw in reversed(lines):
            line = clean_line(raw)
            cost = estimate_tokens(line)
            if used + cost > self.token_limit:
                kept.append(f"[{len(lines) - len(kept)} earlier lines left out]")
                break
            kept.append(line)
            used += cost
        return "\n".join(reversed(kept))
