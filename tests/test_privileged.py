"""Root-only actions cross the privilege boundary as a typed instance name, never a command."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from macha_obs.execute.privileged import (
    PrivilegedAction,
    PrivilegedExecutor,
    instance_for,
    parse_instance,
)
from macha_obs.models import (
    JournalVacuum,
    NixActivate,
    NixGc,
    NixGcKeep,
    NixRebuild,
    NixRollback,
    validate_unit_name,
)
from macha_obs.systemd.bus import IsolatedBus
from tests.harness.labsd import LabSystemd

ACTIONS = st.one_of(
    st.builds(NixGc, older_than_days=st.none() | st.integers(1, 3650)),
    st.builds(NixGcKeep, keep=st.integers(2, 1000)),
    st.builds(NixActivate, generation=st.integers(1, 999_999)),
    st.builds(NixRebuild, mode=st.sampled_from(["dry-build", "test", "switch", "boot"])),
    st.just(NixRollback()),
    st.builds(JournalVacuum, max_size_mb=st.integers(16, 1_000_000)),
)


@given(ACTIONS)
def test_instance_roundtrip(action: PrivilegedAction) -> None:
    instance = instance_for(action)
    assert parse_instance(instance) == action
    validate_unit_name(f"macha-autonomous-privileged@{instance}.service")


@pytest.mark.parametrize(
    "instance",
    [
        "",
        "nix-gc;reboot",
        "nix-gc-older-than-0d",
        "nix-gc-older-than-1d ",
        "journal-vacuum-1M",  # below the bound
        "nixos-rebuild-switch --flake github:evil/x",
        "nixos-rebuild-switch\n",
        "curl http://x | sh",
        "nixos-rebuild-repl",
        "../../bin/sh",
        "nix-gc-keep-1",  # would leave nothing to roll back to
        "nix-gc-keep-0",
        "nix-gc-keep-1001",
        "nix-gc-keep-+3",
        "nixos-activate-0",
        "nixos-activate-01",
        "nixos-activate-1000000",
        "nixos-activate-../../x",
    ],
)
def test_anything_outside_the_grammar_is_refused(instance: str) -> None:
    with pytest.raises(ValueError, match="not a privileged action instance"):
        parse_instance(instance)


@given(st.text(max_size=60))
def test_parse_instance_never_accepts_what_it_cannot_print(text: str) -> None:
    try:
        action = parse_instance(text)
    except ValueError:
        return
    assert instance_for(action) == text


@pytest.fixture
def privileged_template(
    systemd_container: LabSystemd, unit_factory: Callable[[str, str], str]
) -> Iterator[IsolatedBus]:
    # The root side as the NixOS module installs it: `macha-obs privileged %i`.
    unit_factory(
        "macha-priv@.service",
        f"[Service]\nType=oneshot\nExecStart={sys.executable} -m macha_obs.cli privileged %i\n",
    )
    bus = IsolatedBus(systemd_container.bus_address)
    yield bus
    bus.close()


@pytest.mark.systemd
def test_privileged_journal_vacuum_runs_as_a_oneshot(
    systemd_container: LabSystemd, privileged_template: IsolatedBus
) -> None:
    executor = PrivilegedExecutor(privileged_template, "macha-priv", poll_interval=0.05)
    result = executor.run(JournalVacuum(max_size_mb=64))
    assert result.verified, result.detail
    assert "macha-priv@journal-vacuum-64M.service" in result.detail
    log = systemd_container.journal("macha-priv@journal-vacuum-64M.service")
    assert "running: journalctl --vacuum-size=64M" in log


@pytest.mark.systemd
def test_privileged_failure_is_reported(
    systemd_container: LabSystemd, privileged_template: IsolatedBus
) -> None:
    # nixos-rebuild does not exist here: the oneshot fails and says so
    executor = PrivilegedExecutor(privileged_template, "macha-priv", poll_interval=0.05)
    result = executor.run(NixRebuild(mode="dry-build"))
    assert not result.ok
    assert "failed" in result.detail
    log = systemd_container.journal("macha-priv@nixos-rebuild-dry-build.service")
    assert "nixos-rebuild: not installed" in log
