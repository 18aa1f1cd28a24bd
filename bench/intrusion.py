"""Benchmark and demo: the host's posture against the lab systemd, and what an intrusion
cycle costs.

    .venv/bin/python bench/intrusion.py [--cycles 50]

Boots the systemd sandbox of tests/harness/labsd.py; accepts a posture baseline with the
real `macha-obs posture accept`; then enables a unit in the lab, plants a setuid file in a
scanned temporary directory, listens on 127.0.0.1:4444 and logs SSH/sudo/su failure lines
into the lab's journal (`logger -t sshd|sudo|su`); starts an unhardened service listening
on every address, a backup job that fails and one that succeeds (with its timer); runs the
journal, intrusion, exposure and backups collectors, writes the snapshot and prints
`macha-obs posture` over it (the README's Posture section shows that output). Then times
`IntrusionCollector.collect()`: a steady cycle (listeners read; unit files and setid dirs
cached) and one that re-reads everything, wall and CPU seconds of this process; and a full
setid scan of /usr/bin and /usr/sbin. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from macha_obs.collect.backups import BackupsCollector  # noqa: E402
from macha_obs.collect.base import collect_all  # noqa: E402
from macha_obs.collect.exposure import ExposureCollector, read_host_changes  # noqa: E402
from macha_obs.collect.exposure_listeners import listening_units  # noqa: E402
from macha_obs.collect.intrusion import AuthFailureTap, IntrusionCollector  # noqa: E402
from macha_obs.collect.journal import JournalCollector  # noqa: E402
from macha_obs.collect.meta import MemoryMeta  # noqa: E402
from macha_obs.collect.posture import SetidScanner, fetch_listeners  # noqa: E402
from macha_obs.collect.snapshots import write_snapshot  # noqa: E402
from macha_obs.systemd.bus import IsolatedBus  # noqa: E402
from tests.harness.exposure_support import lab_runner  # noqa: E402
from tests.harness.labsd import LabSystemd, wait_until  # noqa: E402

UNIT_TEXT = "[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n"
OPEN_WEB = "web-open.service"  # unhardened, listening on every address
OPEN_TEXT = "[Service]\nExecStart=/usr/bin/python3 -m http.server --bind 0.0.0.0 18090\n"
BACKUPS = {
    "restic-backups-home.service": "[Service]\nType=oneshot\nExecStart=/bin/false\n",
    "borgbackup-job-docs.service": "[Service]\nType=oneshot\nExecStart=/bin/true\n",
}
MACHA_OBS = str(Path(sys.executable).parent / "macha-obs")
SYSTEM_DIRS = ("/usr/bin", "/usr/sbin", "/bin", "/sbin")
PLANTED = [
    *[("sshd", "Failed password for root from 198.51.100.7 port 4242 ssh2")] * 4,
    ("sshd", "Invalid user admin from 198.51.100.7 port 4243"),
    ("sudo", "alice : 3 incorrect password attempts ; TTY=pts/0 ; PWD=/ ; COMMAND=/bin/sh"),
    ("su", "FAILED SU (to root) alice on pts/0"),
]


def timed(work: Callable[[], object], n: int) -> tuple[float, float]:
    """Mean wall and CPU milliseconds of `n` calls."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        work()
    return (time.perf_counter() - wall) / n * 1000, (time.process_time() - cpu) / n * 1000


