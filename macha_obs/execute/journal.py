"""Journal vacuum as an argv list."""

from __future__ import annotations

from pathlib import Path

from macha_obs.execute.runner import Runner
from macha_obs.models import ExecutionResult, JournalVacuum


def vacuum_argv(action: JournalVacuum, *, journal_dir: Path | None = None) -> list[str]:
    argv = ["journalctl", f"--vacuum-size={action.max_size_mb}M"]
    if journal_dir is not None:
        argv += ["--directory", str(journal_dir)]
    return argv


class JournalExecutor:
    def __init__(
        self, runner: Runner, *, journal_dir: Path | None = None, timeout: float = 300
    ) -> None:
        self.runner = runner
        self.journal_dir = journal_dir
        self.timeout = timeout

    def run(self, action: JournalVacuum) -> ExecutionResult:
        done = self.runner(vacuum_argv(action, journal_dir=self.journal_dir), timeout=self.timeout)
        ok = done.returncode == 0
        return ExecutionResult(
            ok=ok,
            verified=ok,
            detail=f"journal vacuum exited {done.returncode}",
            output=done.output,
        )
