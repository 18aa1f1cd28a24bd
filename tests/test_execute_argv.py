"""Nix, journal and diagnostic actions become argv lists built here, run without a shell."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from macha_obs.errors import RunnerError
from macha_obs.execute.diagnostics import Diagnostics, ProcessRow, diagnostic_argv
from macha_obs.execute.journal import JournalExecutor, vacuum_argv
from macha_obs.execute.nix import NixExecutor, nix_argv
from macha_obs.execute.runner import Completed, subprocess_runner, truncate
from macha_obs.models import (
    DiskUsage,
    FailedUnits,
    JournalTail,
    JournalVacuum,
    ListeningSockets,
    NixGc,
    NixRebuild,
    NixRollback,
    TopProcesses,
    UnitState,
    UnitStatus,
)


class Recorder:
    """The runner seam (the process boundary): records argv, answers like the command."""

    def __init__(self, returncode: int = 0, output: str = "") -> None:
        self.calls: list[tuple[str, ...]] = []
        self.returncode = returncode
        self.output = output

    def __call__(self, argv: Sequence[str], *, timeout: float) -> Completed:
        self.calls.append(tuple(argv))
        return Completed(tuple(argv), self.returncode, self.output)


@pytest.mark.parametrize(
    ("action", "argv"),
    [
        (NixGc(), ["nix-collect-garbage"]),
        (NixGc(older_than_days=14), ["nix-collect-garbage", "--delete-older-than", "14d"]),
        (NixRebuild(), ["nixos-rebuild", "dry-build"]),
        (NixRebuild(mode="switch"), ["nixos-rebuild", "switch"]),
        (NixRollback(), ["nixos-rebuild", "switch", "--rollback"]),
    ],
)
def test_nix_argv(action: NixGc | NixRebuild | NixRollback, argv: list[str]) -> None:
    assert nix_argv(action) == argv


def test_rebuild_flake_comes_from_config_only() -> None:
    assert nix_argv(NixRebuild(mode="switch"), flake="/etc/nixos#host") == [
        "nixos-rebuild",
        "switch",
        "--flake",
        "/etc/nixos#host",
    ]


def test_nix_executor_reports_exit_status() -> None:
    ok = NixExecutor(Recorder(0, "freed 1 GiB")).run(NixGc())
    assert ok.verified
    assert ok.output == "freed 1 GiB"
    bad = NixExecutor(Recorder(1)).run(NixRebuild(mode="switch"))
    assert not bad.ok
    assert "exited 1" in bad.detail


def test_journal_vacuum_argv_and_directory(tmp_path: Path) -> None:
    assert vacuum_argv(JournalVacuum(max_size_mb=200)) == ["journalctl", "--vacuum-size=200M"]
    rec = Recorder()
    JournalExecutor(rec, journal_dir=tmp_path).run(JournalVacuum(max_size_mb=64))
    assert rec.calls == [("journalctl", "--vacuum-size=64M", "--directory", str(tmp_path))]


def test_diagnostic_argv_are_fixed_commands() -> None:
    tail = diagnostic_argv(JournalTail(unit="nginx.service", lines=20))
    assert tail == [
        "journalctl",
        "--no-pager",
        "-o",
        "short-iso",
        "-n",
        "20",
        "-u",
        "nginx.service",
    ]
    assert diagnostic_argv(DiskUsage())[0] == "df"  # type: ignore[index]
    assert diagnostic_argv(UnitStatus(unit="a.service")) is None  # answered over D-Bus
    # read from /proc in-process: no ps or ss, which a NixOS unit's PATH lacks
    assert diagnostic_argv(TopProcesses()) is None
    assert diagnostic_argv(ListeningSockets()) is None


class StubBus:
    def unit_state(self, unit: str) -> UnitState:
        return UnitState(name=unit, load_state="loaded", active_state="failed", sub_state="failed")

    def submit(self, unit: str, verb: str) -> str:
        raise AssertionError("diagnostics never submit jobs")

    def job_pending(self, unit: str) -> bool:
        raise AssertionError("diagnostics never wait for jobs")

    def reset_failed(self, unit: str) -> None:
        raise AssertionError("diagnostics never change state")

    def list_units(self, states: tuple[str, ...] = ()) -> list[tuple[str, str, str, str]]:
        return [("a.service", "loaded", "failed", "failed")]


def test_diagnostics_are_read_only_and_truncated() -> None:
    rec = Recorder(0, "x" * 100_000)
    diags = Diagnostics(StubBus(), rec, limit=1000)
    out = diags.run(JournalTail(unit="a.service"))
    assert len(out.output) < 1100
    assert "truncated" in out.output
    assert "active=failed" in diags.run(UnitStatus(unit="a.service")).output
    assert diags.run(FailedUnits()).output == "a.service loaded failed failed"
    rows = [ProcessRow(i, "u", float(i), 0.1, i, f"p{i}") for i in range(100)]
    never = Recorder()
    procs = Diagnostics(StubBus(), never, processes=lambda: rows)
    top = procs.run(TopProcesses(count=5)).output
    assert len(top.splitlines()) == 2 * (2 + 5) + 1  # two tables: title, header, 5 rows
    assert never.calls == []  # no command ran


def test_real_runner_runs_argv_without_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    done = subprocess_runner(["echo", f"; touch {marker}", "$(id)", "|", "sh"], timeout=10)
    assert done.returncode == 0
    assert done.output == f"; touch {marker} $(id) | sh\n"  # printed, not interpreted
    assert not marker.exists()


def test_real_runner_errors_are_clear() -> None:
    with pytest.raises(RunnerError, match="not installed"):
        subprocess_runner(["definitely-not-a-command-xyz"], timeout=5)
    with pytest.raises(RunnerError, match="no result within"):
        subprocess_runner(["sleep", "5"], timeout=0.2)
    with pytest.raises(RunnerError, match="malformed argv"):
        subprocess_runner(["echo", "a\x00b"], timeout=5)


def test_truncate() -> None:
    assert truncate("abc", 10) == "abc"
    assert truncate("a" * 20, 10).startswith("a" * 10 + "\n[... truncated 10")
