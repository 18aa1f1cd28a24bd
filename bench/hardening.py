"""Benchmark: what checking a hardening patch costs, against the lab systemd.

    .venv/bin/python bench/hardening.py [--window 3] [-n 5]

Boots the systemd sandbox of tests/harness/labsd.py, starts an unhardened python
http.server unit in it, and runs remediate/hardening.py's checks on the issue's six
settings: wall time and the CPU of the child processes (systemd-analyze, busctl) for the
whole check, at the observation window asked and at 0, then systemd-analyze verify and
security --offline=true alone (mean of N). Figures, not assertions.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/hardening.py` from anywhere: tests.* is ours
    sys.path.insert(0, str(ROOT))

from macha_obs.execute.runner import subprocess_runner  # noqa: E402
from macha_obs.execute.transient import Systemd  # noqa: E402
from macha_obs.models import HardeningKey, HardeningSetting, HardenUnit  # noqa: E402
from macha_obs.remediate.hardening import HardeningChecker  # noqa: E402
from tests.harness.labsd import LabSystemd  # noqa: E402

UNIT = "[Service]\nExecStart=/usr/bin/python3 -m http.server 18080 --bind 0.0.0.0\n"
SIX = (
    (HardeningKey.NO_NEW_PRIVILEGES, "yes"),
    (HardeningKey.PROTECT_SYSTEM, "strict"),
    (HardeningKey.PROTECT_HOME, "yes"),
    (HardeningKey.PRIVATE_TMP, "yes"),
    (HardeningKey.PROTECT_KERNEL_TUNABLES, "yes"),
    (HardeningKey.RESTRICT_ADDRESS_FAMILIES, "AF_UNIX AF_INET AF_INET6"),
)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("-n", type=int, default=5)
    args = parser.parse_args()
    action = HardenUnit(
        unit="bench-web.service",
        settings=tuple(HardeningSetting(key=k, value=v) for k, v in SIX),
    )
    with LabSystemd() as lab:
        lab.write_unit("bench-web.service", UNIT)
        lab.run("systemctl", "start", "bench-web.service")
        for window in (0.0, args.window):
            checker = HardeningChecker(None, address=lab.bus_address, root=lab.root, window=window)
            cpu, wall = children_cpu(), time.monotonic()
            report = checker.check(action)
            print(
                f"check, window {window:g}s: {time.monotonic() - wall:.2f}s wall, "
                f"{children_cpu() - cpu:.2f}s CPU (children)"
            )
            print(f"  {report.describe()}")
    tools = Systemd(subprocess_runner)
    with tempfile.TemporaryDirectory() as scratch:
        unit = Path(scratch) / "bench-web.service"
        unit.write_text(UNIT)
        for name, run in (("verify", tools.verify), ("security --offline=true", tools.security)):
            cpu, wall = children_cpu(), time.monotonic()
            for _ in range(args.n):
                run(str(unit))
            print(
                f"systemd-analyze {name}: {(time.monotonic() - wall) / args.n:.3f}s wall, "
                f"{(children_cpu() - cpu) / args.n:.3f}s CPU per run (mean of {args.n})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
