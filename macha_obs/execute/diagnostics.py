"""Read-only diagnostics: the allowlist behind `investigate` and the agent's tools.

Each diagnostic is a typed model (macha_obs.models); this module maps it to a D-Bus
query or to an argv built here from validated fields. Output is truncated.
"""

from __future__ import annotations

from pathlib import Path

from macha_obs.execute.bus import SystemdBus
from macha_obs.execute.errors import ExecutorError
from macha_obs.execute.runner import Runner, truncate
from macha_obs.models import (
    Diagnostic,
    DiskUsage,
    ExecutionResult,
    FailedUnits,
    JournalTail,
    ListeningSockets,
    TopProcesses,
    UnitStatus,
)


def diagnostic_argv(diag: Diagnostic, *, journal_dir: Path | None = None) -> list[str] | None:
    """The command for a diagnostic, or None when it is answered over D-Bus."""
    match diag:
        case JournalTail(unit=unit, lines=lines):
            argv = ["journalctl", "--no-pager", "-o", "short-iso", "-n", str(lines), "-u", unit]
            if journal_dir is not None:
                argv += ["--directory", str(journal_dir)]
            return argv
        case DiskUsage():
            return ["df", "-P", "-h", "-x", "tmpfs", "-x", "devtmpfs", "-x", "overlay"]
        case TopProcesses(count=count):
            # ps prints every process; the row count is applied when truncating
            del count
            return ["ps", "-eo", "pid,user,pcpu,pmem,rss,comm", "--sort=-pcpu"]
        case ListeningSockets():
            return ["ss", "-H", "-tuln"]
        case UnitStatus() | FailedUnits():
            return None
    raise AssertionError(f"unhandled diagnostic {diag!r}")  # pragma: no cover


class Diagnostics:
    def __init__(
        self,
        bus: SystemdBus,
        runner: Runner,
        *,
        journal_dir: Path | None = None,
        timeout: float = 10.0,
        limit: int = 8192,
    ) -> None:
        self.bus = bus
        self.runner = runner
        self.journal_dir = journal_dir
        self.timeout = timeout
        self.limit = limit

    def run(self, diag: Diagnostic) -> ExecutionResult:
        try:
            text = self._text(diag)
        except ExecutorError as exc:
            return ExecutionResult(ok=False, detail=f"{diag.tool}: {exc}")
        return ExecutionResult(
            ok=True, verified=True, detail=diag.tool, output=truncate(text, self.limit)
        )

    def _text(self, diag: Diagnostic) -> str:
        if isinstance(diag, UnitStatus):
            s = self.bus.unit_state(diag.unit)
            return (
                f"{s.name}: load={s.load_state} active={s.active_state} sub={s.sub_state} "
                f"result={s.result or '-'} restarts={s.n_restarts} main_pid={s.main_pid}"
            )
        if isinstance(diag, FailedUnits):
            rows = self.bus.list_units(("failed",))
            return (
                "\n".join(f"{n} {load} {active} {sub}" for n, load, active, sub in rows) or "none"
            )
        argv = diagnostic_argv(diag, journal_dir=self.journal_dir)
        if argv is None:  # pragma: no cover - every D-Bus diagnostic is handled above
            raise ExecutorError(f"{diag.tool} has no command")
        done = self.runner(argv, timeout=self.timeout)
        out = done.output
        if isinstance(diag, TopProcesses):
            out = "\n".join(out.splitlines()[: diag.count + 1])
        if done.returncode != 0:
            out += f"\n[exit {done.returncode}]"
        return out