def run(cycles: int, work: Path) -> None:
    state, setid = work / "state", work / "bin"
    state.mkdir(mode=0o700)
    setid.mkdir()
    dirs = [*SYSTEM_DIRS, str(setid)]
    with LabSystemd(workdir=work / "lab") as lab:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MACHA_")} | {
            "MACHA_STATE_DIR": str(state),
            "MACHA_SYSTEMD_BUS_ADDRESS": lab.bus_address,
            "MACHA_POSTURE_SETID_DIRS": ",".join(dirs),
        }

        def posture(*args: str) -> str:
            done = subprocess.run(
                [MACHA_OBS, "posture", *args], env=env, capture_output=True, text=True, check=False
            )
            return done.stdout + done.stderr

        print("$ macha-obs posture --live\n" + posture("--live"))
        print("$ macha-obs posture accept --yes\n" + posture("accept", "--yes"))
        unit = "web-extra.service"
        lab.write_unit(unit, UNIT_TEXT)
        lab.run("systemctl", "enable", unit)
        (setid / "rootshell").write_text("#!/bin/sh\n")
        (setid / "rootshell").chmod(0o4755)
        lab.write_unit(OPEN_WEB, OPEN_TEXT)
        for name, text in BACKUPS.items():
            lab.write_unit(name, text)
            lab.write_unit(name.replace(".service", ".timer"), "[Timer]\nOnCalendar=daily\n")
        lab.run("systemctl", "start", OPEN_WEB, *(n.replace(".service", ".timer") for n in BACKUPS))
        for name in BACKUPS:
            lab.run("systemctl", "start", name, check=False)  # a oneshot: returns once it ran
        wait_until(lambda: listening_units({OPEN_WEB}) == {OPEN_WEB}, timeout=20)
        bus = IsolatedBus(lab.bus_address)
        exposure = ExposureCollector(
            bus=bus,
            address=lab.bus_address,
            runner=lab_runner(lab),
            changes=lambda: read_host_changes(work),
        )
        backups = BackupsCollector(
            MemoryMeta(), patterns=tuple(BACKUPS), grace=6 * 3600, bus=bus, timeout=20
        )
        tap = AuthFailureTap()
        journal = JournalCollector(MemoryMeta(), journal_dir=lab.journal_dir, sinks=(tap,))
        journal.collect()  # the cursor at the tail: only what follows counts
        for identifier, message in PLANTED:
            lab.run("logger", "-t", identifier, message)
        wait_until(lambda: "FAILED SU" in lab.journal(None, "-g", "FAILED SU"), timeout=15)
        intrusion = IntrusionCollector(
            tap, state_dir=state, unit_files=bus, setid_dirs=[Path(d) for d in dirs], auth_burst=3
        )
        with socket.socket() as server:
            server.bind(("127.0.0.1", 4444))
            server.listen()
            snapshot = collect_all(
                [journal, intrusion, exposure, backups], hostname="lab", timeout=60
            )
            write_snapshot(state, snapshot, retention=3)
            print("$ macha-obs posture\n" + posture())
            print("findings:", [(f.kind.value, f.subject) for f in snapshot.findings])
            wall, cpu = timed(intrusion.collect, cycles)
            print(f"steady cycle: {wall:.2f} ms wall, {cpu:.2f} ms CPU (mean of {cycles})")
            intrusion.interval = 0  # unit files and setid dirs read again every time
            wall, cpu = timed(intrusion.collect, cycles)
            print(
                f"cycle re-reading unit files and setid dirs: {wall:.2f} ms wall, {cpu:.2f} ms CPU"
            )
        scanner = SetidScanner([Path("/usr/bin"), Path("/usr/sbin")])
        wall, cpu = timed(scanner.files, 1)
        entries = sum(len(os.listdir(d)) for d in ("/usr/bin", "/usr/sbin"))
        print(f"setid scan, /usr/bin + /usr/sbin ({entries}): {wall:.1f} ms, {cpu:.1f} ms CPU")
        listeners_cost(cycles)
        bus.close()
        lab.run("systemctl", "disable", unit, check=False)


def listeners_cost(cycles: int) -> None:
    """The steady cycle's read of this host's listeners, beside /proc/net's in this run."""
    _, diag_cpu = timed(fetch_listeners, cycles)
    _, files_cpu = timed(lambda: fetch_listeners(diag=None), cycles)
    print(
        f"this host's listeners: sock_diag {diag_cpu:.3f} ms CPU, "
        f"/proc/net (reference) {files_cpu:.3f} ms CPU (mean of {cycles})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="macha-intrusion-") as tmp:
        run(args.cycles, Path(tmp))


if __name__ == "__main__":
    main()
