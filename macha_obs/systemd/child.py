"""The D-Bus child: its names and rules, and the one launcher the parent uses.

Why a child at all: pystemd holds the GIL inside sd_bus_call and libsystemd waits up to
90 s on a bus that stopped answering, so a call made in the sidecar's own process could
freeze every thread of it. One long-lived child (`worker.py`) owns the connection; the
parent bounds every call with its own timeout, and a child that misses it is killed and
started afresh on the next call. The same child carries the unit-state signals
(`subscribe`), so idle there is one small process, blocked in select(), and no process is
started per collection.

Wire format (the names and ops are in `names.py`), one JSON document per line: requests
`[op, *args]`; replies `{"ok": value}` or `{"error": text, "transient": bool}`, in request
order; events `{"event": {...}}` at any time once subscribed.

"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

WORKER = Path(__file__).with_name("worker.py")
# The directory holding the `macha_obs` package: the child imports it from here, since an
# editable install finds it through a meta-path hook the child (run with -S) does not load.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class Reply(NamedTuple):
    value: Any = None
    error: str | None = None
    transient: bool = False
    timed_out: bool = False


EventSink = Callable[[dict[str, Any]], None]
GoneSink = Callable[[], None]


def worker_argv(address: str | None) -> list[str]:
    """-I -S: no PYTHON* variables, no site; the child gets our import path explicitly
    (which is what finds pystemd in a venv or a Nix wrapper alike) and imports nothing else."""
    search = os.pathsep.join([str(PACKAGE_ROOT), *(p for p in sys.path if p)])
    return [sys.executable, "-I", "-S", str(WORKER), "--sys-path", search, address or ""]


class _Process:
    """One running child: its pipes, the replies read so far, and whether it has ended."""

    def __init__(self, argv: list[str], on_event: EventSink, on_gone: GoneSink) -> None:
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        self.replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.gone = threading.Event()
        self.on_event = on_event
        self.on_gone = on_gone
        # The reader blocks in read(): an idle child costs the parent no wake-ups.
        self.reader = threading.Thread(target=self._read, name="macha-dbus-child", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        stdout = self.popen.stdout
        assert stdout is not None  # noqa: S101 - stdout=PIPE above
        with stdout:
            for line in stdout:
                try:
                    data = json.loads(line)
                except ValueError:
                    continue
                if "event" in data:
                    self.on_event(data["event"])
                else:
                    self.replies.put(data)
        self.gone.set()
        self.replies.put(None)
        self.on_gone()

    def send(self, request: list[Any]) -> bool:
        stdin = self.popen.stdin
        assert stdin is not None  # noqa: S101 - stdin=PIPE above
        try:
            stdin.write(json.dumps(request).encode() + b"\n")
            stdin.flush()
        except OSError:
            return False
        return True

    def kill(self) -> None:
        """Kill and reap the child; when this returns, `on_gone` has been called, so the
        event watcher knows its subscription is gone before the failed call returns."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        if self.popen.stdin is not None:
            self.popen.stdin.close()
        if threading.current_thread() is not self.reader:
            self.reader.join(5.0)  # EOF follows the kill at once


class Child:
    """The D-Bus worker as seen from the parent: one call at a time, each bounded by
    `timeout`; a call that runs out kills the child, and the next call starts a new one."""

    def __init__(self, address: str | None = None, *, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout
        self._lock = threading.Lock()
        self._proc: _Process | None = None
        self._on_event: EventSink | None = None
        self._on_gone: GoneSink | None = None

    def _running(self) -> _Process:
        if self._proc is None or self._proc.gone.is_set() or self._proc.popen.poll() is not None:
            if self._proc is not None:
                self._proc.kill()
            self._proc = _Process(worker_argv(self.address), self._event, self._gone)
        return self._proc

    def pid(self) -> int | None:
        proc = self._proc
        return proc.popen.pid if proc is not None and not proc.gone.is_set() else None

    def subscribe(self, on_event: EventSink, on_gone: GoneSink) -> Reply:
        """Ask the child for unit signals: events go to `on_event` from then on, and
        `on_gone` is called when a child ends (its subscription ends with it)."""
        self._on_event, self._on_gone = on_event, on_gone
        return self.call("subscribe")

    # A child reads its sinks here at delivery time, never copies them at its start: a
    # child started by another thread's call while subscribe() runs still reaches them.
    def _event(self, event: dict[str, Any]) -> None:
        sink = self._on_event
        if sink is not None:
            sink(event)

    def _gone(self) -> None:
        sink = self._on_gone
        if sink is not None:
            sink()

    def call(self, op: str, *args: Any, timeout: float | None = None) -> Reply:
        bound = self.timeout if timeout is None else timeout
        if not self._lock.acquire(timeout=bound):
            return Reply(error=f"D-Bus worker busy for {bound:g}s", transient=True)
        try:
            proc = self._running()
            if not proc.send([op, *args]):
                self._kill()
                return Reply(error="D-Bus worker gone", transient=True)
            try:
                data = proc.replies.get(timeout=bound)
            except queue.Empty:
                self._kill()
                error = f"D-Bus did not answer within {bound:g}s"
                return Reply(error=error, transient=True, timed_out=True)
            if data is None:
                self._kill()
                return Reply(error="D-Bus worker exited", transient=True)
            if "ok" in data:
                return Reply(value=data["ok"])
            error = str(data.get("error", "unknown D-Bus error"))
            return Reply(error=error, transient=bool(data.get("transient")))
        finally:
            self._lock.release()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()

    def close(self) -> None:
        with self._lock:
            self._kill()
