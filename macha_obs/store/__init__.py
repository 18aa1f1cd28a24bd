"""Durable state: SQLite (WAL) by table group, the JSONL audit logs, and `StateDir`,
which owns every path in the state directory and its retention.

    handle.py      Store: the table groups put together; `retain` keeps it all bounded
    _db.py         the connection, transactions, health (`problem`)
    meta.py        small key/value state
    approvals.py   the queue for humans (+ queue_view.py: approval_queue.json)
    ledger.py      intents and outcomes (invariant 6)
    breaker.py     verifications and the breaker's persisted state (invariant 7)
    incidents.py   the webhook inbox, seen alerts, incidents (SQL only)
    outcomes.py    what became of each proposal per problem and fix (learning)
    audit.py       decisions.jsonl, actions.jsonl (invariant 10)
    statedir.py    the layout and the trust checks on every state file
    retention.py   rotation by rename, snapshot count, retention settings
"""

from macha_obs.store._db import StoreError, owner_alive, process_owner
from macha_obs.store.approvals import ApprovalError
from macha_obs.store.handle import Store
from macha_obs.store.retention import Retention, RetentionReport, RetentionSettings
from macha_obs.store.statedir import StateDir, StateDirError

__all__ = [
    "ApprovalError",
    "Retention",
    "RetentionReport",
    "RetentionSettings",
    "StateDir",
    "StateDirError",
    "Store",
    "StoreError",
    "owner_alive",
    "process_owner",
]
