"""Group commit: concurrent writers share one transaction, and so one fsync.

The webhook must not answer 2xx before its delivery is committed with synchronous=FULL,
and one fsync per delivery caps a single-alert stream at the disk's fsync rate. Here the
first writer to arrive becomes the leader: it takes every write queued so far, runs each
in its own SAVEPOINT (one failing write does not undo the others) inside a single
transaction, commits once, and wakes the writers with their results. Writers that arrive
meanwhile queue for the next leader. Nobody returns before their write is committed.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from macha_obs.store._db import Database

T = TypeVar("T")


@dataclass(eq=False)
class _Write(Generic[T]):
    fn: Callable[[sqlite3.Cursor], T]
    done: bool = False
    result: Any = None
    error: BaseException | None = field(default=None)


class GroupCommitter:
    def __init__(self, store: Database, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        self._cv = threading.Condition()
        self._queue: list[_Write[Any]] = []
        self._leader = False
        self.commits = 0  # transactions committed, for tests and the benchmark

    def run(self, fn: Callable[[sqlite3.Cursor], T]) -> T:
        """Run `fn(cursor)` in a committed transaction, possibly shared; return its result."""
        write: _Write[T] = _Write(fn)
        with self._cv:
            self._queue.append(write)
        while True:
            with self._cv:
                while not write.done and self._leader:
                    self._cv.wait()
                if write.done:
                    break
                # nobody is writing: lead the next batch (ours is in it, unless the queue
                # is longer than a batch; then we loop and lead or wait again)
                self._leader = True
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            self._write(batch)
        if write.error is not None:
            raise write.error
        result: T = write.result
        return result

    def _write(self, batch: list[_Write[Any]]) -> None:
        failure: BaseException | None = None
        try:
            with self.store.transaction() as cur:
                if len(batch) == 1:  # alone: its failure rolls back the transaction itself
                    batch[0].result = batch[0].fn(cur)
                for w in batch if len(batch) > 1 else ():
                    cur.execute("SAVEPOINT w")
                    try:
                        w.result = w.fn(cur)
                    except Exception as exc:
                        cur.execute("ROLLBACK TO w")
                        w.error = exc
                    cur.execute("RELEASE w")
            self.commits += 1
        except BaseException as exc:  # the commit itself failed: nobody's write is stored
            failure = exc
        with self._cv:
            for w in batch:
                if failure is not None:
                    w.error = failure
                w.done = True
            self._leader = False
            self._cv.notify_all()
