"""Fakes on the two seams the remediator and the orchestrator reach out through.

`RecordingExecutor` stands in for the host executor (the executor seam): it keeps each
unit's state in a dict, records every look-up and action, and a restart or start makes
the unit active when the test says fixes hold. `BlockedChat` stands in for the model
server (the network boundary): every answer waits until the test releases it, so a
test can prove what happens while a model call is in flight without measuring time.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from macha_obs.agent.llm import ChatReply
from macha_obs.models import UNIT_ACTIONS, Action, ExecutionResult, UnitState


class RecordingExecutor:
    """The executor seam without a host. Units not named are `failed`."""

    def __init__(self, states: Mapping[str, str] | None = None, *, holds: bool = True) -> None:
        """`states`: unit → active state; `holds`: a unit fix works and stays working."""
        self.states: dict[str, str] = dict(states or {})
        self.holds = holds
        self.ran: list[Action] = []
        self.looked_up: list[str] = []
        self._lock = threading.Lock()

    def unit_state(self, unit: str) -> UnitState:
        with self._lock:
            self.looked_up.append(unit)
            active = self.states.get(unit, "failed")
        sub = {"active": "running", "failed": "failed", "activating": "auto-restart"}
        return UnitState(
            name=unit, load_state="loaded", active_state=active, sub_state=sub.get(active, "dead")
        )

    def run(self, action: Action) -> ExecutionResult:
        with self._lock:
            self.ran.append(action)
            if isinstance(action, UNIT_ACTIONS) and self.holds:
                self.states[action.unit] = "active"
        if self.holds:
            return ExecutionResult(ok=True, verified=True, detail="recorded: active")
        return ExecutionResult(ok=True, verified=False, detail="recorded: failed again")

    def fixed(self, unit: str) -> bool:
        with self._lock:
            return any(getattr(a, "unit", None) == unit for a in self.ran)


class BlockedChat:
    """A model whose every answer waits for `release`; `asked` is set once it is asked."""

    backend = "blocked"
    model = "test-model"

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.asked = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def chat(self, messages: Sequence[Mapping[str, str]], schema: Mapping[str, Any]) -> ChatReply:
        self.calls += 1
        self.asked.set()
        if not self.release.wait(timeout=60):
            raise TimeoutError("the test never released the model")
        return ChatReply(self.answer, tokens_in=100, tokens_out=20, duration_seconds=0.0)

    def check(self) -> None:
        pass
