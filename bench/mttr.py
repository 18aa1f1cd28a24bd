"""MTTR benchmark: a unit's failure to it being active again, by the sidecar and by Monit.

    python bench/mttr.py [--trials 20] [--idle-seconds 600] [--quick]

What is compared, in one run on one machine:

- event path: `macha-obs serve` (auto-safe, runbooks only, D-Bus events on) against a real
  systemd booted in a throw-away namespace (tests/harness/labsd.py). A trial SIGKILLs the main
  process of a fresh `Restart=no` service, so systemd marks it failed and only the sidecar
  can bring it back. Failure and recovery are systemd's own journal timestamps: the
  "Failed with result" line and the next "Started" line of that unit.
- event path, model busy: the same, with `analysis = llm-first` against a scripted model
  server (in this process) that answers every chat after 60 s, waiting on a timer in the
  server. Every incident asks the model, so from the second trial on each failure
  arrives while a model call is in flight: the runbooks' fix must not wait behind it.
- alert path: Prometheus (scrape and eval 1 s, the shipped rules with `for: 0s`) →
  Alertmanager (group_wait 0s) → POST /alerts → a sidecar that acts on alerts only
  (`dbus_events=false`, its own collectors and timer put an hour away). A second sidecar
  in observe mode is the one Prometheus scrapes: a sidecar's collectors also open incidents
  from what they see, so the one that exports the failure cannot be the one that acts, or
  the collector path would win the race against the alert. Reported: failure → active, and
  webhook arrival (the receiving sidecar's inbox `received_at`) → active.
- Monit (Debian's, `set daemon 1`, foreground) supervising a plain `sleep` process by
  pidfile on the host. Monit cannot see the lab systemd's units, so the comparison is
  "supervisor notices a dead process and starts a new one": kill time (our clock, just
  before kill(2)) → the new process's own clock at its first instruction (`date` in its
  start program). Same kind of service, same SIGKILL, same run.
- idle cost: a fresh sidecar with the default intervals (collect 15 s, check 300 s,
  D-Bus events on), not scraped, for `--idle-seconds`: CPU seconds of the process and its
  D-Bus worker children (utime + stime, live children and reaped ones), RSS, and PSS.

p90 is the nearest-rank 90th percentile. The first trial of each path is a warm-up and is
not counted (imports and the first D-Bus connections happen there).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/mttr.py` from anywhere: tests.* is ours
    sys.path.insert(0, str(ROOT))

from macha_obs.models import ActionStatus  # noqa: E402
from tests.harness.daemon_support import Daemon  # noqa: E402
from tests.harness.labsd import LabSystemd  # noqa: E402
from tests.harness.llm_fixtures import loopback_server  # noqa: E402
from tests.harness.stack import Alertmanager, Prometheus, poll  # noqa: E402
from tests.test_stack_eyes import alertmanager_config, fast_rules, prometheus_config  # noqa: E402

# journald MESSAGE_IDs (systemd's catalog): the unit entered failed / the unit started.
MSG_UNIT_FAILED = "d9b373ed55a64feb8242e02dbe79a49c"
MSG_UNIT_STARTED = "39f53479d3a045ac8e11786248231fbf"
SERVICE = "[Unit]\nDescription=mttr bench {name}\n[Service]\nExecStart=/bin/sleep infinity\n"
SERVICE += "Restart=no\n"
TRIAL_TIMEOUT = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
ACTING = {
    "autonomy_level": "auto-safe",
    "max_actions_per_target_per_hour": 1000,
    "max_actions_per_hour": 10000,
    "breaker_threshold": 100,
}


class BenchError(RuntimeError):
    pass


@dataclass
class Series:
    name: str
    samples: list[float] = field(default_factory=list)
    target: str = ""
    limit: float | None = None

    def median(self) -> float:
        return statistics.median(self.samples)

    def p90(self) -> float:
        ordered = sorted(self.samples)
        return ordered[math.ceil(0.9 * len(ordered)) - 1]

    def row(self) -> list[str]:
        if not self.samples:
            return [self.name, "0", "-", "-", "-", "-", self.target, "-"]
        met = "-" if self.limit is None else ("yes" if self.median() <= self.limit else "NO")
        return [
            self.name,
            str(len(self.samples)),
            f"{self.median():.3f}",
            f"{self.p90():.3f}",
            f"{min(self.samples):.3f}",
            f"{max(self.samples):.3f}",
            self.target,
            met,
        ]


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- systemd trials


def journal_marks(lab: LabSystemd, unit: str) -> tuple[float | None, float | None]:
    """(entered failed, next Started after that) for `unit`, from its journal, in epoch s."""
    failed: float | None = None
    for line in lab.journal(unit, output="json", timeout=10).splitlines():
        entry = json.loads(line)
        at = int(entry["__REALTIME_TIMESTAMP"]) / 1e6
        if entry.get("MESSAGE_ID") == MSG_UNIT_FAILED and failed is None:
            failed = at
        elif entry.get("MESSAGE_ID") == MSG_UNIT_STARTED and failed is not None:
            return failed, at
    return failed, None


def fresh_unit(lab: LabSystemd, name: str) -> None:
    lab.write_unit(name, SERVICE.format(name=name))
    lab.run("systemctl", "start", name)
    lab.wait_for_state(name, "active", timeout=10)


def systemd_trial(lab: LabSystemd, unit: str) -> tuple[float, float]:
    """SIGKILL the unit's process; (failed at, active again at), systemd's timestamps."""
    lab.run("systemctl", "kill", "-s", "KILL", unit)
    lab.wait_for_state(unit, "active", timeout=TRIAL_TIMEOUT)
    marks: tuple[float | None, float | None] = (None, None)

    def logged() -> bool:
        nonlocal marks
        marks = journal_marks(lab, unit)
        return marks[1] is not None

    if not poll(logged, timeout=10, interval=0.05):
        raise BenchError(f"{unit}: no failed/started pair in its journal: {marks}")
    failed, active = marks
    assert failed is not None
    assert active is not None
    return failed, active


def settle(daemon: Daemon, unit: str) -> None:
    """Wait for the sidecar's action on `unit` to be verified, so trials never overlap.

    The unit is left running: stopping it inside the verification's settle time would fail
    that verification and hold the next cycle for the whole verify timeout.
    """

    def done() -> bool:
        records = daemon.actions(unit)
        return bool(records) and records[-1].status is not ActionStatus.INTENT

    if not poll(done, timeout=TRIAL_TIMEOUT, interval=0.05):
        raise BenchError(f"the sidecar's action on {unit} did not finish")
    record = daemon.actions(unit)[-1]
    if record.status is not ActionStatus.SUCCEEDED:
        raise BenchError(f"the sidecar's action on {unit} ended {record.status}: {record.result}")


MODEL_DELAY = 60.0
# A well-formed answer that proposes nothing: the runbooks' fix for the unit joins it.
MODEL_ANSWER = json.dumps(
    {
        "assessment": "failing",
        "severity": "critical",
        "summary": "the service was killed",
        "root_cause": "SIGKILL",
        "confidence": 0.5,
        "proposals": [],
    }
)


@dataclass
class SlowModel:
    url: str = ""
    asked: int = 0  # chats received: the model was busy from the first one on


@contextlib.contextmanager
def slow_model(delay: float) -> Iterator[SlowModel]:
    """An Ollama-shaped server on loopback that answers every chat after `delay` s."""
    done = threading.Event()  # set at the end: answers still waiting go out at once
    state = SlowModel()

    class Handler(BaseHTTPRequestHandler):
        def send(self, obj: Any) -> None:
            data = json.dumps(obj).encode()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        def do_GET(self) -> None:
            model = {"name": "llama3.1:70b", "model": "llama3.1:70b"}  # the default model
            self.send({"models": [model], "version": "0.0.0-bench"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            state.asked += 1
            done.wait(delay)  # the model is busy: a timer in the server, not in the sidecar
            message = {"role": "assistant", "content": MODEL_ANSWER}
            self.send({"model": body.get("model"), "message": message, "done": True})

        def log_message(self, *args: Any) -> None:
            pass

    with loopback_server(Handler) as url:
        state.url = url
        try:
            yield state
        finally:
            done.set()  # answers still waiting go out at once, before the server stops


def event_path(lab: LabSystemd, work: Path, trials: int, *, model_busy: bool = False) -> Series:
    if model_busy:
        with slow_model(MODEL_DELAY) as model:
            series = _event_trials(
                lab,
                work / "event-busy",
                trials,
                Series(
                    f"event path, model busy ({MODEL_DELAY:g} s a call): failed → active",
                    target="≤ 0.5 s median (as idle)",
                    limit=0.5,
                ),
                analysis="llm-first",
                llm_enabled="true",
                ollama_url=model.url,
            )
            if model.asked < 1:
                raise BenchError("the model was never asked: not the busy-model case")
            # one call at a time, each held 60 s: every trial after the first met a busy model
            say(f"{series.name}: the model was asked {model.asked} time(s) during the trials")
            return series
    series = Series("event path: failed → active", target="≤ 0.5 s median", limit=0.5)
    return _event_trials(lab, work / "event", trials, series)


def _event_trials(
    lab: LabSystemd, work: Path, trials: int, series: Series, **settings: str
) -> Series:
    daemon = Daemon(lab, work / "state", **ACTING, **settings).start()
    try:
        for i in range(trials + 1):
            unit = f"mttr-{work.name}-{i}.service"
            fresh_unit(lab, unit)
            time.sleep(0.3)  # the sidecar has seen the unit active
            failed, active = systemd_trial(lab, unit)
            settle(daemon, unit)
            if i:
                series.samples.append(active - failed)
        say(f"{series.name}: median {series.median():.3f} s")
    except Exception:
        say(daemon.log_tail())
        raise
    finally:
        daemon.stop()
    return series


def inbox_arrival(state_dir: Path, unit: str) -> float | None:
    """When the first firing notification naming `unit` reached the sidecar (its inbox)."""
    db = state_dir / "state.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        rows = conn.execute("SELECT received_at, body FROM inbox ORDER BY id").fetchall()
    for received_at, body in rows:
        alerts = json.loads(body).get("alerts", [])
        if any(a["labels"].get("unit") == unit and a["status"] == "firing" for a in alerts):
            return float(received_at)
    return None


def alert_path(lab: LabSystemd, work: Path, trials: int) -> tuple[Series, Series]:
    total = Series("alert path: failed → active")
    after = Series(
        "alert path: webhook → active", target="≤ 0.2 s after arrival (median)", limit=0.2
    )
    hands = Daemon(
        lab,
        work / "hands" / "state",
        dbus_events="false",
        collect_interval=3600,
        check_interval=3600,
        **ACTING,
    )
    eyes = Daemon(lab, work / "eyes" / "state", autonomy_level="observe", dbus_events="false")
    started: list[Daemon | Alertmanager | Prometheus] = []
    try:
        for daemon in (hands, eyes):
            started.append(daemon.start())
        alertmanager = Alertmanager(work / "am", alertmanager_config(hands.port, hands.token_file))
        started.append(alertmanager)
        alertmanager.start()
        rules = work / "rules"
        rules.mkdir()
        prometheus = Prometheus(
            work / "prom", prometheus_config(eyes.port, alertmanager.port), fast_rules(rules)
        )
        started.append(prometheus)
        prometheus.start()
        prometheus.wait_targets_up(1)
        prometheus.wait_alertmanagers()
        say("alert path: stack up")
        for i in range(trials + 1):
            unit = f"mttr-alert-{i}.service"
            fresh_unit(lab, unit)
            time.sleep(1.5)  # a scrape has seen the unit active
            failed, active = systemd_trial(lab, unit)
            arrived = inbox_arrival(hands.state_dir, unit)
            if arrived is None:
                raise BenchError(f"{unit} came back without a webhook: not the alert path")  # noqa: TRY301
            if i:
                total.samples.append(active - failed)
                after.samples.append(active - arrived)
            settle(hands, unit)
        say(f"alert path: median {total.median():.3f} s ({after.median():.3f} after webhook)")
    except Exception:
        say(hands.log_tail())
        raise
    finally:
        for server in reversed(started):
            server.stop()
    return total, after


# ---------------------------------------------------------------- Monit

MONITRC = """\
set daemon 1
set logfile {work}/monit.log
set pidfile {work}/monit.pid
set idfile {work}/monit.id
set statefile {work}/monit.state
check process mttr-sleep with pidfile {work}/svc.pid
  start program = "/usr/bin/setsid -f /bin/sh -c 'date +%s.%N > {work}/svc.started; \
echo $$ > {work}/svc.pid; exec /bin/sleep infinity </dev/null >/dev/null 2>&1'"
  stop program = "/bin/sh -c 'kill -9 $(cat {work}/svc.pid)'"
