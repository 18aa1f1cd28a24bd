"""nix gc keeps the newest N system generations and reports the bytes it actually freed.

The fake `nix-env`/`nix-collect-garbage` of tests/test_rebuild.py delete links and
store directories in a temporary tree; the executor measures the tree before and after
(the seam that, on a host, reads the store filesystem's free space with statvfs).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from macha_obs import config as config_mod
from macha_obs.execute.diagnostics import Diagnostics
from macha_obs.execute.dispatch import HostExecutor
from macha_obs.execute.journal import JournalExecutor
from macha_obs.execute.nix import NixExecutor, free_bytes, measured_gc, parse_freed
from macha_obs.execute.privileged import PrivilegedExecutor
from macha_obs.execute.runner import subprocess_runner
from macha_obs.execute.systemd import SystemdExecutor
from macha_obs.models import ExecutionResult, NixGc
from macha_obs.systemd.bus import IsolatedBus
from tests.harness.labsd import LabSystemd
from tests.test_rebuild import FakeNixos, lab_fake, privileged_template

__all__ = ["lab_fake", "privileged_template"]  # fixtures shared with the rebuild tests

CAPACITY = 10**12


def store_free(store: Path) -> Callable[[], int]:
    """Free bytes of a pretend filesystem holding only `store`: exact, unlike statvfs of
    a /tmp other tests write to at the same time."""

    def measure() -> int:
        used = sum(f.stat().st_size for f in store.rglob("*") if f.is_file() and not f.is_symlink())
        return CAPACITY - used

    return measure


class _NoBus:
    pass


def gc_executor(
    fake: FakeNixos, keep: int, privileged: PrivilegedExecutor | None = None
) -> HostExecutor:
    bus = _NoBus()
    return HostExecutor(
        SystemdExecutor(bus, is_protected=lambda unit: False),  # type: ignore[arg-type]
        NixExecutor(subprocess_runner, nix_root=fake.root),
        JournalExecutor(subprocess_runner),
        Diagnostics(bus, subprocess_runner),  # type: ignore[arg-type]
        privileged=privileged,
        gc_keep_generations=keep,
        measure_store=store_free(fake.store),
    )


def generations(fake: FakeNixos) -> list[int]:
    return sorted(int(p.name[7:-5]) for p in fake.profiles.glob("system-*-link"))


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeNixos:
    nixos = FakeNixos(tmp_path / "nixroot", generations=5)
    monkeypatch.setenv("PATH", f"{nixos.root / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return nixos


def test_parse_freed_reads_nix_collect_garbages_last_line() -> None:
    assert parse_freed("removing stale link\n12 store paths deleted, 1.50 MiB freed\n") == 1572864
    assert parse_freed("0 store paths deleted, 0.00 MiB freed") == 0
    assert parse_freed("error: cannot connect to daemon") is None


def test_statvfs_measures_a_real_filesystem(tmp_path: Path) -> None:
    assert (free_bytes(tmp_path) or 0) > 0
    assert free_bytes(tmp_path / "missing") is None


def test_gc_keeps_the_newest_generations_and_reports_the_bytes_freed(fake: FakeNixos) -> None:
    result = gc_executor(fake, keep=3).run(NixGc())
    assert result.verified, result.detail
    profile = fake.profiles / "system"
    assert fake.calls() == [
        f"nix-env --profile {profile} --delete-generations +3",
        "nix-collect-garbage",
    ]
    assert generations(fake) == [3, 4, 5]
    assert not (fake.store / "gen-1").exists()
    assert result.freed_bytes == 2 * 4096  # gen-1 and gen-2's payloads
    assert "freed 8.0 KiB (measured on the store's filesystem; nix reports" in result.detail


def test_a_gc_that_frees_nothing_says_so_and_is_not_verified(fake: FakeNixos) -> None:
    executor = gc_executor(fake, keep=3)
    assert executor.run(NixGc()).verified
    again = executor.run(NixGc())
    assert again.ok
    assert not again.verified
    assert again.freed_bytes == 0
    assert "freed nothing" in again.detail


def test_keep_zero_deletes_no_generation(fake: FakeNixos) -> None:
    result = gc_executor(fake, keep=0).run(NixGc())
    assert fake.calls() == ["nix-collect-garbage"]
    assert generations(fake) == [1, 2, 3, 4, 5]
    assert result.freed_bytes == 0


def test_older_than_days_is_not_turned_into_keep(fake: FakeNixos) -> None:
    gc_executor(fake, keep=3).run(NixGc(older_than_days=14))
    assert fake.calls() == ["nix-collect-garbage --delete-older-than 14d"]


def test_without_a_measurement_nix_own_figure_is_reported() -> None:
    said = ExecutionResult(ok=True, verified=True, detail="x", output="2.00 MiB freed")
    result = measured_gc(lambda: said, lambda: None)
    assert result.freed_bytes == 2 * 1048576
    assert "as nix reports it" in result.detail


def test_a_failed_gc_is_not_verified_whatever_it_freed() -> None:
    failed = ExecutionResult(ok=False, detail="nix-collect-garbage exited 1")
    assert not measured_gc(lambda: failed, lambda: 5).verified


def test_keeping_one_generation_is_refused_by_the_config() -> None:
    with pytest.raises(config_mod.ConfigError, match="no generation to roll back to"):
        config_mod.validate({"nix_gc_keep_generations": 1})
    assert config_mod.validate({}).nix_gc_keep_generations >= 2


@pytest.mark.systemd
def test_gc_through_the_privileged_oneshot_keeps_n_and_measures(
    lab_fake: FakeNixos, privileged_template: str, systemd_container: LabSystemd
) -> None:
    for n in range(2, 5):
        lab_fake.generation(f"gen-{n}")
        (lab_fake.profiles / f"system-{n}-link").symlink_to(f"../../../store/gen-{n}")
    (lab_fake.profiles / "system").unlink()
    (lab_fake.profiles / "system").symlink_to("system-4-link")
    bus = IsolatedBus(systemd_container.bus_address)
    try:
        privileged = PrivilegedExecutor(bus, privileged_template, poll_interval=0.05)
        result = gc_executor(lab_fake, keep=2, privileged=privileged).run(NixGc())
    finally:
        bus.close()
    assert result.verified, result.detail
    assert "macha-priv@nix-gc-keep-2.service" in result.detail
    assert generations(lab_fake) == [3, 4]
    assert result.freed_bytes == 2 * 4096
