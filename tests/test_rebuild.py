"""The rebuild sequence against a fake NixOS at the process boundary and a real systemd.

`nixos-rebuild`, `nix-env`, `nix-collect-garbage` and each generation's
`bin/switch-to-configuration` are one small script (FAKE_NIX) that records its argv and
switches links in a temporary tree laid out like /nix and /run. A generation's
activation runs the argv lists in its `on-activate.json`: against the lab systemd, that is
how a new generation breaks a unit and the old one repairs it. The sequence's health
check reads the real lab systemd over D-Bus.

`python -m tests.test_rebuild STATE ROOT BUS` runs the sequence in a process of its own
and says `switched` once the new generation is active and the health window recorded:
the crash test SIGKILLs it there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from macha_obs.agent.runbooks import runbook_decision
from macha_obs.collect.nixos import (
    NixosCollector,
    summarize_switch,
    switch_time,
)
from macha_obs.collect.systemd import probe_failed_units
from macha_obs.config import Config
from macha_obs.errors import RefusedError
from macha_obs.execute.diagnostics import Diagnostics
from macha_obs.execute.dispatch import HostExecutor
from macha_obs.execute.journal import JournalExecutor
from macha_obs.execute.nix import NixExecutor
from macha_obs.execute.privileged import PrivilegedExecutor
from macha_obs.execute.rebuild import (
    REBUILD_KEY,
    HealthChecks,
    RebuildSequence,
    Step,
    current_generation,
    newly_failed,
)
from macha_obs.execute.runner import subprocess_runner
from macha_obs.execute.systemd import SystemdExecutor
from macha_obs.intake.incidents import IncidentStore
from macha_obs.models import (
    ApprovalStatus,
    FindingKind,
    NixRebuild,
    NixRollback,
    Risk,
)
from macha_obs.remediate.remediator import Remediator
from macha_obs.store import Store, owner_alive
from macha_obs.systemd.bus import IsolatedBus
from tests.harness.labsd import LabSystemd, wait_until

FAKE_NIX = r"""
import json, os, subprocess, sys
from pathlib import Path

me = Path(sys.argv[0])
name = me.name
if name == "switch-to-configuration":
    gen = me.parent.resolve().parent
    root = gen.parent.parent.parent
else:
    root = me.resolve().parent.parent
profiles = root / "nix/var/nix/profiles"
with open(root / "argv.log", "a") as log:
    label = f"activate {gen.name}" if name == "switch-to-configuration" else name
    log.write(" ".join([label, *sys.argv[1:]]) + "\n")


def numbers():
    return sorted(int(p.name[7:-5]) for p in profiles.glob("system-*-link"))


