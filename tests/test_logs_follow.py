"""`macha-logs service -f` follows the sidecar's journal (issue 22), as a real process.

The sidecar's unit runs in the lab systemd, whose journal the host reads through the
configured `journal_dir` (as the sidecar's own collectors do). A line planted after
`macha-logs` started must appear on its stdout; a stop by PID (SIGINT, SIGTERM) ends
it cleanly, with no traceback and no `journalctl` left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.harness.daemon_support import MACHA_LOGS
from tests.harness.labsd import LabSystemd
from tests.harness.stack import poll

pytestmark = [pytest.mark.systemd]

UNIT = "macha-autonomous.service"
MARK = "/run/macha-logs-mark"  # inside the lab; each start of the unit prints it


class Follower:
    """`macha-logs service -f` as a process, its stdout read as it comes."""

    def __init__(self, lab: LabSystemd, *args: str) -> None:
        env = {
            **os.environ,
            "MACHA_CONFIG": "",
            "MACHA_STATE_DIR": str(lab.workdir / "logs-state"),
            "MACHA_JOURNAL_DIR": str(lab.journal_dir),
        }
        self.proc = subprocess.Popen(
            [MACHA_LOGS, "service", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.readers = [
            threading.Thread(target=_read, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=_read, args=(self.proc.stderr, self.errors), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def shows(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def children(self) -> list[int]:
        found: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            found += [int(pid) for pid in (task / "children").read_text().split()]
        return found

    def stop(self, helpers: list[int]) -> None:
        """By PID: the process, and any helper it left behind (holding our pipes open)."""
        if self.proc.poll() is None:
            helpers = [*helpers, *self.children()]
            self.proc.kill()
            self.proc.wait()
        for pid in helpers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        for reader in self.readers:
            reader.join(timeout=30)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def _read(pipe: IO[str] | None, into: list[str]) -> None:
    assert pipe is not None
    for line in pipe:
        into.append(line)


@pytest.fixture
def follower(systemd_container: LabSystemd) -> Iterator[list[tuple[Follower, list[int]]]]:
    """What a test started: each follower, with the helpers it had running."""
    started: list[tuple[Follower, list[int]]] = []
    yield started
    for logs, helpers in started:
        logs.stop(helpers)


def plant(lab: LabSystemd, text: str) -> None:
    """One line in the sidecar's journal: the unit prints the mark once per start."""
    (lab.root / MARK.lstrip("/")).write_text(text + "\n")
    lab.run("systemctl", "start", UNIT)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize(
    ("signum", "codes"), [(signal.SIGINT, (0, 130)), (signal.SIGTERM, (0, 143))]
)
def test_macha_logs_service_follows_and_stops_cleanly(
    systemd_container: LabSystemd,
    follower: list[tuple[Follower, list[int]]],
    signum: int,
    codes: tuple[int, ...],
) -> None:
    lab = systemd_container
    lab.write_unit(UNIT, f"[Service]\nType=oneshot\nExecStart=/bin/cat {MARK}\n")
    before, after = f"before-{uuid.uuid4().hex}", f"after-{uuid.uuid4().hex}"
    plant(lab, before)
    assert poll(lambda: before in lab.journal(UNIT), timeout=30)

    logs = Follower(lab, "-f", "-n", "20")
    helpers: list[int] = []
    follower.append((logs, helpers))
    # the last lines first: it reads the lab's journal and is following now
    assert poll(lambda: logs.shows(before), timeout=30), (logs.lines, logs.errors)
    plant(lab, after)
    assert poll(lambda: logs.shows(after), timeout=30), logs.lines
    assert logs.proc.poll() is None  # still following

    helpers += logs.children()  # journalctl, whatever runs it
    logs.proc.send_signal(signum)
    logs.proc.wait(timeout=30)
    assert poll(lambda: not any(alive(pid) for pid in helpers), timeout=30), helpers
    for reader in logs.readers:
        reader.join(timeout=30)
    assert logs.proc.returncode in codes, (logs.proc.returncode, logs.errors)
    assert "Traceback" not in "".join(logs.errors)
