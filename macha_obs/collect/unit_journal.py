"""What systemd itself (PID 1) wrote about one unit since a time: the jobs run on it.

Verification asks it whether a person changed the unit while the sidecar watched its
fix (remediate/verify.py): the executor only ever submits restart and start jobs, so a
`stop` job on the unit is a person's (or another tool's) hand. Only PID 1's entries are
read (`_PID=1`, a field journald sets itself, which a service cannot forge); the unit
name reaches the argv only as a validated name.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from macha_obs.collect.journal import Fetch, run_journalctl
from macha_obs.models import validate_unit_name

FIELDS = "MESSAGE,JOB_TYPE,JOB_RESULT,UNIT"
MAX_ENTRIES = 500
# jobs the sidecar's executor never submits (execute/systemd.py submits start/restart)
_NOT_OURS = frozenset({"stop"})


def unit_journal_argv(journal_dir: Path | None, unit: str, since: float) -> list[str]:
    argv = ["journalctl", "--output=json", "--no-pager", "--quiet", f"--output-fields={FIELDS}"]
    if journal_dir is not None:
        argv.append(f"--directory={journal_dir}")
    return [
        *argv,
        f"--since=@{since:.6f}",
        f"--lines={MAX_ENTRIES}",
        "_PID=1",
        f"UNIT={validate_unit_name(unit)}",
    ]


def parse_entries(text: str) -> list[dict[str, Any]]:
    """journalctl's JSON lines; a malformed line is skipped. Pure."""
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def person_job(entries: Sequence[dict[str, Any]]) -> str | None:
    """The first job on the unit the sidecar never submits, as a person reads it. Pure."""
    for entry in entries:
        job = entry.get("JOB_TYPE")
        if isinstance(job, str) and job in _NOT_OURS:
            message = entry.get("MESSAGE")
            text = message if isinstance(message, str) else f"a {job} job"
            return f"a {job} job the sidecar did not submit: {text[:120]}"
    return None


class PersonCheck:
    """`Verifier`'s seam: what a person did to `unit` since `since`, from the journal."""

    def __init__(
        self, journal_dir: Path | None, *, timeout: float = 10.0, fetch: Fetch = run_journalctl
    ) -> None:
        self.journal_dir = journal_dir
        self.timeout = timeout
        self.fetch = fetch

    def __call__(self, unit: str, since: float) -> str | None:
        argv = unit_journal_argv(self.journal_dir, unit, since)
        return person_job(parse_entries(self.fetch(argv, self.timeout)))
