"""The SQLite handle under every table group: open, transactions, reads, health.

The daemon and several CLI processes open the same state dir at once. Every
read-modify-write runs in a `BEGIN IMMEDIATE` transaction, so two approvers racing for
one approval are serialised by SQLite and exactly one wins (invariant 5).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from macha_obs import statedir
from macha_obs.errors import StateError
from macha_obs.statedir import StateDir

# The -wal file is truncated back to this after a checkpoint: bounded like every state file.
_WAL_LIMIT = 4 * 1024 * 1024
# What every SQLite database file starts with (https://sqlite.org/fileformat.html).
_HEADER = b"SQLite format 3\x00"
# Errors that say the file is no longer the database it was: never cleared by a later
# success (a write to the WAL succeeds over a truncated file).
_LOST_ERRORS = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})


# Tables a new database is created with rows in: derived counters, not history.
_BORN_WITH = frozenset({"intake_totals"})


class StoreError(StateError):
    """The state directory cannot be used."""


def process_owner(pid: int | None = None) -> str:
    """Identify a process by pid and start time, so a reused pid is not mistaken for it."""
    proc = psutil.Process(pid)
    return f"{proc.pid}:{proc.create_time():.3f}"


def owner_alive(owner: str) -> bool:
    pid_text, _, started = owner.partition(":")
    try:
        return process_owner(int(pid_text)) == f"{int(pid_text)}:{float(started):.3f}"
    except (psutil.Error, ValueError):
        return False


def ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _private(path: Path) -> None:
    """State files quote alerts and journal lines: readable by the owner (and group)
    only, whatever the umask or an older release left. SQLite gives its -wal and -shm
    files the database file's mode."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640))
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"{path}: {exc.strerror}") from exc
    for suffix in ("", "-wal", "-shm"):
        target = path.with_name(path.name + suffix)
        with contextlib.suppress(OSError):
            info = os.lstat(target)
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid():
                os.chmod(target, stat.S_IMODE(info.st_mode) & 0o750 | 0o600)


