"""The real daemon (`macha-obs serve`) as a process in tests, pointed at a lab systemd.

Also a pytest plugin (tests/conftest.py): the `daemons` fixture starts them and stops
every one it started."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from macha_obs.intake.token import read_token, token_path
from macha_obs.models import ActionRecord, Approval
from macha_obs.store import Store
from tests.harness.labsd import LabSystemd
from tests.harness.stack import free_port, poll

MACHA_OBS = str(Path(sys.executable).parent / "macha-obs")
MACHA_APPROVE = str(Path(sys.executable).parent / "macha-approve")
MACHA_CHECK = str(Path(sys.executable).parent / "macha-check")
MACHA_LOGS = str(Path(sys.executable).parent / "macha-logs")
HOST = "testhost"


class Daemon:
    """`macha-obs serve` on a free loopback port, with its own state dir; stopped by PID."""

    def __init__(self, lab: LabSystemd, state_dir: Path, **settings: object) -> None:
        self.lab = lab
        self.state_dir = state_dir
        self.port = free_port()
        self.env = {
            **os.environ,
            "MACHA_CONFIG": "",
            "MACHA_STATE_DIR": str(state_dir),
            "MACHA_LISTEN_ADDRESS": f"127.0.0.1:{self.port}",
            "MACHA_SYSTEMD_BUS_ADDRESS": lab.bus_address,
            "MACHA_JOURNAL_DIR": str(lab.journal_dir),
            "MACHA_HOSTNAME": HOST,
            "MACHA_COLLECT_INTERVAL": "1",
            "MACHA_CHECK_INTERVAL": "5",
            "MACHA_VERIFY_SETTLE": "0.5",
            "MACHA_VERIFY_TIMEOUT": "10",
            "MACHA_ANALYSIS": "runbooks-only",
            "MACHA_LLM_ENABLED": "false",
        }
        for key, value in settings.items():
            self.env[f"MACHA_{key.upper()}"] = str(value)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state_dir.parent / f"daemon-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_file(self) -> Path:
        """The token POST /alerts needs: the daemon generates it on start (0600) unless
        `webhook_token_file` is set. Alertmanager's `credentials_file` points here."""
        configured = self.env.get("MACHA_WEBHOOK_TOKEN_FILE")
        return Path(configured) if configured else token_path(self.state_dir)

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {read_token(self.token_file)}"}

    def post_alerts(self, body: Any, *, auth: bool = True) -> requests.Response:
        """POST an Alertmanager payload to the daemon's webhook, with its token."""
        headers = self.auth_headers() if auth else {}
        return requests.post(f"{self.url}/alerts", json=body, headers=headers, timeout=10)

    def start(self, timeout: float = 30) -> Daemon:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [MACHA_OBS, "serve"], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        if not poll(self._ready, timeout, interval=0.1):
            self.stop()
            raise RuntimeError(f"macha-obs serve not ready:\n{self.log_tail()}")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"macha-obs serve exited:\n{self.log_tail()}")
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{self.url}/readyz", timeout=1).status_code == 200
        return False

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    # -------------------------------------------------------------- what it did

    @contextlib.contextmanager
    def store(self) -> Iterator[Store]:
        with Store(self.state_dir) as store:
            yield store

    def actions(self, unit: str | None = None) -> list[ActionRecord]:
        with self.store() as store:
            records = list(reversed(store.ledger.list_actions(1000)))
        return [r for r in records if unit is None or r.action.target == unit]

    def approvals(self) -> list[Approval]:
        with self.store() as store:
            return store.approvals.list_approvals()

    def audit(self, name: str) -> list[dict[str, Any]]:
        path = self.state_dir / name
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def approve(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [MACHA_APPROVE, *args], env=self.env, capture_output=True, text=True, check=False
        )

    def metric(self, name: str, **labels: str) -> float | None:
        text = requests.get(f"{self.url}/metrics", timeout=5).text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            series, _, value = line.rpartition(" ")
            if series == name or (labels and series == f"{name}{{{want}}}"):
                return float(value)
        return None


@pytest.fixture
def daemons(systemd_container: LabSystemd, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start daemons on the lab systemd (state dir NAME under tmp_path, settings as
    MACHA_* values); each is stopped by PID afterwards."""
    started: list[Daemon] = []

    def start(state: str = "state", **settings: object) -> Daemon:
        daemon = Daemon(systemd_container, tmp_path / state, **settings).start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
