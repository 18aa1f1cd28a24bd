"""The evaluation's cases as data (eval/*.toml), and what makes each one real.

A case file says, in TOML (the project reads TOML):
- `what` it is and its `group` (control, unit, systemd, protected, disk, alert, injection);
- `[units]`: unit files installed in the lab systemd; `[files]`: files written in the lab;
- `[[inject]]`: the steps that put the fault in place, from a fixed vocabulary (STEPS
  below: start, stop, kill, wait, fill a disk, log lines, an Alertmanager delivery, a
  generation switch...), each undone by the cleanup; `fault = true` marks the step at
  which the fault happens (the clock for "time to the first right action" starts there);
- `[health]`: how its health is checked afterwards, by systemd (unit states) and by its
  own probe (a command in the lab, the fake NixOS's record), never by the sidecar's word;
- `[oracle]`: the acceptable actions (`kind` or `kind target`), the forbidden ones,
  whether a person must be told, whether doing nothing is right (a control).
- `[sidecar]`: what the case needs of the sidecar: `stack = true` puts a real Prometheus
  (the shipped rules, `for:` at 0s) and Alertmanager in front of it for the case;
  `journal_on = "journal"` runs it with its journal_dir on that disk.

Evidence reaches the sidecar as in production: D-Bus events and collectors on the lab,
Alertmanager's webhook payloads (typed, as Alertmanager sends them), and for `stack`
cases the shipped rules through a real Prometheus and Alertmanager.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tests.harness.daemon_support import MACHA_OBS, Daemon
from tests.harness.labsd import LabSystemd
from tests.harness.receiver_support import alert, payload
from tests.harness.stack import Alertmanager, Prometheus, poll
from tests.test_rebuild import FakeNixos

ROOT = Path(__file__).resolve().parents[2]
CASES_DIR = ROOT / "eval"
DISKS = ("data", "store", "journal")
HOST = "testhost"  # the daemon harness's hostname (tests/harness/daemon_support.py)

Step = Literal[
    "start", "stop", "kill", "systemctl", "wait", "wait_restarts", "touch", "remove",
    "log", "fill", "alert", "resolve", "switch",
]  # fmt: skip


class InjectStep(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    do: Step
    unit: str = ""
    args: list[str] = Field(default_factory=list)  # systemctl's arguments
    state: str = ""  # wait: the ActiveState to wait for
    result: str = ""  # wait: and the Result
    restarts: int = 1  # wait_restarts: NRestarts at least
    signal: str = "KILL"
    path: str = ""  # touch/remove: a path in the lab
    text: str = ""  # log: the line (priority below)
    priority: str = "info"
    count: int = Field(1, ge=1, le=100_000)
    disk: Literal["data", "store", "journal"] = "data"
    percent: float = Field(96.0, gt=0, lt=100)
    alertname: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    fault: bool = False


class Health(BaseModel):
    """Afterwards, from systemd and the case's own probe; never from the sidecar."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    active: list[str] = Field(default_factory=list)  # units systemd must report active
    inactive: list[str] = Field(default_factory=list)  # ... and inactive (left alone)
    probe: list[str] = Field(default_factory=list)  # argv in the lab: exit 0 is healthy
    nix_log: str = ""  # the fake NixOS's argv log must hold this line (a gc's keep, say)
    below: float = 0  # the case's disk must be used under this share


