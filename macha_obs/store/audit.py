"""The JSONL audit logs (decisions.jsonl, actions.jsonl): one fsynced line per record.

Several processes append at once (the daemon, `macha-approve`), and retention rotates
the files by rename (`retention.py`). A writer locks the file, then checks that the name
still points at what it opened; if it was rotated meanwhile it opens the new file. So a
record is whole, in the file current when it was written, and never lost.

A decision and its record are one step (`audit_in`): the line is written and fsynced
inside the transaction that makes the decision, before its COMMIT. A line that cannot be
written rolls the decision back; a decision that then fails to commit gets a second
line, `not_recorded`, naming the one it undoes. So the database never holds a decision
the audit does not, and the audit never claims one the database lost without saying so.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from macha_obs import statedir
from macha_obs.store._db import Database, Part, ts

_log = logging.getLogger(__name__)


def append_line(log: Path, data: bytes) -> None:
    """Append `data` (one line) to `log` and fsync it before returning (invariant 10)."""
    while True:
        fd = statedir.open_file(log, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # whole lines, even from several processes
            mine = os.fstat(fd)
            try:
                now = os.lstat(log)
            except FileNotFoundError:
                continue  # rotated away between open and lock: open the new one
            if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
                continue
            size = mine.st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                # a crash tore the last line: start on a fresh one, so this record
                # stays whole and readable
                data = b"\n" + data
            os.write(fd, data)
            os.fsync(fd)
            return
        finally:
            os.close(fd)


def count_lines(paths: list[Path]) -> int:
    """Lines in these files, without reading them whole; missing files count 0."""
    total = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError), path.open("rb") as fh:
            total += sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 16), b""))
    return total


class Audit(Part):
    """decisions.jsonl and actions.jsonl; a record written in a transaction that then
    did not commit is undone by a line that says so."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        db.on_rollback.append(self._undo)

    @property
    def decisions_log(self) -> Path:
        return self.paths.decisions_log

    @property
    def actions_log(self) -> Path:
        return self.paths.actions_log

    @property
    def orchestrator_log(self) -> Path:
        return self.paths.orchestrator_log

    def audit(self, log: Path, record: Mapping[str, Any]) -> None:
        """Append one JSON line and fsync it before returning (invariant 10)."""
        line = json.dumps({"ts": ts(self.clock()).isoformat(), **record}, default=str)  # type: ignore[union-attr]
        append_line(log, (line.replace("\n", " ") + "\n").encode())

    def audit_in(self, log: Path, record: Mapping[str, Any]) -> None:
        """Append `record` as part of the transaction in flight (see the module doc)."""
        self.audit(log, record)
        self.db._tx_records.append((log, dict(record)))

    def _undo(self) -> None:
        records, self.db._tx_records = self.db._tx_records, []
        for log, record in records:
            undo = {"event": "not_recorded", "undoes": record.get("event")}
            keep = ("incident_id", "approval_id", "action_id")
            undo |= {k: record[k] for k in keep if k in record}
            try:
                self.audit(log, undo)
            except Exception as exc:  # the log took the line it undoes; say it here
                _log.error("%s: cannot record that %s was not recorded: %s", log, undo, exc)

    def audit_decision(self, record: Mapping[str, Any]) -> None:
        self.audit(self.decisions_log, record)

    def audit_action(self, record: Mapping[str, Any]) -> None:
        self.audit(self.actions_log, record)

    def audit_records(self) -> int:
        """How many records the audit logs hold, rotated files included."""
        return count_lines([p for log in self.paths.audit_logs for p in self.paths.history(log)])
