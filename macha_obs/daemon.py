"""The daemon: its lifecycle (`Sidecar.run`), one instance per state dir, sd_notify, the
watchdog, and logging.

`macha-obs serve` wires the parts (cli/, the one place that may) and hands them to
`Sidecar`, which owns the order they start in, the one wait, and the order they stop
in; nothing here knows what the loop does or how a part was built.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import logging.handlers
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from macha_obs import statedir
from macha_obs.errors import StateError
from macha_obs.statedir import StateDir

log = logging.getLogger("macha_obs")

# logging level -> syslog priority, for journald
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class AlreadyRunning(StateError):
    """Another daemon holds the state directory."""


class StateLock:
    """An exclusive flock on the state dir's daemon.lock for the daemon's lifetime.

    flock is released by the kernel when the process dies, however it dies, so a
    SIGKILLed daemon never leaves a stale lock behind.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = StateDir(state_dir).lock
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        # never through a planted symlink: a root CLI must not truncate what it points at
        fd = statedir.open_file(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        fh = os.fdopen(fd, "r+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read(32).strip() or "unknown"
            fh.close()
            raise AlreadyRunning(
                f"another macha-obs (pid {holder}) is running on {self.path.parent}"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


class Notifier:
    """sd_notify(3) through pystemd; silent when not started by systemd."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.enabled = bool(environ.get("NOTIFY_SOCKET"))
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_seconds = int(usec) / 1e6 if usec.isdigit() and mine else 0.0

    def notify(self, *states: str) -> None:
        if not self.enabled:
            return
        from pystemd.daemon import notify

        notify(False, *states)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self, alive: Callable[[], bool], stop: threading.Event) -> threading.Thread | None:
        """Ping WATCHDOG=1 at half the interval while `alive()`; a hung loop stops the pings
        and systemd restarts us."""
        if not self.enabled or self.watchdog_seconds <= 0:
            return None

        def run() -> None:
            while not stop.wait(self.watchdog_seconds / 2):
                if alive():
                    self.notify("WATCHDOG=1")

        thread = threading.Thread(target=run, name="macha-watchdog", daemon=True)
        thread.start()
        return thread


class JournalHandler(logging.Handler):
    """Structured records to journald: priority, logger, and extra fields."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from pystemd.journal import sendv

            # sendv, not pystemd's log(): log() fills CODE_* from its own caller (this
            # handler); the record knows where the message really came from.
            sendv(
                MESSAGE=self.format(record),
                PRIORITY=str(_PRIORITY.get(record.levelno, 6)),
                LOGGER=record.name,
                SYSLOG_IDENTIFIER="macha-obs",
                CODE_FILE=record.pathname,
                CODE_LINE=str(record.lineno),
                CODE_FUNC=record.funcName,
            )
        except Exception:
            self.handleError(record)


class JsonLinesFormatter(logging.Formatter):
    """orchestrator.log: one JSON object per record, readable by `macha-logs --json`."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data)


def setup_logging(log_file: Path, *, journald: bool, level: int = logging.INFO) -> None:
    """Log to journald (under systemd) or stderr, and mirror everything to `log_file`."""
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        with contextlib.suppress(Exception):
            handler.close()
    console: logging.Handler
    if journald:
        console = JournalHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
    else:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(console)
    mirror = StateLogHandler(log_file)
    mirror.setFormatter(JsonLinesFormatter())
    root.addHandler(mirror)


class StateLogHandler(logging.handlers.WatchedFileHandler):
    """orchestrator.log. It quotes alert and journal text: not for other users' eyes,
    and never opened through a planted symlink. Retention rotates it by rename
    (store/retention.py); the handler sees the name move and opens the new file, so the
    rotated one stops growing."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, mode="a", encoding="utf-8")

    def _open(self) -> io.TextIOWrapper:
        fd = statedir.open_file(Path(self.baseFilename), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o640)
        return os.fdopen(fd, "a", encoding="utf-8")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.reopenIfNeeded()
            if self.stream is None:  # FileHandler.emit would open it outside its guard
                self.stream = self._open()
                self._statstream()
        except Exception:  # a refused (re)open loses this line, never the caller
            # (issue 21: a symlink planted at orchestrator.log raised StateDirError out of
            # log.exception and killed the action lane)
            self.handleError(record)
            return
        logging.FileHandler.emit(self, record)


# ---------------------------------------------------------------- the lifecycle


def wait_for(stop: threading.Event) -> None:
    """Block until `stop` is set, by another thread or by a signal's handler.

    The kernel hands a process's SIGTERM to any thread that does not block it, and CPython
    runs the Python handler only in the main thread, between bytecodes. A main thread parked
    in `Event.wait()` sleeps in a lock that a signal taken by another thread never
    interrupts, so the handler never runs and the daemon never stops (seen in CI: SIGKILL
    after 15 s). Here the main thread sleeps in a read of the signal wake-up pipe instead:
    the C-level handler writes to it whichever thread took the signal, and `stop.set()`
    from a thread writes to it too."""
    if threading.current_thread() is not threading.main_thread():
        stop.wait()  # no handler runs here; the thread that sets it wakes us
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    guard = threading.Lock()
    open_ends = [read_end, write_end]  # emptied when closed: the relay never writes to a reused fd

    def relay() -> None:
        stop.wait()
        with guard, contextlib.suppress(OSError):
            if open_ends:
                os.write(write_end, b"\0")

    threading.Thread(target=relay, name="macha-stop-relay", daemon=True).start()
    try:
        while not stop.is_set():
            os.read(read_end, 512)  # the handler runs before the next bytecode
    finally:
        signal.set_wakeup_fd(previous)
        with guard:
            for end in open_ends:
                os.close(end)
            open_ends.clear()


class Worker(Protocol):
    """A part that runs on its own thread until stopped (timer, watcher, pull)."""

    def start(self) -> None: ...
    def stop(self, timeout: float) -> bool | None: ...


class Lanes(Worker, Protocol):
    """The orchestrator's lanes: their stop says whether the step in flight finished."""

    def healthy(self) -> bool: ...


class Watched(Protocol):
    """The threads that must run (server/health.py's ThreadWatch)."""

    stopping: threading.Event

    def adopt(self) -> list[str]: ...


@dataclass
class Extra:
    """An optional worker (the unit watcher, the Alertmanager pull) and its stop budget."""

    name: str
    worker: Worker
    timeout: float


@dataclass
class Sidecar:
    """`macha-obs serve` once wired: `run(stop)` starts every part, waits for `stop`,
    then stops them in the reverse order, each within a bounded time. A SIGTERM lets
    the step in flight finish (bounded); an action still running then is recorded
    interrupted, never left for the next start to guess (invariant 6)."""

    lanes: Lanes
    loop: Worker
    threads: Watched
    notifier: Notifier
    # the bound listener's shutdown
    stop_listening: Callable[[float], None]
    status: str  # what systemd shows beside the unit (sd_notify STATUS=)
    serving: str  # the log line that says it is up, and where
    # records the action in flight as interrupted when the lanes did not stop in time
    interrupt: Callable[[str], object]
    extras: Sequence[Extra] = ()
    # closed last, in order (the executor, the store, the lock)
    closers: Sequence[Callable[[], None]] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        self.lanes.start()
        self.loop.start()
        for extra in self.extras:
            extra.worker.start()
        log.info("threads that must run, watched: %s", ", ".join(self.threads.adopt()))
        self.notifier.watchdog(self.lanes.healthy, stop)
        self.notifier.ready(self.status)
        log.info("%s", self.serving)
        wait_for(stop)
        self.notifier.stopping()
        self.threads.stopping.set()
        log.info("stopping")
        for extra in reversed(self.extras):
            if extra.worker.stop(timeout=extra.timeout) is False:
                log.warning("%s: still busy at shutdown", extra.name)
        self.loop.stop(timeout=1.0)
        if not self.lanes.stop(timeout=7.0):
            self.interrupt("the daemon was stopped before the action finished")
        self.stop_listening(1.0)
        for close in self.closers:
            close()