class Oracle(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    acceptable: list[str] = Field(default_factory=list)  # "kind" or "kind target"
    forbidden: list[str] = Field(default_factory=list)
    tell_person: bool = False
    nothing: bool = False  # a control: doing nothing is right, any change unnecessary


class Sidecar(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    stack: bool = False
    journal_on: Literal["", "journal"] = ""


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""  # the file's stem
    what: str = Field(min_length=1, max_length=300)
    group: Literal["control", "unit", "systemd", "protected", "disk", "alert", "injection"]
    unit: str = ""  # the case's own unit (the one its evidence names), if any
    units: dict[str, str] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)
    inject: list[InjectStep] = Field(default_factory=list)
    health: Health = Health()
    oracle: Oracle
    sidecar: Sidecar = Sidecar()
    timeout: float = Field(90.0, gt=0, le=3600)

    @property
    def unit_fault(self) -> bool:
        """A fault on a unit (its median time to the right action has a goal of 1 s)."""
        return self.group in ("unit", "systemd") and bool(self.unit)


class CaseError(ValueError):
    """A case file that cannot be read; the message names the file and the field."""


def load_case(path: Path) -> Case:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return Case.model_validate({**data, "name": path.stem})
    except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
        raise CaseError(f"{path}: {exc}") from exc


def load_cases(names: list[str] | None = None, directory: Path = CASES_DIR) -> list[Case]:
    """Every case in `directory` (sorted), or the named ones in that order."""
    if not names:
        return [load_case(p) for p in sorted(directory.glob("*.toml"))]
    missing = [n for n in names if not (directory / f"{n}.toml").is_file()]
    if missing:
        raise CaseError(f"no such case(s) in {directory}: {', '.join(missing)}")
    return [load_case(directory / f"{n}.toml") for n in names]


# ------------------------------------------------------------------ the world


@dataclass
class Disk:
    image: Path
    mountpoint: Path


@dataclass
class World:
    """What every sidecar of one run shares: the lab, the fake NixOS, the disks, the model."""

    lab: LabSystemd
    work: Path
    nixos: FakeNixos
    disks: dict[str, Disk] = field(default_factory=dict)
    model: dict[str, str] | None = None  # the sidecar's llm settings, for the model modes


def make_disk(
    image: Path, mountpoint: Path, size_mib: int = 16, fill_from: Path | None = None
) -> None:
    """A small ext4 image (no reserved blocks), made from `fill_from`'s tree when given."""
    with image.open("wb") as f:
        f.truncate(size_mib * 2**20)
    extra = ["-d", str(fill_from)] if fill_from is not None else []
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", *extra, str(image)], check=True)
    mountpoint.mkdir(parents=True, exist_ok=True)


def make_world(lab: LabSystemd, work: Path) -> World:
    """The lab, a fake NixOS whose store is a disk of its own, a journal disk, a data disk."""
    nixos = FakeNixos(work / "nixroot", generations=4)
    world = World(lab, work, nixos)
    world.disks["data"] = Disk(work / "data.img", work / "data")
    world.disks["store"] = Disk(work / "store.img", nixos.store)
    world.disks["journal"] = Disk(work / "journal.img", work / "journal")
    (work / "journal-tree" / "journal").mkdir(parents=True)  # the journal disk's one dir
    trees = {"store": nixos.store, "journal": work / "journal-tree"}
    for name, disk in world.disks.items():
        make_disk(disk.image, disk.mountpoint, fill_from=trees.get(name))
    return world


class EvalDaemon(Daemon):
    """`macha-obs serve` in its own mount namespace, where the case disks are mounted."""

    def __init__(self, world: World, state_dir: Path, **settings: object) -> None:
        super().__init__(world.lab, state_dir, **settings)
        self.world = world
        self.env["PATH"] = f"{world.nixos.root / 'bin'}{os.pathsep}{self.env['PATH']}"
        self.env["MACHA_NIX_ROOT"] = str(world.nixos.root)
        self.settings = settings

    def start(self, timeout: float = 60) -> EvalDaemon:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        pairs = [f"{d.image}={d.mountpoint}" for d in self.world.disks.values()]
        argv = ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-m",
                "tests.harness.eval_support", "serve-with-disks", MACHA_OBS, *pairs]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
            )
        if not poll(self._ready, timeout, interval=0.1):
            self.stop()
            raise RuntimeError(f"macha-obs serve not ready:\n{self.log_tail()}")
        return self

    def in_namespace(self, *argv: str) -> str:
        """A command in the sidecar's mount namespace (where the disks are); stdout."""
        assert self.proc is not None
        return subprocess.run(
            ["nsenter", "-t", str(self.proc.pid), "-m", "--", *argv],
            check=True,
            capture_output=True,
            text=True,
        ).stdout


# ------------------------------------------------------------------ injecting, undoing


def disk_used(daemon: EvalDaemon, mountpoint: Path) -> float:
    blocks, avail = map(
        int, daemon.in_namespace("stat", "-f", "-c", "%b %a", str(mountpoint)).split()
    )
    return 1.0 - avail / blocks


def fill_disk(daemon: EvalDaemon, mountpoint: Path, percent: float) -> None:
    """Add a file so the filesystem is `percent` used (as df counts it)."""
    blocks, avail, size = map(
        int, daemon.in_namespace("stat", "-f", "-c", "%b %a %S", str(mountpoint)).split()
    )
    want_avail = int(blocks * (1 - percent / 100))
    if avail > want_avail:
        daemon.in_namespace(
            "fallocate", "-l", str((avail - want_avail) * size), str(mountpoint / "fill.bin")
        )


def alert_payload(step: InjectStep, status: str) -> dict[str, Any]:
    labels = {"instance": f"{HOST}:9100", "severity": "warning", **step.labels}
    body = alert(step.alertname, status=status, **labels)
    body["annotations"].update(step.annotations)
    return payload(body, group_key=f'{{}}:{{alertname="{step.alertname}"}}')


def show(lab: LabSystemd, unit: str, prop: str) -> str:
    return lab.run("systemctl", "show", "-p", prop, "--value", unit, check=False).stdout.strip()


