"""Journal: `journalctl -o json` after a persisted cursor, so no entry is counted twice.

Each read is bounded (`max_entries` forward from the cursor); a backlog is caught up over
the following cycles rather than in one long read.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from macha_obs.collect.base import CollectorError
from macha_obs.collect.meta import MetaStore
from macha_obs.models import (
    Finding,
    FindingKind,
    InvalidUnitName,
    JournalReading,
    validate_unit_name,
)

CURSOR_KEY = "journal.cursor"
ERROR_PRIORITY = 3  # syslog "err": emerg, alert, crit and err count as errors
OTHER = "other"  # label for entries that name no unit: keeps the label set bounded
FIELDS = "MESSAGE,PRIORITY,_SYSTEMD_UNIT,UNIT,SYSLOG_IDENTIFIER,_COMM"
MESSAGE_MAX = 300

Fetch = Callable[[Sequence[str], float], str]
# Another reader of the same entries (the intrusion collector's auth-failure tap): one
# cursor, one read, every entry seen once by each.
EntrySink = Callable[[Sequence["Entry"]], None]


@dataclass(frozen=True)
class Entry:
    cursor: str
    unit: str
    priority: int
    message: str
    identifier: str = ""  # SYSLOG_IDENTIFIER
    comm: str = ""  # _COMM, set by journald (the sender cannot choose it)


def journal_argv(journal_dir: Path | None, cursor: str | None, max_entries: int) -> list[str]:
    argv = ["journalctl", "--output=json", "--no-pager", "--quiet", f"--output-fields={FIELDS}"]
    if journal_dir is not None:
        argv.append(f"--directory={journal_dir}")
    # With --after-cursor, --lines counts forward from the cursor; without, from the tail.
    if cursor:
        argv.append(f"--after-cursor={cursor}")
    return [*argv, f"--lines={max_entries}"]


class CursorInvalid(CollectorError):
    """The journal no longer knows the cursor (rotated, vacuumed, another journal)."""


def run_journalctl(argv: Sequence[str], timeout: float) -> str:
    try:
        done = subprocess.run(
            list(argv), capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError as exc:
        raise CollectorError("journalctl is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise CollectorError(f"journalctl did not finish within {timeout:g}s") from exc
    stderr = done.stderr.decode(errors="replace").strip()
    if done.returncode != 0:
        if "cursor" in stderr.lower():
            raise CursorInvalid(stderr[-300:])
        raise CollectorError(f"journalctl exited {done.returncode}: {stderr[-300:]}")
    return done.stdout.decode(errors="replace")


def _message(value: Any) -> str:
    # journald sends non-UTF-8 (or binary) messages as an array of byte values
    if isinstance(value, list):
        value = bytes(v for v in value if isinstance(v, int) and 0 <= v < 256).decode(
            errors="replace"
        )
    text = str(value or "").replace("\n", " ")
    # "…" marks the cut, so the prompt's redaction can tell a secret's cut-off prefix
    return text if len(text) <= MESSAGE_MAX else text[: MESSAGE_MAX - 1] + "…"


def _unit_of(record: dict[str, Any]) -> str:
    # UNIT names the subject of systemd's own messages ("Failed to start x.service"),
    # whose _SYSTEMD_UNIT is init.scope: it says more, so it comes first.
    for key in ("UNIT", "_SYSTEMD_UNIT"):
        value = record.get(key)
        if isinstance(value, str) and value:
            try:
                return validate_unit_name(value)
            except InvalidUnitName:
                continue
    return OTHER


def parse_entries(text: str) -> list[Entry]:
    """journalctl JSON lines → entries; a line that is not a JSON object is skipped."""
    entries = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("__CURSOR"), str):
            continue
        try:
            priority = int(record.get("PRIORITY", 6))
        except (TypeError, ValueError):
            priority = 6
        identifier, comm = record.get("SYSLOG_IDENTIFIER"), record.get("_COMM")
        entries.append(
            Entry(
                record["__CURSOR"],
                _unit_of(record),
                priority,
                _message(record.get("MESSAGE")),
                identifier[:64] if isinstance(identifier, str) else "",
                comm[:64] if isinstance(comm, str) else "",
            )
        )
    return entries


def count_errors(entries: Iterable[Entry]) -> dict[str, int]:
    return dict(Counter(e.unit for e in entries if e.priority <= ERROR_PRIORITY))


def summarize_errors(errors: dict[str, int], burst: int) -> list[Finding]:
    return [
        Finding(
            kind=FindingKind.JOURNAL_ERROR_BURST,
            subject=unit,
            unit=None if unit == OTHER else unit,
            summary=f"{count} error entries in the journal from {unit} since the last read",
            details={"errors": count},
        )
        for unit, count in sorted(errors.items())
        if count >= burst
    ]


class JournalCollector:
    name = "journal"

    def __init__(
        self,
        meta: MetaStore,
        *,
        journal_dir: Path | None = None,
        error_burst: int = 20,
        max_entries: int = 10_000,
        initial_entries: int = 200,
        recent_per_unit: int = 5,
        max_units: int = 500,
        timeout: float = 20.0,  # below collect_all's bound, so journalctl's own error wins
        fetch: Fetch = run_journalctl,
        sinks: Sequence[EntrySink] = (),
    ) -> None:
        self.meta = meta
        self.journal_dir = journal_dir
        self.error_burst = error_burst
        self.max_entries = max_entries
        self.initial_entries = initial_entries
        self.recent_per_unit = recent_per_unit
        self.max_units = max_units
        self.timeout = timeout
        self.fetch = fetch
        self.sinks = tuple(sinks)
        self._continued = False
        self._totals: Counter[str] = Counter()
        self._entries_total = 0  # a counter: Prometheus' increase() sees every read
        self._recent: dict[str, list[str]] = {}

    def _read(self) -> list[Entry]:
        # Without a cursor (first start, or the journal lost it) only the newest few entries
        # are read: old history must not arrive as one burst of errors.
        fresh = journal_argv(self.journal_dir, None, self.initial_entries)
        cursor = self.meta.get_meta(CURSOR_KEY)
        self._continued = False  # the sinks count only what follows a cursor: no history
        if not cursor:
            return parse_entries(self.fetch(fresh, self.timeout))
        try:
            argv = journal_argv(self.journal_dir, cursor, self.max_entries)
            entries = parse_entries(self.fetch(argv, self.timeout))
        except CursorInvalid:
            return parse_entries(self.fetch(fresh, self.timeout))
        self._continued = True
        return entries

    def _bounded_unit(self, unit: str) -> str:
        # past max_units distinct units, new ones fold into OTHER: the series count stays bounded
        if unit in self._totals or len(self._totals) < self.max_units:
            return unit
        return OTHER

    def collect(self) -> tuple[JournalReading, list[Finding]]:
        entries = self._read()
        errors: Counter[str] = Counter()
        for unit, count in count_errors(entries).items():
            bounded = self._bounded_unit(unit)
            errors[bounded] += count
            self._totals[bounded] += count  # at once: the bound sees this cycle's units too
        for entry in entries:
            unit = self._bounded_unit(entry.unit)
            kept = self._recent.pop(unit, [])  # re-inserted last: the dict stays in LRU order
            self._recent[unit] = [*kept, entry.message][-self.recent_per_unit :]
        while len(self._recent) > self.max_units:
            del self._recent[next(iter(self._recent))]
        if entries:  # only after the whole read is parsed: a failed cycle re-reads it
            self.meta.set_meta(CURSOR_KEY, entries[-1].cursor)
            # after the cursor moved: no entry reaches them twice; and only entries that
            # follow a cursor: a first read's tail is history, not this run's events
            for sink in self.sinks if self._continued else ():
                sink(entries)
        self._entries_total += len(entries)
        reading = JournalReading(
            entries_read=len(entries),
            entries_read_total=self._entries_total,
            errors_by_unit=dict(errors),
            errors_total_by_unit=dict(self._totals),
            recent_messages=dict(self._recent),
        )
        return reading, summarize_errors(dict(errors), self.error_burst)
