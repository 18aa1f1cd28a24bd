"""systemd over D-Bus, from one killable child process.

- `child.py`: the D-Bus names, the transient-error rule and the one launcher (`Child`)
- `worker.py`: the child itself (stdlib + pystemd's C bus only), run as a script
- `bus.py`: `SystemdBus`, the typed calls the executor and collectors use (`IsolatedBus`)
- `events.py`: `UnitWatcher`, unit state changes from the same child, debounced

Nothing is imported here: the child imports `child.py` by its package path and must not
load the parent's heavier modules (pydantic) on the way.
"""
