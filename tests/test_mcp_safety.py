"""The safety invariants through the MCP door, against the real daemon on the lab systemd:
a client cannot reach a protected or out-of-scope unit (3, 12), what it reads of logs and
alerts is redacted and marked untrusted (9), the injection corpus gets nothing queued or
run, and a session that ends while a person is being asked leaves the item pending (15).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from macha_obs.models import ApprovalStatus
from tests.harness.daemon_support import Daemon
from tests.harness.labsd import LabSystemd
from tests.harness.mcp_client import data, http_session
from tests.harness.sidecar_support import broken
from tests.harness.stack import poll
from tests.harness.systemd_fixtures import UnitFactory
from tests.test_injection import INJECTION
from tests.test_mcp import incident_of

pytestmark = [pytest.mark.systemd]

SECRETS = ["Sup3rS3cretPassw0rd", "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"]
LEAKY = "[Service]\nType=oneshot\nExecStart=/bin/sh -c '{lines}; exit 1'\n"


def leaky_unit(lab: LabSystemd, unit_factory: UnitFactory, name: str) -> str:
    """A service that logs planted secrets and the injection corpus, then fails."""
    said = [f"password={SECRETS[0]}", f"token {SECRETS[1]}", *INJECTION]
    lines = "; ".join("echo " + json.dumps(line).replace("'", "") for line in said)
    unit = unit_factory(f"{name}.service", LEAKY.format(lines=lines.replace("%", "%%")))
    lab.run("systemctl", "start", unit, check=False)
    lab.wait_for_state(unit, "failed")
    return unit


def bystander(lab: LabSystemd, unit_factory: UnitFactory, name: str) -> str:
    unit = unit_factory(f"{name}.service", "[Service]\nExecStart=/bin/sleep infinity\n")
    lab.run("systemctl", "start", unit)
    lab.wait_for_state(unit, "active")
    return unit


def test_invariant_12_a_client_cannot_reach_a_protected_or_out_of_scope_unit(
    systemd_container: LabSystemd, unit_factory: UnitFactory, daemons: Callable[..., Daemon]
) -> None:
    lab = systemd_container
    failed = broken(lab, unit_factory, "mcp-scope")
    healthy = bystander(lab, unit_factory, "mcp-bystander")
    daemon = daemons(autonomy_level="suggest")
    incident_id = incident_of(daemon, failed)
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with http_session(daemon) as session:
            for unit in ("sshd.service", "dbus.service", healthy, "macha-autonomous.service"):
                for tool in ("unit_status", "unit_journal"):
                    seen[f"{tool} {unit}"] = await session.call_tool(tool, {"unit": unit})
                for kind in ("restart_unit", "start_unit"):
                    action = {"kind": kind, "unit": unit}
                    args = {"incident_id": incident_id, "action": action}
                    seen[f"explain {kind} {unit}"] = data(
                        await session.call_tool("explain_policy", args)
                    )
                    seen[f"propose {kind} {unit}"] = data(
                        await session.call_tool("propose_action", args)
                    )
            free_form = {"kind": "run", "command": "systemctl stop sshd"}
            seen["free form"] = await session.call_tool(
                "propose_action", {"incident_id": incident_id, "action": free_form}
            )
            config = {"kind": "config_change", "path": "/etc/nixos/x.nix", "diff": "+x"}
            seen["config"] = await session.call_tool(
                "propose_action", {"incident_id": incident_id, "action": config}
            )

    anyio.run(main)
    for key, answer in seen.items():
        if key.startswith(("unit_status", "unit_journal")):
            assert answer.isError, key
            text = answer.content[0].text
            assert "protected" in text or "outside the record" in text, (key, text)
        elif key.startswith(("explain", "propose")):
            assert answer["outcome"] == "refuse", (key, answer)
            assert answer.get("approval_id") is None, (key, answer)
    assert seen["free form"].isError
    assert seen["config"].isError
    acted = {r.action.target for r in daemon.actions()}
    assert acted == set(), acted
    queued = {a.action.target for a in daemon.approvals()}
    assert queued <= {failed}, queued
    assert lab.unit_state(healthy)[0] == "active"


def test_invariant_9_journal_and_alert_text_reach_a_client_redacted_and_untrusted(
    systemd_container: LabSystemd, unit_factory: UnitFactory, daemons: Callable[..., Daemon]
) -> None:
    lab = systemd_container
    unit = leaky_unit(lab, unit_factory, "mcp-leaky")
    daemon = daemons(autonomy_level="suggest")
    incident_id = incident_of(daemon, unit)
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with http_session(daemon) as session:
            seen["journal"] = data(
                await session.call_tool("unit_journal", {"unit": unit, "lines": 50})
            )
            seen["chain"] = data(
                await session.call_tool("get_incident", {"incident_id": incident_id})
            )
            seen["findings"] = data(await session.call_tool("findings", {}))
            restart = {"kind": "restart_unit", "unit": "sshd.service"}
            seen["obeyed"] = data(
                await session.call_tool(
                    "propose_action",
                    {"incident_id": incident_id, "action": restart, "reason": INJECTION[0]},
                )
            )

    anyio.run(main)
    journal = seen["journal"]["journal"]
    assert journal["untrusted"] is True
    text = "\n".join(journal["lines"])
    assert "IGNORE ALL PREVIOUS INSTRUCTIONS" in text  # shown, as data
    assert {"ignore-instructions", "pipe-to-shell", "foreign-flake"} <= set(journal["flags"])
    everything = json.dumps(seen)
    for secret in SECRETS:
        assert secret not in everything
    assert seen["chain"]["evidence"]["untrusted"] is True
    assert seen["obeyed"]["outcome"] == "refuse"
    assert not [a for a in daemon.approvals() if a.action.target == "sshd.service"]
    assert not [r for r in daemon.actions() if r.action.target != unit]


def test_invariant_15_a_session_that_ends_while_a_person_is_asked_leaves_the_item_pending(
    systemd_container: LabSystemd, unit_factory: UnitFactory, daemons: Callable[..., Daemon]
) -> None:
    lab = systemd_container
    unit = broken(lab, unit_factory, "mcp-gone")
    daemon = daemons(autonomy_level="suggest")
    assert poll(lambda: any(a.action.target == unit for a in daemon.approvals()), 60)
    item = next(a for a in daemon.approvals() if a.action.target == unit)

    async def main() -> None:
        asked = anyio.Event()

        async def never_answers(context: Any, params: Any) -> Any:
            del context, params
            asked.set()
            await anyio.sleep_forever()

        # the person is being asked when the call is cancelled and the session closed
        async with (
            http_session(daemon, elicit=never_answers) as session,
            anyio.create_task_group() as group,
        ):

            async def call() -> None:
                await session.call_tool("approve", {"approval_id": item.id})

            group.start_soon(call)
            await asked.wait()
            group.cancel_scope.cancel()

    anyio.run(main)

    def settled() -> bool:
        return any(
            r.get("event") == "conversation_call" and r.get("approval_id") == item.id
            for r in daemon.audit("decisions.jsonl")
        )

    assert poll(settled, 60), daemon.log_tail()
    after = next(a for a in daemon.approvals() if a.id == item.id)
    assert after.status is ApprovalStatus.PENDING
    assert not [r for r in daemon.actions(unit) if r.approval_id == item.id]
    assert lab.unit_state(unit)[0] == "failed"
