"""Benchmark: what one exposure run costs, per run and per service, against the lab systemd.

    .venv/bin/python bench/exposure.py [--services 10,50] [--runs 3]

Boots the systemd sandbox of tests/harness/labsd.py, starts N unhardened services in it
(`sleep infinity`, plus one listening on every address), and at each size times the
exposure collector's run (one `systemd-analyze security UNIT` per running service, entered
into the lab with nsenter as the lab tests do, plus the /proc listener scan): wall time
and CPU seconds (this process and its children), per run and per service. Beside it, in
the same invocation, the reference: `systemd-analyze security` without a unit, which
scores every service in one process (what the collector cannot use: no per-setting
table, and one failing unit would sink it), and the listener scan alone. Figures, not
assertions.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(work: Callable[[], Any], runs: int) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds of `runs` calls."""
    walls, cpus = [], []
    for _ in range(runs):
        cpu, wall = cpu_seconds(), time.monotonic()
        work()
        walls.append(time.monotonic() - wall)
        cpus.append(cpu_seconds() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--services", default="10,50", help="bench services to add, in steps")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.services.split(","))

    from macha_obs.collect.exposure import ExposureCollector, HostChanges, fetch_running_services
    from macha_obs.collect.exposure_listeners import listening_units
    from macha_obs.systemd.bus import IsolatedBus
    from tests.harness.exposure_support import lab_runner
    from tests.harness.labsd import LabSystemd

    with tempfile.TemporaryDirectory(prefix="bench-exposure-") as work:
        lab = LabSystemd(workdir=Path(work)).start()
        bus = IsolatedBus(lab.bus_address, timeout=30)
        try:
            lab.write_unit(
                "bench-listen.service",
                "[Service]\nExecStart=/usr/bin/python3 -m http.server --bind 0.0.0.0 18471\n",
            )
            lab.run("systemctl", "start", "bench-listen.service")
            added = 0
            print(
                "| running services | collector run: wall | CPU per run | CPU per service "
                "| reference `systemd-analyze security` (all at once): wall | CPU "
                "| listener scan alone: CPU |"
            )
            print("| --- | --- | --- | --- | --- | --- | --- |")
            for size in sizes:
                for n in range(added, size):
                    lab.write_unit(
                        f"bench-{n}.service",
                        "[Service]\nExecStart=/bin/sleep infinity\n",
                        reload=False,
                    )
                lab.daemon_reload()
                lab.run("systemctl", "start", *(f"bench-{n}.service" for n in range(added, size)))
                added = size
                running = fetch_running_services(bus, 30)

                def run() -> None:
                    collector = ExposureCollector(
                        bus=bus,
                        runner=lab_runner(lab),
                        changes=HostChanges,
                        max_units=10_000,
                        budget=3600,
                    )
                    reading, _ = collector.collect()
                    assert not reading.failed, reading.failed

                def reference() -> None:
                    lab.run("systemd-analyze", "security", "--no-pager")

                wall, cpu = measure(run, args.runs)
                ref_wall, ref_cpu = measure(reference, args.runs)
                _, scan = measure(partial(listening_units, running), args.runs)
                print(
                    f"| {len(running)} | {wall:.2f} s | {cpu:.3f} s | "
                    f"{cpu / len(running) * 1000:.1f} ms | {ref_wall:.2f} s | {ref_cpu:.3f} s | "
                    f"{scan * 1000:.1f} ms |"
                )
        finally:
            bus.close()
            lab.stop()


if __name__ == "__main__":
    main()
