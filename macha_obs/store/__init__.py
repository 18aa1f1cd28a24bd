"""Durable state: SQLite (WAL) by table group, the JSONL audit logs, and their retention.
The state directory's paths, trust checks and file retention are `macha_obs/statedir/`,
the floor below.

    handle.py         Store: its parts on one connection; `retain` keeps it all bounded
    _db.py            the connection, transactions, health (`problem`); `Part`
    meta.py           store.meta: small key/value state
    approvals.py      store.approvals: the queue for humans (+ queue_view.py)
    ledger.py         store.ledger: intents and outcomes (invariant 6)
    verifications.py  store.verifications: results and the breaker's state (invariant 7)
    outcomes.py       store.outcomes: what became of each proposal (learning)
    audit.py          store.audit: decisions.jsonl, actions.jsonl (invariant 10)
    incidents.py      the webhook inbox, seen alerts, incidents (SQL only; intake's
                      IncidentStore is its part)

A consumer takes the part it needs (or a Protocol of it), not the whole handle.
"""

from macha_obs.statedir.retention import Retention, RetentionReport, RetentionSettings
from macha_obs.store._db import StoreError, owner_alive, process_owner
from macha_obs.store.approvals import ApprovalError, Approvals
from macha_obs.store.audit import Audit
from macha_obs.store.handle import Store
from macha_obs.store.ledger import Ledger
from macha_obs.store.meta import Meta
from macha_obs.store.outcomes import Outcomes
from macha_obs.store.verifications import Verifications

__all__ = [
    "ApprovalError",
    "Approvals",
    "Audit",
    "Ledger",
    "Meta",
    "Outcomes",
    "Retention",
    "RetentionReport",
    "RetentionSettings",
    "Store",
    "StoreError",
    "Verifications",
    "owner_alive",
    "process_owner",
]