class Database:
    """One connection on state.db, thread-safe within a process. The table groups
    (approvals.py, ledger.py, …) are parts on it; `Store` puts them together."""

    def __init__(
        self,
        state_dir: Path,
        schema: Sequence[str],
        *,
        watched: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.paths = StateDir(Path(state_dir))
        self.state_dir = self.paths.root
        self.clock = clock
        db = self.paths.db
        try:
            self.paths.check()
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
            self.paths.check()
            _private(db)
            for suffix in ("", "-wal", "-shm"):  # SQLite opens these by name
                statedir.refuse_symlink(db.with_name(db.name + suffix))
        except statedir.StateDirError as exc:
            raise StoreError(str(exc)) from exc
        except OSError as exc:
            raise StoreError(f"cannot use state dir {self.state_dir}: {exc.strerror}") from exc
        self._lock = threading.RLock()
        # audit records written inside the transaction in flight (audit.py), and whether
        # its COMMIT went through: a record whose change did not commit is undone
        self._tx_records: list[tuple[Path, dict[str, Any]]] = []
        self._committed = False
        # tables changed by the transaction in flight, noted by temporary triggers
        self._changed: set[str] = set()
        self.write_error: str | None = None
        # a loss that no later success undoes (see `problem`): only a person, restarting
        # the daemon after repairing the file, clears it
        self._lost: str | None = None
        # what the parts ask to hear of: the watched tables a commit changed (the queue's
        # view), and a transaction that did not commit (the audit's undo lines)
        self.on_commit: list[Callable[[set[str]], None]] = []
        self.on_rollback: list[Callable[[], None]] = []
        try:
            self._db = sqlite3.connect(
                db,
                timeout=30.0,
                isolation_level=None,  # we issue BEGIN IMMEDIATE ourselves
                check_same_thread=False,
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: an intent row must be on disk before the side effect it announces
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
            for ddl in schema:
                self._db.executescript(ddl)
            self._watch(watched)
        except sqlite3.Error as exc:
            raise StoreError(f"{db}: {exc}") from exc
        self.owner = process_owner()
        # what the database file was when opened: replaced, truncated or deleted under
        # us, the daemon would write into a file nobody else reads (see `problem`)
        opened = os.stat(db)
        self._identity = (opened.st_dev, opened.st_ino)
        # One descriptor on the file, held as long as the connection, to read its header
        # from (`problem`). Never a fresh open and close: closing any descriptor of a
        # file drops every POSIX lock this process holds on it, SQLite's included
        # (sqlite.org/howtocorrupt.html, 2.2), which lets another process's connection
        # run over ours.
        try:
            self._header_fd: int | None = statedir.open_file(db, os.O_RDONLY)
        except (OSError, statedir.StateDirError) as exc:
            self._db.close()
            raise StoreError(f"{db}: cannot be read: {exc}") from exc

    def _watch(self, tables: Sequence[str]) -> None:
        """Note every write to `tables`, whoever's SQL makes it, for `_after_commit`."""
        self._db.create_function("macha_changed", 1, self._changed.add)
        for table in tables:
            for event in ("INSERT", "UPDATE", "DELETE"):
                self._db.execute(
                    f"CREATE TEMP TRIGGER IF NOT EXISTS {table}_{event.lower()}_noted"
                    f" AFTER {event} ON main.{table} BEGIN SELECT macha_changed('{table}'); END"
                )

    def migrate(self, *steps: Callable[[], None]) -> None:
        """Bring an older database up to date: each part's step, in order."""
        try:
            for step in steps:
                step()
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"{self.paths.db}: {exc}") from exc

    def _after_commit(self, changed: set[str]) -> None:
        for hook in self.on_commit:
            hook(changed)

    def _rolled_back(self) -> None:
        for hook in self.on_rollback:
            hook()

    def script(self, sql: str) -> None:
        """Run DDL outside a transaction (a part's indexes and triggers)."""
        with self._lock:
            self._db.executescript(sql)

    def close(self) -> None:
        with self._lock:
            self._db.close()  # SQLite's locks go with its own descriptors first
            if self._header_fd is not None:
                os.close(self._header_fd)
                self._header_fd = None

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Cursor]:
        """A `BEGIN IMMEDIATE` transaction for modules that keep their own tables here."""
        return self._tx()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._db.cursor()
            self._tx_records = []
            self._committed = False
            try:
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self._note_write_error(exc)
                raise
            try:
                yield cur
            except BaseException as exc:
                # a constraint (an approval carried out twice) is the ledger working
                if isinstance(exc, sqlite3.DatabaseError) and not isinstance(
                    exc, sqlite3.IntegrityError
                ):
                    self._note_write_error(exc)
                with contextlib.suppress(sqlite3.Error):
                    cur.execute("ROLLBACK")
                self._changed.clear()
                self._rolled_back()
                raise
            try:
                cur.execute("COMMIT")
                self._committed = True
            except BaseException as exc:
                # a signal right after the COMMIT ran: it committed if no transaction is open
                self._committed = not (isinstance(exc, sqlite3.Error) or self._db.in_transaction)
                if not self._committed:
                    if isinstance(exc, sqlite3.Error):
                        self._note_write_error(exc)
                    with contextlib.suppress(sqlite3.Error):
                        cur.execute("ROLLBACK")
                    self._changed.clear()
                    self._rolled_back()
                raise
            self._tx_records = []
            self.write_error = None
            if self._changed:
                changed = set(self._changed)
                self._changed.clear()
                self._after_commit(changed)

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """A read for modules that keep their own tables here."""
        return self._query(sql, args)

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _note_write_error(self, exc: sqlite3.Error) -> None:
        self.write_error = str(exc)
        if getattr(exc, "sqlite_errorname", "") in _LOST_ERRORS:
            self._lost = f"{self.paths.db} is not a database any more: {exc}"

    def problem(self) -> str | None:
        """Why this handle no longer holds the state dir's ledger, or None. Checked by
        identity, not just by name: a file replaced, truncated or deleted under a
        running daemon is the silent state loss /readyz must report. Such a loss stays
        reported: SQLite keeps writing its WAL and may checkpoint pages back into a
        truncated file, which then has a size again but is no database (issue 21)."""
        if self._lost is None:
            self._lost = self._file_problem()
        if self._lost is not None:
            return self._lost
        if self.write_error is not None:
            return f"{self.paths.db} cannot be written: {self.write_error}"
        return None

    def _file_problem(self) -> str | None:
        path = self.paths.db
        try:
            now = os.stat(path)
        except FileNotFoundError:
            return f"{path} was deleted while the daemon ran"
        except OSError as exc:
            return f"{path}: {exc.strerror}"
        if (now.st_dev, now.st_ino) != self._identity:
            return f"{path} was replaced while the daemon ran"
        if now.st_size == 0:
            return f"{path} was truncated to zero bytes while the daemon ran"
        if self._header_fd is None:
            return None  # closed: nothing is written through this handle any more
        try:
            header = os.pread(self._header_fd, len(_HEADER), 0)  # the same inode, checked above
        except OSError as exc:
            return f"{path} cannot be read: {exc.strerror}"
        if header != _HEADER:
            return (
                f"{path} is not a database any more (truncated or overwritten while the daemon ran)"
            )
        return None

    def has_history(self) -> bool:
        """The database holds any row at all: every audit record is written with one.
        Bookkeeping a new database is born with (intake_totals: counters of other
        tables' rows, seeded at creation) is no history."""
        tables = [
            r["name"]
            for r in self._query("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not str(r["name"]).startswith("sqlite_") and r["name"] not in _BORN_WITH
        ]
        return any(
            self._query(f'SELECT EXISTS(SELECT 1 FROM "{t}") AS any')[0]["any"]  # noqa: S608
            for t in tables
        )

    def compact(self) -> bool:
        """Give pages freed by retention back to the disk when most of the file is free
        (they are reused anyway; this keeps the file's size honest after a storm), and
        truncate the WAL. True if the file was rewritten."""
        with self._lock:
            pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
            free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
            size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
            vacuum = free * 2 > pages and free * size > 1024 * 1024
            if vacuum:
                self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return vacuum


class Part:
    """A table group on the store's one connection: its DDL beside its queries."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @property
    def clock(self) -> Callable[[], float]:
        return self.db.clock

    @property
    def paths(self) -> StateDir:
        return self.db.paths

    def _tx(self) -> contextlib.AbstractContextManager[sqlite3.Cursor]:
        return self.db.transaction()

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self.db.query(sql, args)
