"""Boot: boot time, uptime, and an unexpected reboot seen as a change of the kernel's boot id.

The boot id seen last is kept in the store. A reboot is expected when someone announced
it beforehand (by setting EXPECTED_REBOOT_KEY to the boot id that is ending: the sidecar,
a rebuild), or when the previous boot's journal shows an orderly shutdown (systemd
logged "System is rebooting/powering down", or reached shutdown.target or one of the
final targets: a crash, a panic or a power cut never gets there). Any other reboot is
unexpected, and stays reported for the whole of the new boot, across restarts of the
sidecar. A journal that cannot be read (not persistent, say) proves nothing: unexpected.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

from macha_obs.collect.base import CollectorError
from macha_obs.collect.journal import run_journalctl
from macha_obs.collect.meta import MetaStore
from macha_obs.models import BootReading, Finding, FindingKind, Severity

BOOT_ID_KEY = "boot.id"
EXPECTED_REBOOT_KEY = "boot.expected_reboot"  # value: the boot id whose end was announced
UNEXPECTED_KEY = "boot.unexpected"  # value: the boot id that began unexpectedly
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
# systemd's sd-messages.h: SD_MESSAGE_SHUTDOWN ("System is rebooting."), and
# SD_MESSAGE_UNIT_STARTED, which "Reached target ..." carries with the target in UNIT.
SD_MESSAGE_SHUTDOWN = "98268866d1d54a499c4e98921d93bc40"
SD_MESSAGE_UNIT_STARTED = "39f53479d3a045ac8e11786248231fbf"
SHUTDOWN_TARGETS = frozenset(
    {"shutdown.target", "final.target", "reboot.target", "poweroff.target", "halt.target"}
    | {"kexec.target", "soft-reboot.target"}
)
# the markers are among the last entries of a boot: its tail is enough
TAIL_ENTRIES = 300
PreviousBoot = Callable[[], str | None]  # the previous boot's journal tail as JSON lines


def previous_boot_argv(journal_dir: Path | None) -> list[str]:
    argv = ["journalctl", "--boot=-1", "--output=json", "--no-pager", "--quiet"]
    argv += ["--output-fields=MESSAGE_ID,UNIT,MESSAGE", f"--lines={TAIL_ENTRIES}"]
    return [*argv, f"--directory={journal_dir}"] if journal_dir is not None else argv


def read_previous_boot(journal_dir: Path | None, timeout: float = 10.0) -> PreviousBoot:
    def fetch() -> str | None:
        try:
            return run_journalctl(previous_boot_argv(journal_dir), timeout)
        except CollectorError:
            return None  # no previous boot in the journal: nothing proves it was clean

    return fetch


def ended_cleanly(lines: Iterable[str]) -> bool:
    """True when the journal lines (journalctl -o json) show an orderly shutdown."""
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        message_id = str(entry.get("MESSAGE_ID", ""))
        if message_id == SD_MESSAGE_SHUTDOWN:
            return True
        unit = entry.get("UNIT")
        reached = message_id == SD_MESSAGE_UNIT_STARTED or str(entry.get("MESSAGE", "")).startswith(
            "Reached target"
        )
        if reached and unit in SHUTDOWN_TARGETS:
            return True
    return False


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
        previous_boot: PreviousBoot | None = None,
    ) -> None:
        """`previous_boot` (e.g. `read_previous_boot(journal_dir)`) reads the journal;
        without it only an announced reboot is expected."""
        self.meta = meta
        self.previous_boot = previous_boot
        self.boot_id_file = boot_id_file
        self.boot_time = boot_time
        self.clock = clock

    def collect(self) -> tuple[BootReading, list[Finding]]:
        current = self.boot_id_file.read_text().strip()
        previous = self.meta.get_meta(BOOT_ID_KEY)
        if previous != current:
            expected = self.meta.get_meta(EXPECTED_REBOOT_KEY)
            # the journal is read only for a reboot nobody announced
            if judge_reboot(previous, current, expected) and not self._previous_clean():
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

    def _previous_clean(self) -> bool:
        text = self.previous_boot() if self.previous_boot is not None else None
        return text is not None and ended_cleanly(text.splitlines())
