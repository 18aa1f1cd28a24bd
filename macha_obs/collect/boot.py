"""Boot: boot time, uptime, and an unexpected reboot seen as a change of the kernel's boot id.

The boot id seen last is kept in the store. A reboot someone announced beforehand (by
setting EXPECTED_REBOOT_KEY to the boot id that is ending) is expected; any other is not,
and stays reported for the whole of the new boot, across restarts of the sidecar.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psutil

from macha_obs.collect.meta import MetaStore
from macha_obs.models import BootReading, Finding, FindingKind, Severity

BOOT_ID_KEY = "boot.id"
EXPECTED_REBOOT_KEY = "boot.expected_reboot"  # value: the boot id whose end was announced
UNEXPECTED_KEY = "boot.unexpected"  # value: the boot id that began unexpectedly
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


def judge_reboot(previous: str | None, current: str, expected_from: str | None) -> bool:
    """True when the boot id changed and nobody announced the end of the previous boot."""
    return previous is not None and previous not in (current, expected_from)


def summarize_boot(reading: BootReading) -> list[Finding]:
    if not reading.unexpected_reboot:
        return []
    return [
        Finding(
            kind=FindingKind.UNEXPECTED_REBOOT,
            severity=Severity.CRITICAL,
            subject="host",
            summary=f"the host rebooted unexpectedly (up {reading.uptime_seconds:.0f}s)",
            details={"boot_id": reading.boot_id, "boot_time": reading.boot_time},
        )
    ]


class BootCollector:
    name = "boot"

    def __init__(
        self,
        meta: MetaStore,
        *,
        boot_id_file: Path = BOOT_ID_FILE,
        boot_time: Callable[[], float] = psutil.boot_time,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.meta = meta
        self.boot_id_file = boot_id_file
        self.boot_time = boot_time
        self.clock = clock

    def collect(self) -> tuple[BootReading, list[Finding]]:
        current = self.boot_id_file.read_text().strip()
        previous = self.meta.get_meta(BOOT_ID_KEY)
        if previous != current:
            if judge_reboot(previous, current, self.meta.get_meta(EXPECTED_REBOOT_KEY)):
                self.meta.set_meta(UNEXPECTED_KEY, current)
            self.meta.set_meta(BOOT_ID_KEY, current)
        booted = self.boot_time()
        reading = BootReading(
            boot_id=current,
            boot_time=booted,
            uptime_seconds=max(0.0, self.clock() - booted),
            unexpected_reboot=self.meta.get_meta(UNEXPECTED_KEY) == current,
        )
        return reading, summarize_boot(reading)
