"""Test support, in one place; the test modules beside this package only test.

- the lab systemd: `labsd.py` (PID 1 in throw-away namespaces over an overlay of `/`),
  `systemd_fixtures.py` (its pytest fixtures), `real.py` (a real component that cannot
  run is a skip on a laptop and a failure under CI)
- the stack: `stack.py` (Prometheus, Alertmanager, promtool on loopback), `stack_fixtures.py`
- the model: `llm_fixtures.py` (the real small model), `ollama_shim.py` (Ollama's wire
  format in front of it)
- the daemon: `daemon_support.py`, `sidecar_support.py`, `receiver_support.py`,
  `eyes_support.py`; `crash_worker.py` (a process to kill -9)
- the NixOS module: `nix_support.py` (the real module system, unit rendering, polkit),
  `nixpkgs_lib.py` (where nixpkgs' lib is found: NIXPKGS_LIB, ../shared, a pinned download)
- fakes on the seams: `recording.py` (an executor that records, a model held on an event)

Integration tests carry a marker (`systemd`, `stack`, `llm`): `pytest -m "not systemd and
not stack and not llm"` leaves out every test that needs the lab systemd, the stack or the
model.
"""
