"""Idle memory (README "Idle cost"): what the daemon loads only when something asks for it.

The MCP SDK and what it pulls in (starlette, uvicorn, httpx, jsonschema, anyio, asyncio)
were most of an idle sidecar's memory while no assistant talked to it. They load with the
first request /mcp lets in. Held without timing: which modules a real `serve` imported
is read from the interpreter's own import log (PYTHONPROFILEIMPORTTIME), before and after
that first request.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from macha_obs.intake.token import read_token
from tests.harness.daemon_support import MACHA_OBS, Daemon
from tests.harness.labsd import LabSystemd
from tests.harness.stack import poll
from tests.test_listener_limits import healthz, status_of
from tests.test_mcp_listener import INIT, mcp_request
from tests.test_statedir import open_tmp, owned_dir

__all__ = ["open_tmp"]  # the fixture, shared with test_statedir

# Loaded on the first /mcp request, never by an idle daemon.
ON_DEMAND = ("mcp", "starlette", "uvicorn", "httpx", "anyio", "jsonschema", "asyncio")
_IMPORT = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$", re.MULTILINE)


def loaded(import_log: str) -> set[str]:
    """The top-level packages an interpreter's PYTHONPROFILEIMPORTTIME lines name."""
    return {name.split(".")[0] for name in _IMPORT.findall(import_log)}


def test_loaded_reads_the_interpreters_import_log() -> None:
    text = (
        "import time: self [us] | cumulative | imported package\n"
        "import time:       120 |        120 |     _json\n"
        "import time:      1021 |       2043 |   mcp.server.fastmcp\n"
        "macha-obs 0.1.0 serving on 127.0.0.1:1\n"
    )
    assert loaded(text) == {"_json", "mcp"}


def test_the_command_line_imports_no_on_demand_package() -> None:
    """Every command (serve among them) is reachable from `macha_obs.cli`: importing it
    loads none of the on-demand packages."""
    code = (
        "import json, sys\n"
        "import macha_obs.cli\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert not set(ON_DEMAND) & set(json.loads(out.stdout))


@pytest.mark.systemd
def test_an_idle_daemon_loads_the_mcp_sdk_only_when_asked(
    systemd_container: LabSystemd, tmp_path: Path
) -> None:
    daemon = Daemon(systemd_container, tmp_path / "state")
    daemon.env["PYTHONPROFILEIMPORTTIME"] = "1"  # the interpreter's, read by no code of ours
    daemon.start()
    try:
        # Idle, past its first cycle: collectors, the orchestrator, the listener all ran.
        assert poll(lambda: (daemon.metric("macha_cycles_total") or 0) >= 1, timeout=60)
        idle = loaded(daemon.log.read_text(errors="replace"))
        assert "macha_obs" in idle  # the log is the one we think it is
        assert not set(ON_DEMAND) & idle

        token = read_token(daemon.token_file)
        answer = mcp_request(daemon, json.dumps(INIT).encode(), token=token)
        assert status_of(answer) == 200
        assert b'"serverInfo"' in answer
        assert {"mcp", "anyio"} <= loaded(daemon.log.read_text(errors="replace"))
    finally:
        assert daemon.stop() == 0


@pytest.mark.systemd
def test_a_daemon_started_by_root_loads_the_sdk_before_it_drops_to_the_owner(
    systemd_container: LabSystemd, open_tmp: Path
) -> None:
    """Root's `serve` on a state dir nobody owns becomes nobody before it touches the dir.
    nobody may not read the interpreter's files (here a Python under /root): what /mcp
    would load on demand is imported before the drop, and /mcp answers."""
    daemon = Daemon(systemd_container, owned_dir(open_tmp))
    with daemon.log.open("ab") as out:
        daemon.proc = subprocess.Popen(
            [MACHA_OBS, "serve"], env=daemon.env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        # As nobody it cannot start its D-Bus child here (the interpreter is root's), so
        # it never reports ready; the listener is up all the same.
        assert poll(lambda: healthz(daemon.port) == 200, timeout=60), daemon.log_tail()
        token = read_token(daemon.token_file)
        answer = mcp_request(daemon, json.dumps(INIT).encode(), token=token)
        assert status_of(answer) == 200, daemon.log_tail()
    finally:
        assert daemon.stop() == 0
