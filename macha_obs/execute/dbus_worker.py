"""D-Bus calls in a child process, so a stalled bus can never freeze the sidecar.

pystemd keeps the GIL during a call and libsystemd waits up to 90 s on a bus that has
stopped answering; a thread cannot bound that. `IsolatedBus` sends each call as a JSON
line to a long-lived child (`python -m macha_obs.execute.dbus_worker ADDRESS`) that owns
the pystemd connection; if no answer comes within the timeout the child is killed, the
call raises `DBusTimeout`, and the next call starts a fresh child.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
from typing import Any

from macha_obs.execute.bus import PystemdBus
from macha_obs.execute.errors import DBusTimeout, SystemdError, TransientDBusError
from macha_obs.execute.runner import python_child
from macha_obs.models import UnitState

_OPS = ("unit_state", "submit", "job_pending", "reset_failed", "list_units")


class IsolatedBus:
    """SystemdBus whose calls run in a killable child process, each bounded by `timeout`."""

    def __init__(self, address: str | None = None, *, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    # -------------------------------------------------------------- SystemdBus

    def unit_state(self, unit: str) -> UnitState:
        return UnitState.model_validate(self._call("unit_state", unit))

    def submit(self, unit: str, verb: str) -> str:
        return str(self._call("submit", unit, verb))

    def job_pending(self, unit: str) -> bool:
        return bool(self._call("job_pending", unit))

    def reset_failed(self, unit: str) -> None:
        self._call("reset_failed", unit)

    def list_units(self, states: tuple[str, ...] = ()) -> list[tuple[str, str, str, str]]:
        return [tuple(row) for row in self._call("list_units", list(states))]

    # -------------------------------------------------------------- the child

    def _child(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            argv, env = python_child("macha_obs.execute.dbus_worker", self.address or "")
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
            )
        return self._proc

    def close(self) -> None:
        with self._lock:
            self._kill()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc is not None:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()

    def _call(self, op: str, *args: Any) -> Any:
        with self._lock:
            proc = self._child()
            stdin, stdout = proc.stdin, proc.stdout
            if stdin is None or stdout is None:  # pragma: no cover - both are PIPE above
                raise TransientDBusError("D-Bus worker has no pipes")
            try:
                stdin.write(json.dumps([op, *args]).encode() + b"\n")
                stdin.flush()
            except OSError as exc:
                self._kill()
                raise TransientDBusError(f"D-Bus worker gone: {exc}") from exc
            ready, _, _ = select.select([stdout], [], [], self.timeout)
            line = stdout.readline() if ready else b""
            if not line:
                self._kill()
                if not ready:
                    raise DBusTimeout(f"D-Bus did not answer within {self.timeout:g}s")
                raise TransientDBusError("D-Bus worker exited")
        reply = json.loads(line)
        if "ok" in reply:
            return reply["ok"]
        error = TransientDBusError if reply.get("transient") else SystemdError
        raise error(reply.get("error", "unknown D-Bus error"))


def serve(address: str | None) -> None:
    """The child's loop: one JSON request per line in, one JSON reply per line out."""
    bus = PystemdBus(address)
    out = os.fdopen(sys.stdout.fileno(), "wb", buffering=0)
    for raw in sys.stdin.buffer:
        op, *args = json.loads(raw)
        if op not in _OPS:
            out.write(json.dumps({"error": f"unknown operation {op!r}"}).encode() + b"\n")
            continue
        try:
            if op == "list_units":
                args = [tuple(args[0])]
            value = getattr(bus, op)(*args)
            if isinstance(value, UnitState):
                value = value.model_dump()
            reply: dict[str, Any] = {"ok": value}
        except SystemdError as exc:
            reply = {"error": str(exc), "transient": isinstance(exc, TransientDBusError)}
        out.write(json.dumps(reply).encode() + b"\n")


if __name__ == "__main__":
    serve(sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else None)