"""


PR_SET_CHILD_SUBREAPER = 36


def set_subreaper(on: bool) -> None:
    """Become the reaper of orphans below us: this VM's PID 1 reaps them ~2 s late, and
    Monit sees a zombie as a running process until then. A real init (systemd) reaps at
    once; so do we, for the process we kill."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def kill_and_reap(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):  # not ours: someone else reaps it
        os.waitpid(pid, 0)


def read_pid(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
        return pid
    return None


@contextlib.contextmanager
def monit(work: Path) -> Iterator[Path]:
    work.mkdir(parents=True)
    rc = work / "monitrc"
    rc.write_text(MONITRC.format(work=work))
    rc.chmod(0o600)  # monit refuses a control file others can read
    set_subreaper(True)  # before Monit starts anything: its daemons are reparented to us
    with (work / "monit.out").open("wb") as out:
        proc = subprocess.Popen(
            ["monit", "-I", "-c", str(rc)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        if not poll(lambda: read_pid(work / "svc.pid") is not None, timeout=15):
            raise BenchError(
                f"monit did not start the service:\n{(work / 'monit.log').read_text()}"
            )
        yield work
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        pid = read_pid(work / "svc.pid")  # monit leaves what it started running
        if pid is not None:
            kill_and_reap(pid)
        set_subreaper(False)


def monit_path(work: Path, trials: int) -> Series:
    series = Series("monit (set daemon 1): kill → restarted")
    with monit(work / "monit") as dirpath:
        pidfile, stamp = dirpath / "svc.pid", dirpath / "svc.started"
        for i in range(trials + 1):
            old = read_pid(pidfile)
            if old is None:
                raise BenchError("monit's service is not running")
            # the cycle phase is whatever it is: a trial starts at a random point of it
            time.sleep(0.3 + (i % 7) / 10)
            killed = time.time()
            kill_and_reap(old)

            def restarted(old: int = old) -> bool:
                pid = read_pid(pidfile)
                return pid is not None and pid != old and stamp.exists()

            if not poll(restarted, timeout=TRIAL_TIMEOUT, interval=0.01):
                raise BenchError("monit did not restart the service")
            time.sleep(0.05)  # the stamp is written before the pidfile; be sure it is whole
            if i:
                series.samples.append(float(stamp.read_text()) - killed)
        say(f"monit: median {series.median():.3f} s")
    return series


# ---------------------------------------------------------------- idle cost


@dataclass
class ProcUsage:
    cpu_seconds: float
    rss_bytes: int
    self_rss_bytes: int
    children: int
    pss_bytes: int = 0  # RSS with each shared page split among the processes that map it


def _pss(pid: int) -> int:
    """Proportional set size: what RSS counts twice (the interpreter's code, shared by the
    sidecar and its child, and libc with every process) is split, not repeated."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def _stat(pid: int) -> list[str]:
    # comm, in parentheses, may hold spaces: split after the last ')'
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    out += [int(child), *_descendants(int(child))]
    return out


def usage(pid: int) -> ProcUsage:
    """utime+stime of pid and its live descendants, plus reaped children; RSS of them all."""
    own = _stat(pid)
    ticks = sum(int(own[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    self_rss = int(own[21]) * PAGE
    rss, pss = self_rss, _pss(pid)
    kids = _descendants(pid)
    for kid in kids:
        with contextlib.suppress(OSError):
            fields = _stat(kid)
            ticks += int(fields[11]) + int(fields[12])
            rss += int(fields[21]) * PAGE
            pss += _pss(kid)
    return ProcUsage(ticks / CLK_TCK, rss, self_rss, len(kids), pss)


def idle_cost(lab: LabSystemd, work: Path, seconds: float) -> tuple[ProcUsage, ProcUsage, float]:
    daemon = Daemon(lab, work / "idle" / "state", collect_interval=15, check_interval=300)
    daemon.start()
    try:
        assert daemon.proc is not None
        time.sleep(min(20.0, seconds / 4))  # past start-up: imports, first collection
        before, began = usage(daemon.proc.pid), time.monotonic()
        say(f"idle: measuring for {seconds:g} s")
        time.sleep(seconds)
        after, elapsed = usage(daemon.proc.pid), time.monotonic() - began
    finally:
        daemon.stop()
    return before, after, elapsed


# ---------------------------------------------------------------- main


def table(rows: list[list[str]]) -> str:
    header = ["what", "n", "median s", "p90 s", "min s", "max s", "target", "met"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="counted trials per path")
    parser.add_argument("--idle-seconds", type=float, default=600.0)
    parser.add_argument("--quick", action="store_true", help="5 trials, 30 s idle")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["event", "busy", "alert", "monit", "idle"],
    )
    args = parser.parse_args(argv)
    trials, idle = (5, 30.0) if args.quick else (args.trials, args.idle_seconds)
    if trials < 1:
        parser.error("--trials must be at least 1")
    rows: list[Series] = []
    idle_result: tuple[ProcUsage, ProcUsage, float] | None = None
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mttr-") as tmp, LabSystemd() as lab:
        work = Path(tmp)
        say(f"lab systemd up in {lab.boot_seconds:.2f} s; {trials} trials per path")
        if "event" not in args.skip:
            rows.append(event_path(lab, work, trials))
        if "busy" not in args.skip:
            rows.append(event_path(lab, work, trials, model_busy=True))
        if "alert" not in args.skip:
            rows.extend(alert_path(lab, work, trials))
        if "monit" not in args.skip:
            rows.append(monit_path(work, trials))
        if "idle" not in args.skip:
            idle_result = idle_cost(lab, work, idle)
    print(f"\nMTTR, {trials} trials per path (+1 warm-up, not counted)\n")
    print(table([s.row() for s in rows]))
    if idle_result is not None:
        before, after, elapsed = idle_result
        cpu = after.cpu_seconds - before.cpu_seconds
        print(f"\nidle sidecar over {elapsed:.0f} s (collect 15 s, check 300 s, events on):")
        print(f"  CPU  {cpu:.2f} s = {100 * cpu / elapsed:.3f} % of one core")
        print(
            f"  RSS  {after.self_rss_bytes / 2**20:.1f} MiB (sidecar), "
            f"{after.rss_bytes / 2**20:.1f} MiB with {after.children} D-Bus worker "
            f"child(ren); at start of window {before.rss_bytes / 2**20:.1f} MiB"
        )
        print(f"  PSS  {after.pss_bytes / 2**20:.1f} MiB, sidecar and child(ren) together")
    print(f"\nwall time {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
