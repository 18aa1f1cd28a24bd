"""Nix and NixOS actions as argv lists. The flake comes from the config, never a model.

A garbage collection is measured, not assumed: `measured_gc` reads the free space of the
store's filesystem before and after, so "verified" means bytes came back.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from macha_obs.execute.runner import Runner
from macha_obs.models import (
    ExecutionResult,
    NixActivate,
    NixGc,
    NixGcKeep,
    NixRebuild,
    NixRollback,
)

NixAction = NixGc | NixRebuild | NixRollback
RootNixAction = NixAction | NixGcKeep | NixActivate
PROFILES = Path("nix/var/nix/profiles")
STORE = Path("nix/store")
# nix-collect-garbage's last line: "1234 store paths deleted, 567.89 MiB freed"
_FREED = re.compile(r"\b(\d+(?:\.\d+)?) (B|KiB|MiB|GiB|TiB) freed\b")
_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
Measure = Callable[[], int | None]


def system_profile(nix_root: Path) -> Path:
    """The system profile link; generation N is its sibling `system-N-link`."""
    return nix_root / PROFILES / "system"


def nix_argv(action: NixAction, *, flake: str | None = None) -> list[str]:
    """The exact command for `action`. Every element comes from a typed, bounded field."""
    match action:
        case NixGc(older_than_days=None):
            return ["nix-collect-garbage"]
        case NixGc(older_than_days=days):
            return ["nix-collect-garbage", "--delete-older-than", f"{days}d"]
        case NixRebuild(mode=mode):
            argv = ["nixos-rebuild", mode]
            if flake:
                argv += ["--flake", flake]
            return argv
        case NixRollback():
            return ["nixos-rebuild", "switch", "--rollback"]
    raise AssertionError(f"unhandled nix action {action!r}")  # pragma: no cover


def nix_commands(
    action: RootNixAction, *, flake: str | None = None, profile: Path
) -> list[list[str]]:
    """The commands for `action`, run in order, stopping at the first that fails."""
    match action:
        case NixGcKeep(keep=keep):
            delete = ["nix-env", "--profile", str(profile), "--delete-generations", f"+{keep}"]
            return [delete, ["nix-collect-garbage"]]
        case NixActivate(generation=n):
            # the profile first, so the boot default is the generation that runs
            switch = ["nix-env", "--profile", str(profile), "--switch-generation", str(n)]
            activate = [f"{profile}-{n}-link/bin/switch-to-configuration", "switch"]
            return [switch, activate]
    return [nix_argv(action, flake=flake)]


def parse_freed(output: str) -> int | None:
    """Bytes nix says it freed (its last "... freed" line); None when it said nothing."""
    found = _FREED.findall(output)
    if not found:
        return None
    number, unit = found[-1]
    return int(float(number) * _UNITS[unit])


def free_bytes(path: Path) -> int | None:
    """Space an unprivileged writer can still use on `path`'s filesystem."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def format_bytes(n: int) -> str:
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if n >= _UNITS[unit]:
            return f"{n / _UNITS[unit]:.1f} {unit}"
    return f"{n} B"


def measured_gc(run: Callable[[], ExecutionResult], measure: Measure) -> ExecutionResult:
    """Run a gc and report what it freed: the filesystem's free space before and after,
    else nix's own figure. Verified only when bytes came back; nothing freed says so."""
    before = measure()
    result = run()
    after = measure()
    said = parse_freed(result.output)
    if before is not None and after is not None:
        freed: int | None = max(0, after - before)
        how = "measured on the store's filesystem"
        if said is not None:
            how += f"; nix reports {format_bytes(said)}"
    else:
        freed, how = said, "as nix reports it (the filesystem could not be measured)"
    if not result.ok:
        return result.model_copy(update={"freed_bytes": freed, "verified": False})
    if freed is None:
        note = "freed bytes unknown: neither measured nor reported"
    elif freed == 0:
        note = f"freed nothing ({how}): nothing collectable, or others filled the space"
    else:
        note = f"freed {format_bytes(freed)} ({how})"
    return result.model_copy(
        update={
            "freed_bytes": freed,
            "verified": bool(freed),
            "detail": f"{result.detail}; {note}",
        }
    )


class NixExecutor:
    """Runs nix commands directly (a daemon running as root, and tests)."""

    def __init__(
        self,
        runner: Runner,
        *,
        flake: str | None = None,
        timeout: float = 3600,
        nix_root: Path = Path("/"),
    ) -> None:
        self.runner = runner
        self.flake = flake
        self.timeout = timeout
        self.profile = system_profile(nix_root)

    def run(self, action: RootNixAction) -> ExecutionResult:
        outputs: list[str] = []
        detail = ""
        for argv in nix_commands(action, flake=self.flake, profile=self.profile):
            done = self.runner(argv, timeout=self.timeout)
            outputs.append(done.output)
            detail = f"{' '.join(done.argv)} exited {done.returncode}"
            if done.returncode != 0:
                return ExecutionResult(ok=False, detail=detail, output="\n".join(outputs))
        return ExecutionResult(ok=True, verified=True, detail=detail, output="\n".join(outputs))
