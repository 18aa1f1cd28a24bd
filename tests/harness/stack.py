"""Real Prometheus and Alertmanager (Debian's binaries) on loopback, for tests and the bench.

Each server runs on 127.0.0.1 with a free port and its data in the given workdir, and is
stopped by PID. Waits are bounded; a server that does not come up raises with its log.
Recipe and measured delays: shared/lab/REAL_STACK.md.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

BINARIES = {
    "prometheus": ("prometheus",),
    "alertmanager": ("prometheus-alertmanager", "alertmanager"),
    "promtool": ("promtool",),
    "amtool": ("amtool",),
    "node_exporter": ("prometheus-node-exporter", "node_exporter"),
}


class StackError(RuntimeError):
    """A server did not start or answer; the message carries its log tail."""


def binary(kind: str) -> str | None:
    """The path of a stack binary by kind (see BINARIES), or None when it is not installed."""
    for name in BINARIES[kind]:
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll until predicate() is true (exceptions count as false) or the timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(requests.RequestException, OSError, KeyError, ValueError):
            if predicate():
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class Server:
    """A Debian stack server on loopback, started and stopped by PID."""

    kind = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.workdir / f"{self.kind}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def argv(self, path: str) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 30.0) -> None:
        path = binary(self.kind)
        if path is None:
            raise StackError(f"{self.kind} is not installed")
        with self.log.open("wb") as log:
            self._proc = subprocess.Popen(
                self.argv(path), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        if not poll(self._ready, timeout):
            tail = self.log_tail()
            self.stop()
            raise StackError(f"{self.kind} not ready within {timeout:g}s:\n{tail}")

    def _ready(self) -> bool:
        if self._proc is None or self._proc.poll() is not None:
            raise StackError(f"{self.kind} exited:\n{self.log_tail()}")
        return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def log_tail(self, limit: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_bytes()[-limit:].decode(errors="replace")
        return ""

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Prometheus(Server):
    """`config_yaml_text` without rule_files: those come from `rule_files` (absolute paths)."""

    kind = "prometheus"

    def __init__(self, workdir: Path, config_yaml_text: str, rule_files: list[Path]) -> None:
        super().__init__(workdir)
        self.config = self.workdir / "prometheus.yml"
        rules = "".join(f"  - {Path(p).resolve()}\n" for p in rule_files)
        text = config_yaml_text.rstrip("\n") + "\n"
        self.config.write_text(text + (f"rule_files:\n{rules}" if rules else ""))

    def argv(self, path: str) -> list[str]:
        return [
            path,
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]

    def _api(self, endpoint: str, **params: str) -> Any:
        reply = requests.get(f"{self.url}/api/v1/{endpoint}", params=params, timeout=10)
        body = reply.json()
        if body.get("status") != "success":
            raise StackError(f"{endpoint} {params}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[Any]:
        """An instant query's result vector (a list of {metric, value})."""
        data = self._api("query", query=expr)
        result = data["result"]
        return result if isinstance(result, list) else [result]

    def alerts(self) -> list[dict[str, Any]]:
        return list(self._api("alerts")["alerts"])

    def wait_targets_up(self, n: int, timeout: float = 30) -> None:
        # Prometheus 2.42 first scrapes ~5-6 s after start, whatever the interval
        def up() -> bool:
            result = self.query("count(up == 1)")
            return bool(result) and int(float(result[0]["value"][1])) >= n

        if not poll(up, timeout, interval=0.2):
            raise StackError(f"fewer than {n} targets up after {timeout}s:\n{self.log_tail()}")

    def wait_alertmanagers(self, timeout: float = 30) -> None:
        if not poll(lambda: bool(self._api("alertmanagers")["activeAlertmanagers"]), timeout, 0.2):
            raise StackError(f"no active Alertmanager after {timeout}s:\n{self.log_tail()}")


class Alertmanager(Server):
    kind = "alertmanager"

    def __init__(self, workdir: Path, config_yaml_text: str) -> None:
        super().__init__(workdir)
        self.config = self.workdir / "alertmanager.yml"
        self.config.write_text(config_yaml_text)

    def argv(self, path: str) -> list[str]:
        return [
            path,
            f"--config.file={self.config}",
            f"--storage.path={self.workdir / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            # Clustering holds every notification ~10 s after start (and binds 0.0.0.0:9094)
            "--cluster.listen-address=",
            "--log.level=warn",
        ]
