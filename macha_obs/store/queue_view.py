"""`approval_queue.json`: the seed's read-only view of the pending approvals.

The database is the truth; this file is rewritten from it after every committed change
to the queue (enqueue, approve, reject, expire, settle, cancel) so tools and people can
read the queue without SQLite. Editing it does nothing, and the next change overwrites
it. `macha-approve list --json` gives the same items.

Rewritten whole (temporary file, fsync, rename, directory fsync): a reader, or a crash
mid-rewrite, sees the old view or the new one, never a torn file. The daemon and the
CLI may both rewrite it; an flock on the state directory orders them, and each reads the
table only once it holds the lock, so the last rewrite shows the latest committed queue.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Sequence

from macha_obs.models import Approval
from macha_obs.statedir import StateDir, write_atomic

VERSION = 1


def render(pending: Sequence[Approval]) -> bytes:
    """The view's bytes: pending items, oldest first, as `macha-approve list --json` has them."""
    doc = {
        "version": VERSION,
        "note": "read-only view of state.db's pending approvals; edits here do nothing",
        "pending": [a.model_dump(mode="json") for a in pending],
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def write(paths: StateDir, pending: Callable[[], Sequence[Approval]]) -> None:
    """Rewrite the view from `pending()`, read under the view's lock."""
    dir_fd = os.open(paths.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        write_atomic(paths.approval_queue, render(pending()))
    finally:
        os.close(dir_fd)  # releases the lock


def read(paths: StateDir) -> list[dict[str, object]]:
    """The pending items the view shows (for tests and tools; never for decisions)."""
    data = json.loads(paths.approval_queue.read_bytes())
    pending: list[dict[str, object]] = data["pending"]
    return pending
