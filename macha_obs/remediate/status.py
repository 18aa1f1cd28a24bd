"""What the sidecar is doing, as one view: autonomy, breaker, pause, queue, last cycle.

`macha-obs status` prints it and the MCP `status` tool returns it; both read it here,
from the store, so the two can never disagree. The record of the last cycle is this
room's too: the orchestrator hands its cycle report to `note_cycle`, and the view reads
it back (a damaged record is shown as unreadable, never a traceback).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from macha_obs.config import Config
from macha_obs.models import Approval, ApprovalStatus, describe_action
from macha_obs.policy.judge import BreakerState, Pause, effective_autonomy
from macha_obs.remediate.pause import PauseBook
from macha_obs.remediate.verify import Breaker
from macha_obs.store import Store

LAST_CYCLE_KEY = "last_cycle"


class MetaStore(Protocol):
    def set_meta(self, key: str, value: str) -> None: ...


def note_cycle(store: MetaStore, summary: dict[str, Any]) -> None:
    """The last cycle, for `status` (one record, overwritten each cycle)."""
    store.set_meta(LAST_CYCLE_KEY, json.dumps(summary))


@dataclass(frozen=True)
class Status:
    configured: str
    effective: str
    breaker: BreakerState
    pause: Pause | None
    pending: list[Approval]
    last_cycle: Any  # the orchestrator's JSON record, {"unreadable": raw}, or None


def status_of(cfg: Config, store: Store) -> Status:
    """The view now: expired items are expired first, as every reader of the queue does."""
    store.approvals.expire_approvals()
    breaker = Breaker(cfg, store).state()
    return Status(
        configured=cfg.autonomy_level.value,
        effective=effective_autonomy(cfg, breaker).value,
        breaker=breaker,
        pause=PauseBook(store).current(store.clock()),
        pending=store.approvals.list_approvals({ApprovalStatus.PENDING}),
        last_cycle=_meta_json(store.meta.get_meta(LAST_CYCLE_KEY)),
    )


def approval_json(approval: Approval) -> dict[str, Any]:
    """One queue item as tools read it (`macha-approve list --json`, status, MCP)."""
    return approval.model_dump(mode="json") | {"label": describe_action(approval.action)}


def status_json(status: Status) -> dict[str, Any]:
    """The view as JSON (`status --json`, the MCP `status` tool)."""
    pause = status.pause
    return {
        "autonomy": {"configured": status.configured, "effective": status.effective},
        "breaker": {
            "open": status.breaker.open,
            "failures": status.breaker.failures,
            "reason": status.breaker.reason,
        },
        "pause": None
        if pause is None
        else {
            "since": pause.since.isoformat(),
            "until": pause.until.isoformat() if pause.until else None,
            "reason": pause.reason,
            "by": pause.by,
        },
        "approvals_pending": [approval_json(a) for a in status.pending],
        "last_cycle": status.last_cycle,
    }


def _meta_json(raw: str | None) -> Any:
    """A JSON value the daemon keeps in the store; a damaged one is shown, not a traceback."""
    try:
        return json.loads(raw or "null")
    except ValueError:
        return {"unreadable": raw}
