"""A third-party client: the MCP Inspector from npm, in its command-line mode, against the
running daemon's /mcp: it lists the tools and calls status and get_incident. The server
speaks the protocol as others read it, not only as our SDK does.

`./macha-dev test` installs the pinned Inspector into .cache/npm (project-local).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from macha_obs.intake.token import read_token
from tests.harness.daemon_support import Daemon
from tests.harness.labsd import LabSystemd
from tests.harness.real import unavailable
from tests.harness.sidecar_support import broken
from tests.harness.systemd_fixtures import UnitFactory
from tests.test_mcp import incident_of

pytestmark = [pytest.mark.systemd]

PROJECT = Path(__file__).resolve().parents[1]
INSPECTOR = PROJECT / ".cache" / "npm" / "node_modules" / ".bin" / "mcp-inspector"


def inspector(daemon: Daemon, *args: str) -> Any:
    token = read_token(daemon.token_file)
    done = subprocess.run(
        [
            str(INSPECTOR),
            "--cli",
            f"{daemon.url}/mcp",
            "--transport",
            "http",
            "--header",
            f"Authorization: Bearer {token}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout)


def test_the_mcp_inspector_lists_the_tools_and_reads_an_incident(
    systemd_container: LabSystemd, unit_factory: UnitFactory, daemons: Callable[..., Daemon]
) -> None:
    if not INSPECTOR.exists():
        unavailable("the MCP Inspector is not installed (./macha-dev test installs it)")
    unit = broken(systemd_container, unit_factory, "mcp-inspected")
    daemon = daemons(autonomy_level="suggest")
    incident_id = incident_of(daemon, unit)
    listed = inspector(daemon, "--method", "tools/list")
    tools = {t["name"]: t for t in listed["tools"]}
    assert {"status", "get_incident", "propose_action", "approve"} <= set(tools)
    assert tools["status"]["annotations"]["readOnlyHint"] is True
    assert tools["approve"]["annotations"]["readOnlyHint"] is False
    status = inspector(daemon, "--method", "tools/call", "--tool-name", "status")
    assert not status.get("isError")
    assert status["structuredContent"]["autonomy"] == "suggest"
    chain = inspector(
        daemon,
        "--method",
        "tools/call",
        "--tool-name",
        "get_incident",
        "--tool-arg",
        f"incident_id={incident_id}",
    )
    assert not chain.get("isError"), chain
    assert chain["structuredContent"]["id"] == incident_id
    assert unit in chain["structuredContent"]["units"]
