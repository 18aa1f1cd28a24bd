"""Benchmark: what one backups collection costs against the lab systemd, and what it says.

    .venv/bin/python bench/backups.py [--runs 50]

Boots the systemd sandbox of tests/harness/labsd.py with three backup units (a restic job
that fails, a borg job with a daily timer that succeeds, a restic job never run), reads
them once on a clock three days back (the sidecar's first sight) and then `--runs` times
on the real clock, through one D-Bus child. Prints the median and worst wall time per
collection, the D-Bus child's CPU seconds over all of them, the findings, and the
`macha_backup*` lines of /metrics. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

UNITS = {
    "restic-backups-demo.service": (
        "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo repository locked >&2; exit 1'\n"
    ),
    "borgbackup-job-home.service": "[Service]\nType=oneshot\nExecStart=/bin/true\n",
    "borgbackup-job-home.timer": "[Timer]\nOnCalendar=daily\nRandomizedDelaySec=1h\n",
    "restic-backups-offsite.service": "[Service]\nType=oneshot\nExecStart=/bin/true\n",
}


def child_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    from macha_obs.collect.backups import DAY, BackupsCollector
    from macha_obs.collect.base import collect_all
    from macha_obs.collect.meta import MemoryMeta
    from macha_obs.config import Config
    from macha_obs.metrics import build_registry, scrape_text
    from macha_obs.systemd.bus import IsolatedBus
    from tests.harness.labsd import LabSystemd

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    with LabSystemd(workdir=Path(tempfile.mkdtemp(dir="/var/tmp"))) as lab:
        for name, text in UNITS.items():
            lab.write_unit(name, text, reload=False)
        lab.daemon_reload()
        lab.run("systemctl", "start", "borgbackup-job-home.timer")
        lab.run("systemctl", "start", "restic-backups-demo.service", check=False)
        lab.run("systemctl", "start", "borgbackup-job-home.service")
        now = [time.time() - 3 * DAY]
        bus = IsolatedBus(lab.bus_address, timeout=20)
        try:
            collector = BackupsCollector(
                MemoryMeta(), patterns=Config().backup_units, grace=6 * 3600, bus=bus,
                clock=lambda: now[0],
            )  # fmt: skip
            collect_all([collector], hostname="lab")
            now[0] = time.time()
            walls = []
            for _ in range(args.runs):
                started = time.perf_counter()
                snapshot = collect_all([collector], hostname="lab")
                walls.append(time.perf_counter() - started)
            pid = bus.child.pid()
            cpu = child_cpu_seconds(pid) if pid is not None else float("nan")
        finally:
            bus.close()
    units = len(snapshot.backups.units) if snapshot.backups is not None else 0
    print(
        f"{args.runs} collections, {units} backup units: median "
        f"{statistics.median(walls) * 1000:.1f} ms, max {max(walls) * 1000:.1f} ms; "
        f"D-Bus child CPU {cpu:.2f} s over {args.runs + 1} collections"
    )
    for finding in snapshot.findings:
        print(f"finding: {finding.kind.value} {finding.unit} - {finding.summary}")
    text = scrape_text(build_registry(lambda: snapshot, process=False)).decode()
    print("\n".join(line for line in text.splitlines() if line.startswith("macha_backup")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
