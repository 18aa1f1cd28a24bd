"""`daemon.Sidecar.run`: the daemon's lifecycle belongs to one object (STYLE 17).

The parts are small recording fakes on the Sidecar's own seams; the real parts under a
real `serve` are the subject of test_e2e.py, test_health.py and the stack tests.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading

from macha_obs.daemon import Extra, Notifier, Sidecar, wait_for


class Part:
    def __init__(self, name: str, said: list[str], *, stops: bool | None = None) -> None:
        self.name, self.said, self.stops = name, said, stops

    def start(self) -> None:
        self.said.append(f"start {self.name}")

    def stop(self, timeout: float) -> bool | None:
        self.said.append(f"stop {self.name} {timeout:g}")
        return self.stops

    def healthy(self) -> bool:
        return True


class Threads:
    def __init__(self, said: list[str]) -> None:
        self.said = said
        self.stopping = threading.Event()

    def adopt(self) -> list[str]:
        self.said.append("adopt")
        return ["macha-orchestrator"]


def sidecar(said: list[str], *, lanes_stop: bool, pull_stop: bool) -> Sidecar:
    return Sidecar(
        lanes=Part("lanes", said, stops=lanes_stop),
        loop=Part("loop", said),
        threads=Threads(said),
        notifier=Notifier({}),  # no NOTIFY_SOCKET: sd_notify says nothing
        stop_listening=lambda timeout: said.append(f"stop listening {timeout:g}"),
        status="observe on 127.0.0.1:9847",
        serving="serving",
        interrupt=lambda why: said.append(f"interrupt: {why}"),
        extras=[
            Extra("unit watcher", Part("watcher", said), 1.0),
            Extra("alertmanager pull", Part("pull", said, stops=pull_stop), 2.0),
        ],
        closers=[lambda: said.append("close executor"), lambda: said.append("release lock")],
    )


def test_run_starts_in_order_waits_and_stops_in_reverse() -> None:
    said: list[str] = []
    stop = threading.Event()
    stop.set()  # a SIGTERM that came as soon as it was up
    sidecar(said, lanes_stop=True, pull_stop=True).run(stop)
    assert said == [
        "start lanes",
        "start loop",
        "start watcher",
        "start pull",
        "adopt",
        "stop pull 2",
        "stop watcher 1",
        "stop loop 1",
        "stop lanes 7",
        "stop listening 1",
        "close executor",
        "release lock",
    ]


def test_an_action_still_running_at_stop_is_recorded_interrupted(caplog) -> None:
    said: list[str] = []
    stop = threading.Event()
    stop.set()
    side = sidecar(said, lanes_stop=False, pull_stop=False)
    side.run(stop)
    assert "interrupt: the daemon was stopped before the action finished" in said
    assert said.index("stop lanes 7") < said.index(
        "interrupt: the daemon was stopped before the action finished"
    )
    assert side.threads.stopping.is_set()
    assert "alertmanager pull: still busy at shutdown" in caplog.text


# The main thread waits; SIGTERM is blocked there, so the kernel must hand it to the other
# thread, as it may on any host. Before wait_for, the main thread slept in Event.wait()
# and never ran its handler: serve was SIGKILLed after 15 s in CI.
_SIGNAL_TO_ANOTHER_THREAD = textwrap.dedent(
    """
    import signal, sys, threading
    from macha_obs.daemon import wait_for
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=threading.Event().wait, daemon=True).start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    print("waiting", flush=True)
    wait_for(stop)
    print("stopped", flush=True)
    """
)


def test_a_sigterm_taken_by_another_thread_still_stops_the_daemon() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SIGNAL_TO_ANOTHER_THREAD], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "waiting\n"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)  # a bound on a hang, not a speed
    finally:
        proc.kill()
    assert (proc.returncode, out) == (0, "stopped\n")


def test_a_stop_set_by_another_thread_wakes_the_main_thread() -> None:
    stop = threading.Event()
    threading.Thread(target=stop.set).start()
    wait_for(stop)
    assert stop.is_set()
    assert signal.set_wakeup_fd(-1) == -1  # the wake-up fd it borrowed is given back
