"""The MCP server with the official SDK's own client, over HTTP and stdio, against the
real daemon on the lab systemd (invariants 12, 15 and 5 through a new door).

A unit fails; the client lists the incident, reads its chain, asks explain_policy,
proposes a restart (queued: suggest); approving without a person's confirmation
changes nothing and returns the item's approvals-page link; approving with a person who
confirms executes it once, audited with the client and the door.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import requests

from macha_obs.intake.incidents import IncidentStore
from macha_obs.models import ActionStatus, ApprovalStatus
from tests.harness.daemon_support import Daemon
from tests.harness.labsd import LabSystemd
from tests.harness.mcp_client import data, http_session, person, stdio_session
from tests.harness.sidecar_support import broken
from tests.harness.stack import poll
from tests.harness.systemd_fixtures import UnitFactory

pytestmark = [pytest.mark.systemd]


def incident_of(daemon: Daemon, unit: str) -> str:
    """The open incident naming `unit`, once the daemon has opened it."""
    found: list[str] = []

    def named() -> bool:
        with daemon.store() as store:
            found[:] = [
                s.incident.id
                for s in IncidentStore(store).open_incidents()
                if unit in s.incident.units
            ]
        return bool(found)

    assert poll(named, 60), daemon.log_tail()
    return found[0]


def _walk(session_of: Callable[..., Any], daemon: Daemon, unit: str) -> dict[str, Any]:
    """The whole conversation; what each step answered."""
    seen: dict[str, Any] = {}
    restart = {"kind": "restart_unit", "unit": unit}

    async def main() -> None:
        async with session_of(daemon) as session:
            tools = {t.name: t for t in (await session.list_tools()).tools}
            seen["tools"] = tools
            incidents = data(await session.call_tool("list_incidents", {}))
            seen["incidents"] = incidents
            incident_id = next(i["id"] for i in incidents if unit in i["units"])
            seen["incident_id"] = incident_id
            seen["chain"] = data(
                await session.call_tool("get_incident", {"incident_id": incident_id})
            )
            args = {"incident_id": incident_id, "action": restart}
            seen["explained"] = data(await session.call_tool("explain_policy", args))
            seen["proposed"] = data(
                await session.call_tool("propose_action", {**args, "reason": "it failed"})
            )
            approval_id = seen["proposed"]["approval_id"]
            seen["unconfirmed"] = data(
                await session.call_tool("approve", {"approval_id": approval_id})
            )
        asked: list[str] = []
        async with session_of(daemon, elicit=person(False, asked)) as session:
            seen["declined"] = data(
                await session.call_tool("approve", {"approval_id": approval_id})
            )
        async with session_of(daemon, elicit=person(True, asked)) as session:
            seen["approved"] = data(
                await session.call_tool("approve", {"approval_id": approval_id})
            )
            seen["again"] = await session.call_tool("approve", {"approval_id": approval_id})
        seen["asked"] = asked

    anyio.run(main)
    return seen


def _check(seen: dict[str, Any], daemon: Daemon, unit: str, client: str, door: str) -> None:
    tools = seen["tools"]
    assert tools["status"].annotations.readOnlyHint is True
    assert tools["get_incident"].annotations.readOnlyHint is True
    assert tools["approve"].annotations.readOnlyHint is False
    chain = seen["chain"]
    assert chain["evidence"]["untrusted"] is True
    assert any(d.get("event") == "verdict" for d in chain["decisions"]), chain
    assert seen["explained"]["outcome"] == "queue"
    assert seen["explained"]["recorded"] is False
    proposed = seen["proposed"]
    assert proposed["outcome"] == "queue", proposed
    approval_id = proposed["approval_id"]
    # the plain page: it asks for a login, it decides nothing by itself (issue 20)
    assert proposed["approvals_page"] == f"{daemon.url}/approvals/{approval_id}"
    # without a person's confirmation: nothing happens, the link comes back
    for answer in (seen["unconfirmed"], seen["declined"]):
        assert answer["done"] is False, answer
        assert answer["status"] == "pending", answer
        assert answer["approvals_page"] == f"{daemon.url}/approvals/{approval_id}"
    assert seen["asked"]
    assert "APPROVE" in seen["asked"][0]
    approved = seen["approved"]
    assert approved["status"] == "executed", approved
    assert approved["decided_by"] == f"mcp:{client} (confirmed by a person)"
    assert seen["again"].isError  # approving twice executes once (invariant 5)
    runs = [r for r in daemon.actions(unit) if r.approval_id == approval_id]
    assert len(runs) == 1
    assert runs[0].status is ActionStatus.SUCCEEDED
    item = next(a for a in daemon.approvals() if a.id == approval_id)
    assert item.status is ApprovalStatus.EXECUTED
    assert item.decided_by == f"mcp:{client} (confirmed by a person)"
    calls = [r for r in daemon.audit("decisions.jsonl") if r.get("event") == "conversation_call"]
    assert {(r["call"], r["transport"], r["client"]) for r in calls} >= {
        ("propose_action", door, client),
        ("approve", door, client),
    }
    assert [r["status"] for r in calls if r["call"] == "approve"] == [
        "unconfirmed",
        "unconfirmed",
        "executed",
    ]


def test_invariant_15_http_client_reads_proposes_and_approves_only_with_a_person(
    systemd_container: LabSystemd, unit_factory: UnitFactory, daemons: Callable[..., Daemon]
) -> None:
    lab = systemd_container
    unit = broken(lab, unit_factory, "mcp-http")
    daemon = daemons(autonomy_level="suggest")
    incident_of(daemon, unit)
    started = time.monotonic()
    seen = _walk(http_session, daemon, unit)
    assert time.monotonic() - started < 120
    _check(seen, daemon, unit, "lab-client", "http")
    lab.wait_for_state(unit, "active")
    text = requests.get(f"{daemon.url}/metrics", timeout=5).text
    assert 'macha_mcp_requests_total{result="ok",tool="get_incident"} 1.0' in text
    assert 'macha_mcp_requests_total{result="unconfirmed",tool="approve"} 2.0' in text


def test_invariant_15_stdio_client_reads_proposes_and_approves_only_with_a_person(
    systemd_container: LabSystemd, unit_factory: UnitFactory, daemons: Callable[..., Daemon]
) -> None:
    lab = systemd_container
    unit = broken(lab, unit_factory, "mcp-stdio")
    daemon = daemons(autonomy_level="suggest")
    incident_of(daemon, unit)
    seen = _walk(stdio_session, daemon, unit)
    _check(seen, daemon, unit, "lab-stdio", "stdio")
    lab.wait_for_state(unit, "active")
