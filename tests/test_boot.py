"""A reboot is unexpected only when nobody announced it and the previous boot's journal
shows no orderly shutdown: a clean `reboot` is expected, a crash still is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from macha_obs.collect.boot import (
    BOOT_ID_KEY,
    EXPECTED_REBOOT_KEY,
    BootCollector,
    ended_cleanly,
    previous_boot_argv,
    read_previous_boot,
)
from macha_obs.collect.meta import MemoryMeta
from macha_obs.models import FindingKind

JOURNAL = Path(__file__).parent / "fixtures" / "journal"
CLEAN = (JOURNAL / "previous_boot_clean.jsonl").read_text()
CRASH = (JOURNAL / "previous_boot_crash.jsonl").read_text()


def rebooted(tmp_path: Path, previous_boot: str | None, *, announced: bool = False) -> bool:
    """A collector that last saw boot `old` and now runs in boot `new`: unexpected?"""
    meta = MemoryMeta()
    meta.set_meta(BOOT_ID_KEY, "old")
    if announced:
        meta.set_meta(EXPECTED_REBOOT_KEY, "old")
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("new\n")
    collector = BootCollector(
        meta,
        boot_id_file=boot_id,
        boot_time=lambda: 1000.0,
        clock=lambda: 1060.0,
        previous_boot=lambda: previous_boot,
    )
    reading, findings = collector.collect()
    assert reading.unexpected_reboot == bool(findings)
    assert all(f.kind is FindingKind.UNEXPECTED_REBOOT for f in findings)
    return reading.unexpected_reboot


def test_a_clean_shutdown_in_the_previous_boots_journal_is_recognised() -> None:
    assert ended_cleanly(CLEAN.splitlines())


def test_a_crash_is_not_a_clean_shutdown_even_after_a_journald_restart() -> None:
    # "Journal stopped" also comes from restarting journald mid-boot: no marker
    assert not ended_cleanly(CRASH.splitlines())
    assert not ended_cleanly(["not json", "[1, 2]", ""])


@pytest.mark.parametrize(
    "entry",
    [
        '{"MESSAGE_ID": "98268866d1d54a499c4e98921d93bc40", "MESSAGE": "System is powering down."}',
        '{"MESSAGE": "Reached target reboot.target - System Reboot.", "UNIT": "reboot.target"}',
        '{"MESSAGE_ID": "39f53479d3a045ac8e11786248231fbf", "UNIT": "kexec.target"}',
    ],
)
def test_each_shutdown_marker_counts(entry: str) -> None:
    assert ended_cleanly([entry])


def test_a_clean_reboot_is_not_unexpected(tmp_path: Path) -> None:
    assert not rebooted(tmp_path, CLEAN)


def test_a_crash_is_still_unexpected(tmp_path: Path) -> None:
    assert rebooted(tmp_path, CRASH)


def test_an_unreadable_journal_proves_nothing(tmp_path: Path) -> None:
    assert rebooted(tmp_path, None)


def test_an_announced_reboot_is_expected_without_the_journal(tmp_path: Path) -> None:
    assert not rebooted(tmp_path, CRASH, announced=True)


def test_previous_boot_argv_reads_the_tail_of_boot_minus_one(tmp_path: Path) -> None:
    argv = previous_boot_argv(tmp_path)
    assert argv[0] == "journalctl"
    assert "--boot=-1" in argv
    assert "--output=json" in argv
    assert f"--directory={tmp_path}" in argv


def test_real_journalctl_without_a_previous_boot_gives_none(tmp_path: Path) -> None:
    # the real binary on an empty journal directory: no boot -1, so no proof of a clean end
    assert read_previous_boot(tmp_path)() is None
