"""How many MCP requests were answered, by tool and result (`macha_mcp_requests_total`).

The labels come from fixed sets: a tool outside TOOLS counts as "other", and a request
refused before any tool ran (no token, a foreign Origin, too large) as tool "none".
"""

from __future__ import annotations

import threading

TOOLS = (
    "status",
    "list_incidents",
    "get_incident",
    "list_approvals",
    "get_approval",
    "findings",
    "unit_status",
    "unit_journal",
    "explain_policy",
    "learned",
    "propose_action",
    "approve",
    "reject",
)
# ok: answered; refused: outside the record or the policy's reach; unconfirmed: a change
# no person confirmed (nothing done); error: failed; unauthorized/forbidden/invalid: the
# listener refused the HTTP request (no token; a foreign Host or Origin; malformed)
RESULTS = ("ok", "refused", "unconfirmed", "error", "unauthorized", "forbidden", "invalid")


class McpStats:
    """Thread-safe counters over the fixed label sets; read by metrics/mcp.py."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def count(self, tool: str, result: str) -> None:
        if tool != "none" and tool not in TOOLS:
            tool = "other"
        if result not in RESULTS:
            result = "error"
        with self._lock:
            self._counts[(tool, result)] = self._counts.get((tool, result), 0) + 1

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)