@dataclass
class Injection:
    """One case put in place: what to undo, and when the fault happened (wall clock)."""

    case: Case
    world: World
    daemon: EvalDaemon
    fault_at: float = 0.0
    alerts: list[InjectStep] = field(default_factory=list)
    filled: list[Path] = field(default_factory=list)
    touched: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    switched: bool = False

    def run(self) -> None:
        lab = self.world.lab
        for path, text in self.case.files.items():
            target = lab.root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            self.touched.append(path)
        for name, text in self.case.units.items():
            lab.write_unit(name, text, reload=False)
        if self.case.units:
            lab.daemon_reload()
        self.fault_at = time.time()
        for step in self.case.inject:
            if step.fault:
                self.fault_at = time.time()
            self.step(step)

    def step(self, s: InjectStep) -> None:
        lab = self.world.lab
        match s.do:
            case "start":
                self.started.append(s.unit)
                lab.run("systemctl", "start", s.unit, check=False)
            case "stop":
                lab.run("systemctl", "stop", s.unit, check=False)
            case "kill":
                lab.run("systemctl", "kill", "-s", s.signal, s.unit)
            case "systemctl":
                lab.run("systemctl", *s.args, check=False)
            case "wait":
                lab.wait_for_state(s.unit, s.state, timeout=30)
                if s.result and not poll(lambda: show(lab, s.unit, "Result") == s.result, 30):
                    raise RuntimeError(
                        f"{s.unit}: result {show(lab, s.unit, 'Result')}, not {s.result}"
                    )
            case "wait_restarts":
                if not poll(lambda: int(show(lab, s.unit, "NRestarts") or 0) >= s.restarts, 60):
                    raise RuntimeError(f"{s.unit} did not restart {s.restarts} time(s)")
            case "touch":
                lab.run("touch", s.path)
                self.touched.append(s.path)
            case "remove":
                lab.run("rm", "-f", s.path)
            case "log":
                feed = "\n".join([s.text] * s.count) + "\n"
                argv = ["systemd-cat", "-t", s.unit or "eval", "-p", s.priority]
                subprocess.run(
                    ["nsenter", "-t", str(lab.pid), "-m", "-p", "--", *argv],
                    input=feed.encode(), check=True, timeout=120,
                )  # fmt: skip
            case "fill":
                mountpoint = self.world.disks[s.disk].mountpoint
                fill_disk(self.daemon, mountpoint, s.percent)
                self.filled.append(mountpoint)
            case "alert":
                self.daemon.post_alerts(alert_payload(s, "firing")).raise_for_status()
                self.alerts.append(s)
            case "resolve":
                self.daemon.post_alerts(alert_payload(s, "resolved")).raise_for_status()
            case "switch":
                relink(
                    self.world.nixos.root / "run/current-system",
                    self.world.nixos.store / "gen-next",
                )
                self.switched = True

    def undo(self) -> None:
        lab = self.world.lab
        for s in self.alerts:
            self.daemon.post_alerts(alert_payload(s, "resolved")).raise_for_status()
        for mountpoint in self.filled:
            self.daemon.in_namespace("rm", "-f", str(mountpoint / "fill.bin"))
        if self.switched:
            booted = (self.world.nixos.root / "run/booted-system").readlink()
            relink(self.world.nixos.root / "run/current-system", booted)
        for name in [*reversed(self.started), *self.case.units]:
            lab.run("systemctl", "stop", name, check=False)
            lab.run("systemctl", "reset-failed", name, check=False)
            lab.remove_unit(name, reload=False)
        if self.case.units:
            lab.daemon_reload()
        for path in self.touched:
            lab.run("rm", "-f", path, check=False)


def relink(link: Path, target: Path) -> None:
    tmp = link.with_name(link.name + ".tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)


def healthy(injection: Injection) -> tuple[bool, str]:
    """The case's health, by systemd and its own probe: (healthy, what was wrong)."""
    case, lab = injection.case, injection.world.lab
    wrong = []
    for unit in case.health.active:
        state = show(lab, unit, "ActiveState")
        if state != "active":
            wrong.append(f"{unit} {state}")
    for unit in case.health.inactive:
        state = show(lab, unit, "ActiveState")
        if state != "inactive":
            wrong.append(f"{unit} {state}")
    if case.health.probe and lab.run(*case.health.probe, check=False).returncode != 0:
        wrong.append("probe failed")
    calls = injection.world.nixos.calls()
    if case.health.nix_log and not any(case.health.nix_log in line for line in calls):
        wrong.append(f"no `{case.health.nix_log}`")
    if case.health.below:
        for mountpoint in injection.filled:
            used = disk_used(injection.daemon, mountpoint)
            if used >= case.health.below:
                wrong.append(f"{mountpoint.name} {used:.0%} used")
    return not wrong, "; ".join(wrong)


# ------------------------------------------------------------------ a real stack, per case


@contextmanager
def real_stack(daemon: EvalDaemon, work: Path) -> Iterator[None]:
    """Prometheus (the shipped rules, `for:` at 0s) scraping the sidecar, and Alertmanager
    delivering to its webhook with its token, for one case."""
    from tests.test_stack_eyes import alertmanager_config, fast_rules, prometheus_config

    work.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        am_config = alertmanager_config(daemon.port, daemon.token_file)
        am = stack.enter_context(Alertmanager(work / "am", am_config))
        prom_config = prometheus_config(daemon.port, am.port)
        prom = stack.enter_context(Prometheus(work / "prom", prom_config, fast_rules(work)))
        prom.wait_targets_up(1)
        prom.wait_alertmanagers()
        yield


def settings_for(case: Case, world: World) -> Mapping[str, object]:
    """The daemon settings a case needs beyond the run's (its journal on a disk)."""
    if case.sidecar.journal_on:
        journal = world.disks[case.sidecar.journal_on].mountpoint / "journal"
        return {"journal_dir": journal}
    return {}
