"""Durable state: SQLite (WAL) by table group, the JSONL audit logs, and their retention.
The state directory's paths, trust checks and file retention are `macha_obs/statedir/`,
the floor below.

    handle.py      Store: the table groups put together; `retain` keeps it all bounded
    _db.py         the connection, transactions, health (`problem`)
    meta.py        small key/value state
    approvals.py   the queue for humans (+ queue_view.py: approval_queue.json)
    ledger.py      intents and outcomes (invariant 6)
    breaker.py     verifications and the breaker's persisted state (invariant 7)
    incidents.py   the webhook inbox, seen alerts, incidents (SQL only)
    outcomes.py    what became of each proposal per problem and fix (learning)
    audit.py       decisions.jsonl, actions.jsonl (invariant 10)
"""

from macha_obs.statedir.retention import Retention, RetentionReport, RetentionSettings
from macha_obs.store._db import StoreError, owner_alive, process_owner
from macha_obs.store.approvals import ApprovalError
from macha_obs.store.handle import Store

__all__ = [
    "ApprovalError",
    "Retention",
    "RetentionReport",
    "RetentionSettings",
    "Store",
    "StoreError",
    "owner_alive",
    "process_owner",
]
