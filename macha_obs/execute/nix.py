"""Nix and NixOS actions as argv lists. The flake comes from the config, never a model."""

from __future__ import annotations

from macha_obs.execute.runner import Runner
from macha_obs.models import ExecutionResult, NixGc, NixRebuild, NixRollback

NixAction = NixGc | NixRebuild | NixRollback


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


class NixExecutor:
    def __init__(self, runner: Runner, *, flake: str | None = None, timeout: float = 3600) -> None:
        self.runner = runner
        self.flake = flake
        self.timeout = timeout

    def run(self, action: NixAction) -> ExecutionResult:
        done = self.runner(nix_argv(action, flake=self.flake), timeout=self.timeout)
        ok = done.returncode == 0
        return ExecutionResult(
            ok=ok,
            verified=ok,
            detail=f"{' '.join(done.argv)} exited {done.returncode}",
            output=done.output,
        )
