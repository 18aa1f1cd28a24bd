"""Journal collector: parsing on literals, the cursor on fixture data, the real journal of
the systemd sandbox (injected with --directory)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from macha_obs.collect.journal import (
    CURSOR_KEY,
    OTHER,
    CursorInvalid,
    JournalCollector,
    count_errors,
    journal_argv,
    parse_entries,
)
from macha_obs.collect.meta import MemoryMeta
from macha_obs.models import FindingKind
from tests.harness.eyes_support import fixture_text
from tests.harness.labsd import LabSystemd, wait_until
from tests.harness.systemd_fixtures import UnitFactory


def test_parse_entries_attributes_units_and_skips_junk() -> None:
    entries = parse_entries(fixture_text("journal/entries.jsonl"))
    assert [e.cursor for e in entries] == [f"s=a;i={i}" for i in range(1, 8)]
    # systemd's own line about nginx (UNIT=) counts for nginx, not for init.scope
    assert [e.unit for e in entries] == [
        "nginx.service",
        "nginx.service",
        "nginx.service",
        "nginx.service",
        OTHER,
        "app.service",
        OTHER,
    ]
    assert entries[5].message == "hi\ufffd"  # a byte-array MESSAGE, decoded


def test_count_errors_priority_err_and_worse() -> None:
    counts = count_errors(parse_entries(fixture_text("journal/entries.jsonl")))
    assert counts == {"nginx.service": 2, OTHER: 2, "app.service": 1}


def test_journal_argv() -> None:
    assert journal_argv(None, None, 5)[-1] == "--lines=5"
    argv = journal_argv(Path("/j"), "s=1", 10)
    assert "--directory=/j" in argv
    assert "--after-cursor=s=1" in argv
    assert all(not a.startswith("-D ") for a in argv)


class FakeJournal:
    """Plays journalctl: the entries after the cursor given, at most --lines of them."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], timeout: float) -> str:
        self.calls.append(list(argv))
        limit = int(next(a for a in argv if a.startswith("--lines=")).split("=")[1])
        cursor = next((a.split("=", 1)[1] for a in argv if a.startswith("--after-cursor=")), None)
        cursors = [json.loads(line)["__CURSOR"] for line in self.lines]
        if cursor is None:
            return "\n".join(self.lines[-limit:] if limit else [])
        if cursor not in cursors:
            raise CursorInvalid("Failed to seek to cursor: Invalid argument")
        start = cursors.index(cursor) + 1
        return "\n".join(self.lines[start : start + limit])


def _line(i: int, priority: int = 3, unit: str = "app.service") -> str:
    return json.dumps(
        {"__CURSOR": f"c{i}", "PRIORITY": str(priority), "_SYSTEMD_UNIT": unit, "MESSAGE": f"m{i}"}
    )


def test_cursor_persists_and_nothing_is_counted_twice() -> None:
    journal = FakeJournal([_line(i) for i in range(3)])
    meta = MemoryMeta()
    collector = JournalCollector(meta, fetch=journal, initial_entries=100)
    reading, _ = collector.collect()
    assert reading.errors_by_unit == {"app.service": 3}
    assert meta.get_meta(CURSOR_KEY) == "c2"
    reading, _ = collector.collect()  # nothing new
    assert reading.entries_read == 0
    assert reading.errors_by_unit == {}
    assert reading.errors_total_by_unit == {"app.service": 3}
    journal.lines += [_line(3), _line(4, priority=6)]
    # a new collector (a restarted sidecar) continues from the stored cursor
    reading, _ = JournalCollector(meta, fetch=journal).collect()
    assert (reading.entries_read, reading.errors_by_unit) == (2, {"app.service": 1})
    assert "--after-cursor=c2" in journal.calls[-1]


def test_reads_are_bounded_and_catch_up() -> None:
    journal = FakeJournal([_line(i) for i in range(10)])
    meta = MemoryMeta()
    meta.set_meta(CURSOR_KEY, "c0")
    collector = JournalCollector(meta, fetch=journal, max_entries=4)
    readings = [collector.collect()[0] for _ in range(4)]
    assert [r.entries_read for r in readings] == [4, 4, 1, 0]
    # the total only grows: a counter that increase() reads over any window
    assert [r.entries_read_total for r in readings] == [4, 8, 9, 9]
    assert collector.collect()[0].errors_total_by_unit == {"app.service": 9}


def test_lost_cursor_restarts_from_the_tail() -> None:
    journal = FakeJournal([_line(i) for i in range(5)])
    meta = MemoryMeta()
    meta.set_meta(CURSOR_KEY, "vacuumed-away")
    reading, _ = JournalCollector(meta, fetch=journal, initial_entries=2).collect()
    assert reading.entries_read == 2
    assert meta.get_meta(CURSOR_KEY) == "c4"


def test_burst_finding_and_recent_messages() -> None:
    lines = [_line(i) for i in range(25)] + [_line(25, 6, "db.service")]
    collector = JournalCollector(
        MemoryMeta(),
        fetch=FakeJournal(lines),
        error_burst=20,
        initial_entries=100,
        recent_per_unit=3,
    )
    reading, findings = collector.collect()
    assert [(f.kind, f.unit) for f in findings] == [
        (FindingKind.JOURNAL_ERROR_BURST, "app.service")
    ]
    assert reading.recent_messages == {"app.service": ["m22", "m23", "m24"], "db.service": ["m25"]}


def test_unit_label_set_is_bounded() -> None:
    lines = [_line(i, unit=f"u{i}.service") for i in range(5)]
    collector = JournalCollector(MemoryMeta(), fetch=FakeJournal(lines), max_units=2)
    reading, _ = collector.collect()
    assert reading.errors_total_by_unit == {"u0.service": 1, "u1.service": 1, OTHER: 3}


# ------------------------------------------------------------------ the real journal


@pytest.mark.systemd
def test_real_journal_errors_counted_once(
    systemd_container: LabSystemd, unit_factory: UnitFactory
) -> None:
    marker = f"eyes-{id(systemd_container)}"
    unit = unit_factory(
        "labsd-eyes-errlog.service",
        # "<3>" makes journald store the line at priority err (SyslogLevelPrefix)
        "[Service]\nType=oneshot\n"
        f'ExecStart=/bin/sh -c \'echo "<3>{marker} a"; echo "<3>{marker} b"\'\n',
    )
    meta = MemoryMeta()
    collector = JournalCollector(meta, journal_dir=systemd_container.journal_dir, timeout=20)
    collector.collect()  # the cursor now sits at the tail
    systemd_container.run("systemctl", "start", unit, check=False)
    assert wait_until(lambda: f"{marker} b" in systemd_container.journal(unit), timeout=10)
    reading, _ = collector.collect()
    assert reading.errors_by_unit.get(unit) == 2
    assert any(marker in m for m in reading.recent_messages[unit])
    again, _ = collector.collect()
    assert unit not in again.errors_by_unit
    assert again.errors_total_by_unit[unit] == 2
