"""Group commit: concurrent writes share a transaction, and each sees only its own fate."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from macha_obs.store import Store
from macha_obs.store._group_commit import GroupCommitter, _Write


def insert(key: str):
    def fn(cur: sqlite3.Cursor) -> str:
        cur.execute("INSERT INTO meta(key, value) VALUES (?, 'v')", (key,))
        return key

    return fn


def test_writes_queued_behind_a_leader_share_one_commit(store: Store) -> None:
    committer = GroupCommitter(store.db)
    queued = threading.Event()

    def slow_first(cur: sqlite3.Cursor) -> str:
        # hold the leader until the seven followers are queued (no sleeps, no timing)
        queued.wait(10)
        return insert("k0")(cur)

    results: dict[int, str] = {}

    def writer(i: int) -> None:
        results[i] = committer.run(slow_first if i == 0 else insert(f"k{i}"))

    first = threading.Thread(target=writer, args=(0,))
    first.start()
    while not committer._leader:  # the leader has taken its batch of one
        time.sleep(0.001)
    others = [threading.Thread(target=writer, args=(i,)) for i in range(1, 8)]
    for t in others:
        t.start()
    while True:
        with committer._cv:
            if len(committer._queue) == 7:
                break
        time.sleep(0.001)
    queued.set()
    for t in [first, *others]:
        t.join(10)
    assert results == {i: f"k{i}" for i in range(8)}
    assert committer.commits == 2  # the leader's own, then the seven together
    assert all(store.meta.get_meta(f"k{i}") == "v" for i in range(8))


def test_a_failing_write_does_not_undo_its_batch_mates(store: Store) -> None:
    committer = GroupCommitter(store.db)
    # a batch built by hand: no threads needed to test the savepoints
    writes = [_Write(insert("a")), _Write(insert("a")), _Write(insert("b"))]  # 2nd: duplicate key
    committer._write(writes)
    assert [w.error is None for w in writes] == [True, False, True]
    assert isinstance(writes[1].error, sqlite3.IntegrityError)
    assert store.meta.get_meta("a") == "v"
    assert store.meta.get_meta("b") == "v"


def test_an_error_alone_is_raised_and_nothing_is_stored(store: Store) -> None:
    committer = GroupCommitter(store.db)
    committer.run(insert("x"))
    with pytest.raises(sqlite3.IntegrityError):
        committer.run(insert("x"))
    assert committer.run(insert("y")) == "y"
