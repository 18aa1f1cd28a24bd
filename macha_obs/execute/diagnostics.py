"""Read-only diagnostics: the allowlist behind `investigate` and the agent's tools.

Each diagnostic is a typed model (macha_obs.models); this module answers it over D-Bus,
from /proc through psutil (processes, sockets: no `ps` or `ss`, which a NixOS unit's PATH
lacks), or with an argv built here from validated fields. Output is truncated.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from macha_obs.errors import ExecutorError
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
from macha_obs.systemd.bus import SystemdBus


def diagnostic_argv(diag: Diagnostic, *, journal_dir: Path | None = None) -> list[str] | None:
    """The command for a diagnostic, or None when it is answered in-process (D-Bus, psutil)."""
    match diag:
        case JournalTail(unit=unit, lines=lines):
            argv = ["journalctl", "--no-pager", "-o", "short-iso", "-n", str(lines), "-u", unit]
            if journal_dir is not None:
                argv += ["--directory", str(journal_dir)]
            return argv
        case DiskUsage():
            return ["df", "-P", "-h", "-x", "tmpfs", "-x", "devtmpfs", "-x", "overlay"]
        case UnitStatus() | FailedUnits() | TopProcesses() | ListeningSockets():
            return None
    raise AssertionError(f"unhandled diagnostic {diag!r}")  # pragma: no cover


# -- processes and sockets: fetch_* reads /proc (psutil), format_* is pure


@dataclass(frozen=True)
class ProcessRow:
    pid: int
    user: str
    cpu_percent: float  # over the process's lifetime, like ps's %CPU: no sampling wait
    mem_percent: float
    rss_kib: int
    name: str


@dataclass(frozen=True)
class SocketRow:
    proto: str  # tcp | udp
    address: str
    port: int
    state: str  # LISTEN (tcp), UNCONN (udp)


def _printable(text: str) -> str:
    """A process name as ps shows it: what would not print (a newline forging a row) is ?."""
    return "".join(c if c.isprintable() else "?" for c in text) or "?"


def fetch_processes(now: Callable[[], float] = time.time) -> list[ProcessRow]:
    """Every process this sandbox can see (ProtectProc=default: all of them)."""
    total = psutil.virtual_memory().total
    attrs = ["pid", "username", "cpu_times", "create_time", "memory_info", "name"]
    rows = []
    for proc in psutil.process_iter(attrs, ad_value=None):
        info = proc.info
        if info["create_time"] is None:
            continue  # gone meanwhile
        cpu = info["cpu_times"]
        busy = cpu.user + cpu.system if cpu is not None else 0.0
        age = max(now() - info["create_time"], 1e-3)
        rss = info["memory_info"].rss if info["memory_info"] is not None else 0
        rows.append(
            ProcessRow(
                pid=info["pid"],
                user=info["username"] or "?",
                cpu_percent=100.0 * busy / age,
                mem_percent=100.0 * rss / total if total else 0.0,
                rss_kib=rss // 1024,
                name=info["name"] or "",
            )
        )
    return rows


def format_processes(rows: Iterable[ProcessRow], count: int) -> str:
    """The `count` busiest processes by CPU, then the `count` largest by resident memory
    (the memory runbook's question), each table under a header with ps's columns."""
    rows = list(rows)
    by_cpu = sorted(rows, key=lambda r: (-r.cpu_percent, -r.rss_kib, r.pid))[:count]
    by_rss = sorted(rows, key=lambda r: (-r.rss_kib, -r.cpu_percent, r.pid))[:count]
    header = f"{'PID':>7} {'USER':<16} {'%CPU':>5} {'%MEM':>5} {'RSS':>9} COMMAND"
    parts = []
    for title, top in (("by CPU", by_cpu), ("by memory (RSS, KiB)", by_rss)):
        lines = [f"# {title}", header]
        lines += [
            f"{r.pid:>7} {_printable(r.user[:16]):<16} {r.cpu_percent:>5.1f} {r.mem_percent:>5.1f}"
            f" {r.rss_kib:>9} {_printable(r.name)}"
            for r in top
        ]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def fetch_sockets() -> list[SocketRow]:
    """Listening TCP and unconnected UDP sockets of this network namespace (/proc/net)."""
    rows = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.type == socket.SOCK_STREAM and conn.status == psutil.CONN_LISTEN:
            proto, state = "tcp", "LISTEN"
        elif conn.type == socket.SOCK_DGRAM and not conn.raddr:
            proto, state = "udp", "UNCONN"
        else:
            continue
        if conn.laddr:  # an unbound socket has none
            rows.append(SocketRow(proto, conn.laddr.ip, conn.laddr.port, state))
    return rows


def format_sockets(rows: Sequence[SocketRow]) -> str:
    if not rows:
        return "none"
    lines = []
    for r in sorted(set(rows), key=lambda r: (r.proto, r.port, r.address)):
        host = f"[{r.address}]" if ":" in r.address else r.address
        lines.append(f"{r.proto:<4} {r.state:<7} {host}:{r.port}")
    return "\n".join(lines)


class Diagnostics:
    def __init__(
        self,
        bus: SystemdBus,
        runner: Runner,
        *,
        journal_dir: Path | None = None,
        timeout: float = 10.0,
        limit: int = 8192,
        processes: Callable[[], list[ProcessRow]] = fetch_processes,
        sockets: Callable[[], list[SocketRow]] = fetch_sockets,
    ) -> None:
        self.bus = bus
        self.runner = runner
        self.journal_dir = journal_dir
        self.timeout = timeout
        self.limit = limit
        self.processes = processes
        self.sockets = sockets

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
        if isinstance(diag, TopProcesses):
            return self._read(lambda: format_processes(self.processes(), diag.count))
        if isinstance(diag, ListeningSockets):
            return self._read(lambda: format_sockets(self.sockets()))
        argv = diagnostic_argv(diag, journal_dir=self.journal_dir)
        if argv is None:  # pragma: no cover - every D-Bus diagnostic is handled above
            raise ExecutorError(f"{diag.tool} has no command")
        done = self.runner(argv, timeout=self.timeout)
        out = done.output
        if done.returncode != 0:
            out += f"\n[exit {done.returncode}]"
        return out

    @staticmethod
    def _read(produce: Callable[[], str]) -> str:
        """/proc read through psutil; a refusal is the diagnostic's failure, not a crash."""
        try:
            return produce()
        except (psutil.Error, OSError) as exc:
            raise ExecutorError(f"reading /proc: {exc}") from exc
