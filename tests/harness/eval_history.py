"""The operator's history for the evaluation's "with history" sidecars.

The history is what a simulated operator taught the state directory (bench/eval.py's
training): the learned outcomes (fix_outcomes), the decided approvals and the ledger. The
incidents the training left open are not part of it: on a real host they resolved long
before the next fault, and left open a model mode analyses them first while the case's own
incident waits behind them.
"""

from __future__ import annotations

from pathlib import Path

from macha_obs.intake.incidents import IncidentStore
from macha_obs.store import Store


def close_open_incidents(state: Path) -> int:
    """Resolve every open incident in `state` (a copy no sidecar runs on) through the
    store's own API; everything else stays. How many."""
    with Store(state) as store:
        incidents = IncidentStore(store)
        open_ids = [s.incident.id for s in incidents.open_incidents()]
        for incident_id in open_ids:
            incidents.resolve(incident_id)
    return len(open_ids)
