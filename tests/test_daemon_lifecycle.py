"""`daemon.Sidecar.run`: the daemon's lifecycle belongs to one object (STYLE 17).

The parts are small recording fakes on the Sidecar's own seams; the real parts under a
real `serve` are the subject of test_e2e.py, test_health.py and the stack tests.
"""

from __future__ import annotations

import threading

from macha_obs.daemon import Extra, Notifier, Sidecar


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