def relink(link, target):
    tmp = link.with_name(link.name + ".tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def activate(gen):
    relink(root / "run/current-system", gen)
    hook = gen / "on-activate.json"
    for step in json.loads(hook.read_text()) if hook.exists() else []:
        subprocess.run(step["run"])


def new_generation():
    n = max(numbers(), default=0) + 1
    (profiles / f"system-{n}-link").symlink_to("../../../store/gen-next")
    relink(profiles / "system", f"system-{n}-link")


if name == "switch-to-configuration":
    activate(gen)
elif name == "nixos-rebuild":
    mode = sys.argv[1]
    if mode == "dry-build" and (root / "dry-build-fails").exists():
        sys.exit("error: attribute 'broken' missing")
    if mode in ("test", "switch"):
        stc = root / "nix/store/gen-next/bin/switch-to-configuration"
        if subprocess.run([str(stc), mode]).returncode != 0:
            sys.exit("switch-to-configuration failed")
    if mode in ("boot", "switch"):
        new_generation()
elif name == "nix-env":
    profile, op, arg = Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    if op == "--switch-generation":
        if not (profiles / f"system-{arg}-link").is_symlink():
            sys.exit(f"generation {arg} does not exist")
        relink(profile, f"system-{arg}-link")
    elif op == "--delete-generations":
        current = int(profile.readlink().name[7:-5])
        for n in numbers()[: -int(arg.lstrip("+"))]:
            if n != current:
                (profiles / f"system-{n}-link").unlink()
                print(f"removing profile version {n}")
elif name == "nix-collect-garbage":
    live = {(profiles / p.name).resolve() for p in profiles.glob("system-*-link")}
    live |= {(root / "run/current-system").resolve(), (root / "nix/store/gen-next").resolve()}
    freed = paths = 0
    for path in sorted((root / "nix/store").iterdir()):
        if path.resolve() in live:
            continue
        files = [f for f in path.rglob("*") if f.is_file() and not f.is_symlink()]
        freed += sum(f.stat().st_size for f in files) if path.is_dir() else path.stat().st_size
        subprocess.run(["rm", "-rf", str(path)], check=True)
        paths += 1
    print(f"{paths} store paths deleted, {freed / 1048576:.2f} MiB freed")
"""
APP = "lab-app.service"
WORKER = [sys.executable, "-m", "tests.test_rebuild"]


class FakeNixos:
    """A /nix and /run tree with generations 1..`generations` and a pending gen-next."""

    def __init__(self, root: Path, *, generations: int = 1) -> None:
        self.root = root
        self.profiles = root / "nix/var/nix/profiles"
        self.store = root / "nix/store"
        for sub in ("bin", "run", "nix/var/nix/profiles", "nix/store"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        script = root / "bin" / "fake-nix"
        script.write_text(f"#!{sys.executable}\n{FAKE_NIX}")
        script.chmod(0o755)
        for tool in ("nixos-rebuild", "nix-env", "nix-collect-garbage"):
            (root / "bin" / tool).symlink_to("fake-nix")
        for n in range(1, generations + 1):
            self.generation(f"gen-{n}")
            (self.profiles / f"system-{n}-link").symlink_to(f"../../../store/gen-{n}")
        self.generation("gen-next")
        (self.profiles / "system").symlink_to(f"system-{generations}-link")
        (root / "run/current-system").symlink_to(self.store / f"gen-{generations}")
        (root / "run/booted-system").symlink_to(self.store / f"gen-{generations}")
        (root / "argv.log").write_text("")

    def generation(self, name: str, size: int = 4096) -> Path:
        gen = self.store / name
        (gen / "bin").mkdir(parents=True)
        # relative links only: the tree is also seen from inside the lab, at another path
        (gen / "bin" / "switch-to-configuration").symlink_to("../../../../bin/fake-nix")
        (gen / "payload").write_bytes(b"\0" * size)
        return gen

    def on_activate(self, name: str, steps: list[dict[str, list[str]]]) -> None:
        (self.store / name / "on-activate.json").write_text(json.dumps(steps))

    def calls(self) -> list[str]:
        return (self.root / "argv.log").read_text().splitlines()

    def running(self) -> str:
        return (self.root / "run/current-system").readlink().name

    def profile_link(self) -> str:
        return str((self.profiles / "system").readlink())


def lab_argv(lab: LabSystemd | None, *argv: str) -> list[str]:
    """A command against the lab's systemd: from the host through nsenter, or inside it."""
    if lab is None:
        return list(argv)
    return ["nsenter", "-t", str(lab.pid), "-m", "-u", "-i", "-n", "-p", "--", *argv]


def breaks_app(lab: LabSystemd | None) -> list[dict[str, list[str]]]:
    """What a bad generation's activation does: the app dies and stays failed. The
    sequence's own health window is the bounded wait for systemd to say so."""
    return [{"run": lab_argv(lab, "systemctl", "kill", "--signal=SIGKILL", APP)}]


def repairs_app(lab: LabSystemd | None) -> list[dict[str, list[str]]]:
    return [
        {"run": lab_argv(lab, "systemctl", "reset-failed", APP)},
        {"run": lab_argv(lab, "systemctl", "start", APP)},
    ]


def executor_for(
    bus: IsolatedBus,
    root: Path,
    store: Store,
    *,
    privileged: PrivilegedExecutor | None = None,
    window: float = 0.3,
    must_be_active: tuple[str, ...] = (),
    measure: Callable[[], int | None] | None = None,
    keep: int = 0,
) -> HostExecutor:
    executor = HostExecutor(
        SystemdExecutor(bus, is_protected=lambda unit: False),
        NixExecutor(subprocess_runner, nix_root=root),
        JournalExecutor(subprocess_runner),
        Diagnostics(bus, subprocess_runner),
        privileged=privileged,
        gc_keep_generations=keep,
        measure_store=measure,
    )
    executor.rebuild = RebuildSequence(
        executor.root_step,
        bus,
        store,
        nix_root=root,
        checks=HealthChecks(window=window, poll_interval=0.05, must_be_active=must_be_active),
        owner_alive=owner_alive,
    )
    return executor


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeNixos:
    nixos = FakeNixos(tmp_path / "nixroot")
    monkeypatch.setenv("PATH", f"{nixos.root / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return nixos


@pytest.fixture
def app(
    systemd_container: LabSystemd, unit_factory: Callable[[str, str], str]
) -> Iterator[IsolatedBus]:
    """lab-app.service running in the lab, and a bus to the lab for the sequence."""
    unit_factory(APP, "[Service]\nExecStart=/bin/sleep infinity\n")
    systemd_container.run("systemctl", "start", APP)
    bus = IsolatedBus(systemd_container.bus_address)
    yield bus
    bus.close()


def steps_of(store: Store) -> list[str]:
    lines = store.audit.actions_log.read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r.get("event") == "rebuild_step"]


# ------------------------------------------------------------------ pure parts


def test_newly_failed_counts_units_that_were_not_failed_before() -> None:
    before = {"a.service": "active", "b.service": "failed", "c.service": "inactive"}
    now = {"a.service": "failed", "b.service": "failed", "c.service": "failed"}
    assert newly_failed(before, now) == ["a.service", "c.service"]
    assert newly_failed(before, before) == []


def test_current_generation_reads_the_profile_link(tmp_path: Path) -> None:
    profile = tmp_path / "system"
    assert current_generation(profile) is None
    profile.symlink_to("system-42-link")
    assert current_generation(profile) == 42
    (tmp_path / "other").symlink_to("system-x-link")
    assert current_generation(tmp_path / "other") is None


def test_a_switch_without_the_sequence_is_refused(fake: FakeNixos, store: Store) -> None:
    executor = HostExecutor(
        SystemdExecutor(_NoBus(), is_protected=lambda unit: False),  # type: ignore[arg-type]
        NixExecutor(subprocess_runner, nix_root=fake.root),
        JournalExecutor(subprocess_runner),
        Diagnostics(_NoBus(), subprocess_runner),  # type: ignore[arg-type]
    )
    with pytest.raises(RefusedError, match="health-gated"):
        executor.run(NixRebuild(mode="switch"))
    assert fake.calls() == []


class _NoBus:
    def list_units(self, states: tuple[str, ...] = ()) -> list[tuple[str, str, str, str]]:
        raise AssertionError("not reached")


# ------------------------------------------------------------------ direct, real systemd


@pytest.mark.systemd
def test_a_failing_dry_build_never_switches(
    fake: FakeNixos, store: Store, app: IsolatedBus
) -> None:
    (fake.root / "dry-build-fails").touch()
    result = executor_for(app, fake.root, store).run(NixRebuild(mode="switch"))
    assert not result.ok
    assert "dry-build failed" in result.detail
    assert fake.calls() == ["nixos-rebuild dry-build"]
    assert (fake.running(), fake.profile_link()) == ("gen-1", "system-1-link")
    assert steps_of(store) == ["dry-build", "refused"]


@pytest.mark.systemd
def test_a_healthy_switch_becomes_the_boot_default_only_after_the_window(
    fake: FakeNixos, store: Store, app: IsolatedBus
) -> None:
    seen: list[str] = []
    executor = executor_for(app, fake.root, store, must_be_active=(APP,))
    assert executor.rebuild is not None
    sequence = executor.rebuild
    real_problem = sequence.problem

    def watched(before: Any) -> str | None:
        # every health check runs while the profile still names the old generation
        seen.append(fake.profile_link())
        return real_problem(before)

    sequence.problem = watched  # type: ignore[method-assign]
    result = executor.run(NixRebuild(mode="switch"))
    assert result.verified, result.detail
    assert seen
    assert set(seen) == {"system-1-link"}
    assert fake.calls() == [
        "nixos-rebuild dry-build",
        "nixos-rebuild test",
        "activate gen-next test",
        "nixos-rebuild boot",
    ]
    assert (fake.running(), fake.profile_link()) == ("gen-next", "system-2-link")
    assert steps_of(store) == [
        "dry-build",
        "recorded",
        "activating",
        "checking",
        "making-boot-default",
        "done",
    ]


@pytest.mark.systemd
def test_a_switch_that_breaks_a_unit_rolls_back_to_the_recorded_generation(
    fake: FakeNixos, store: Store, app: IsolatedBus, systemd_container: LabSystemd
) -> None:
    fake.on_activate("gen-next", breaks_app(systemd_container))
    fake.on_activate("gen-1", repairs_app(systemd_container))
    result = executor_for(app, fake.root, store, window=30).run(NixRebuild(mode="switch"))
    assert not result.ok
    assert f"failed after the switch: {APP}" in result.detail
    assert "rolled back to generation 1" in result.detail
    profile = str(fake.profiles / "system")
    assert fake.calls() == [
        "nixos-rebuild dry-build",
        "nixos-rebuild test",
        "activate gen-next test",
        f"nix-env --profile {profile} --switch-generation 1",
        "activate gen-1 switch",
    ]
    assert "nixos-rebuild boot" not in fake.calls()
    assert (fake.running(), fake.profile_link()) == ("gen-1", "system-1-link")
    assert systemd_container.unit_state(APP)[0] == "active"
    assert steps_of(store)[-2:] == ["rolling-back", "rolled-back"]


@pytest.mark.systemd
def test_a_named_check_unit_that_is_not_active_rolls_back(
    fake: FakeNixos, store: Store, app: IsolatedBus
) -> None:
    executor = executor_for(app, fake.root, store, must_be_active=("never-started.service",))
    result = executor.run(NixRebuild(mode="switch"))
    assert "not active after the switch: never-started.service" in result.detail
    assert (fake.running(), fake.profile_link()) == ("gen-1", "system-1-link")


# ------------------------------------------------------------------ crash mid-way


def worker(state: Path, root: Path, bus_address: str) -> None:
    """Run the sequence with a long window; say `switched` once "checking" is recorded."""
    store = Store(state)
    bus = IsolatedBus(bus_address)
    executor = executor_for(bus, root, store, window=600)
    assert executor.rebuild is not None
    sequence = executor.rebuild

    write = sequence._write

    def announcing(step: Step, generation: int | None, detail: str = "") -> None:
        write(step, generation, detail)
        if step is Step.CHECKING:  # recorded: the kill lands inside the health window
            print("switched", flush=True)

    sequence._write = announcing  # type: ignore[method-assign]
    sequence.run()


@pytest.mark.systemd
def test_invariant_6_sigkill_between_switch_and_health_check_recovers_the_recorded_generation(
    fake: FakeNixos, tmp_path: Path, app: IsolatedBus, systemd_container: LabSystemd
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    fake.on_activate("gen-1", repairs_app(systemd_container))
    with subprocess.Popen(
        [*WORKER, str(state), str(fake.root), systemd_container.bus_address],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "switched"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert fake.running() == "gen-next"  # the crash left the new generation running
    assert fake.profile_link() == "system-1-link"  # ... but a reboot boots the old one
    with Store(state) as store:
        assert json.loads(store.meta.get_meta(REBUILD_KEY) or "{}")["step"] == "checking"
        executor = executor_for(app, fake.root, store)
        result = executor.recover_rebuild()
        assert result is not None
        assert "interrupted at checking by a crash" in result.detail
        assert "rolled back to generation 1" in result.detail
        assert executor.recover_rebuild() is None  # once
    assert (fake.running(), fake.profile_link()) == ("gen-1", "system-1-link")
    assert fake.calls()[-1] == "activate gen-1 switch"


def test_recovery_after_the_boot_default_changes_nothing(fake: FakeNixos, store: Store) -> None:
    store.meta.set_meta(REBUILD_KEY, json.dumps({"step": "done", "generation": 1, "owner": "1:0"}))
    executor = executor_for(_NoBus(), fake.root, store)  # type: ignore[arg-type]
    assert executor.recover_rebuild() is None
    assert fake.calls() == []


def test_recovery_leaves_a_sequence_another_live_process_runs(
    fake: FakeNixos, store: Store
) -> None:
    from macha_obs.store import process_owner

    live = process_owner(os.getppid())
    store.meta.set_meta(
        REBUILD_KEY, json.dumps({"step": "checking", "generation": 1, "owner": live})
    )
    executor = executor_for(_NoBus(), fake.root, store)  # type: ignore[arg-type]
    assert executor.recover_rebuild() is None
    assert fake.calls() == []


# ------------------------------------------------------------------ after a switch: propose


def test_a_unit_that_failed_before_the_switch_proposes_nothing() -> None:
    failed = [("old.service", 100.0), ("unknown.service", None)]
    assert summarize_switch(200.0, 7, failed, window=900) == []
    late = summarize_switch(200.0, 7, [("late.service", 2000.0)], window=900)
    assert late == []
    (found,) = summarize_switch(200.0, 7, [("new.service", 250.0)], window=900)
    assert found.kind is FindingKind.UNITS_FAILED_AFTER_SWITCH
    assert found.details["units"] == "new.service"


def test_a_boot_is_no_switch(fake: FakeNixos) -> None:
    assert switch_time(fake.root) is None  # current-system is the booted system
    (fake.root / "run/current-system").unlink()
    (fake.root / "run/current-system").symlink_to(fake.store / "gen-next")
    assert switch_time(fake.root) is not None


@pytest.mark.systemd
def test_invariant_4_a_unit_failing_soon_after_a_switch_gets_a_queued_nix_rollback(
    fake: FakeNixos,
    store: Store,
    app: IsolatedBus,
    systemd_container: LabSystemd,
    make_config: Callable[..., Config],
) -> None:
    # the switch (any activation: a person's `nixos-rebuild switch` too), then the break
    (fake.root / "run/current-system").unlink()
    (fake.root / "run/current-system").symlink_to(fake.store / "gen-next")
    systemd_container.run("systemctl", "kill", "--signal=SIGKILL", APP)
    assert wait_until(lambda: app.unit_state(APP).active_state == "failed")
    collector = NixosCollector(
        root=fake.root,
        rollback_window=900,
        failed_units=probe_failed_units(systemd_container.bus_address, 10),
    )
    reading, findings = collector.collect()
    assert reading.switched_at is not None
    assert [f.kind for f in findings] == [FindingKind.UNITS_FAILED_AFTER_SWITCH]
    assert APP in str(findings[0].details["units"])
    incidents = IncidentStore(store)
    incident_id, _ = incidents.open_for_findings("nixos", findings)
    state = incidents.get(incident_id)
    assert state is not None
    decision = runbook_decision(state.incident)
    # the most autonomous level still only queues it: a rollback is high risk
    cfg = make_config(autonomy_level="auto-full")
    executor = executor_for(app, fake.root, store)
    remediator = Remediator(cfg, store, executor, scope_of=incidents.scope_of)
    scope = incidents.scope_of([incident_id])
    for proposal in decision.proposals:
        remediator.handle(incident_id, proposal, scope)
    pending = store.approvals.list_approvals({ApprovalStatus.PENDING})
    assert [(a.action, a.risk) for a in pending] == [(NixRollback(), Risk.HIGH)]
    assert fake.calls() == []  # nothing ran
    assert NixRollback() in [p.action for p in decision.proposals]


# ------------------------------------------------------------------ the privileged oneshot


@pytest.fixture
def lab_fake(systemd_container: LabSystemd) -> Iterator[FakeNixos]:
    """A fake tree inside the lab's own /tmp: the root side sees /tmp/…, we see it
    through /proc/PID/root."""
    inside = Path("/tmp") / f"nixroot-{os.getpid()}-{os.urandom(3).hex()}"
    nixos = FakeNixos(systemd_container.root / inside.relative_to("/"))
    nixos.inside = inside  # type: ignore[attr-defined]
    yield nixos
    subprocess.run(["rm", "-rf", str(nixos.root)], check=False)


@pytest.fixture
def privileged_template(
    systemd_container: LabSystemd, unit_factory: Callable[[str, str], str], lab_fake: FakeNixos
) -> str:
    """The root side as the NixOS module installs it, pointed at the fake tree."""
    inside = lab_fake.inside  # type: ignore[attr-defined]
    unit_factory(
        "macha-priv@.service",
        "[Service]\nType=oneshot\n"
        f"Environment=PATH={inside}/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        f"Environment=MACHA_NIX_ROOT={inside}\n"
        f"ExecStart={sys.executable} -m macha_obs.cli privileged %i\n",
    )
    return "macha-priv"


@pytest.mark.systemd
def test_through_the_privileged_oneshot_a_broken_switch_rolls_back(
    lab_fake: FakeNixos, store: Store, app: IsolatedBus, privileged_template: str
) -> None:
    lab_fake.on_activate("gen-next", breaks_app(None))
    lab_fake.on_activate("gen-1", repairs_app(None))
    privileged = PrivilegedExecutor(app, privileged_template, poll_interval=0.05)
    executor = executor_for(app, lab_fake.root, store, privileged=privileged, window=30)
    result = executor.run(NixRebuild(mode="switch"))
    assert "rolled back to generation 1" in result.detail, result.detail
    profile = f"{lab_fake.inside}/nix/var/nix/profiles/system"  # type: ignore[attr-defined]
    assert lab_fake.calls() == [
        "nixos-rebuild dry-build",
        "nixos-rebuild test",
        "activate gen-next test",
        f"nix-env --profile {profile} --switch-generation 1",
        "activate gen-1 switch",
    ]
    assert (lab_fake.running(), lab_fake.profile_link()) == ("gen-1", "system-1-link")
    assert wait_until(lambda: app.unit_state(APP).active_state == "active", timeout=30)


@pytest.mark.systemd
def test_through_the_privileged_oneshot_a_healthy_switch_is_made_the_boot_default(
    lab_fake: FakeNixos, store: Store, app: IsolatedBus, privileged_template: str
) -> None:
    privileged = PrivilegedExecutor(app, privileged_template, poll_interval=0.05)
    executor = executor_for(app, lab_fake.root, store, privileged=privileged)
    result = executor.run(NixRebuild(mode="switch"))
    assert result.verified, result.detail
    assert (lab_fake.running(), lab_fake.profile_link()) == ("gen-next", "system-2-link")


if __name__ == "__main__":
    worker(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
