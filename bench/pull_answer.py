"""Peak memory of reading one Alertmanager answer, per shape: the pull's streaming reader
against the whole-answer `json.loads` it replaced.

    python bench/pull_answer.py [--size-mb 60]
    python bench/pull_answer.py --daemon [--size-mb 60] [--rounds 10]

Each figure is measured in a fresh process: its peak RSS (VmHWM) after the read, minus
its RSS before it, with the answer generated in 64 KiB chunks as a peer sends it. The
"end to end" row asks a real HTTP peer on loopback (tests/harness/hostile_peer.py)
through the intake's own fetch, deadline and bounds (the defaults of config.py); its
"answer" column is what the intake holds of the answer once read (bytes as they came).

`--daemon`: `macha-obs serve` on the lab systemd pulling every second from a real
Alertmanager (this host's alert), a flood, a one-group flood, deep nesting (each of
`--size-mb`) and a drip, all at once, for `--rounds` rounds past its 2 s deadline: the
daemon's RSS before, and its peak (VmHWM, reset when the peers turn hostile).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from macha_obs.intake.pull_answer import AnswerLimits, AnswerReader, AnswerRefused
from macha_obs.intake.pull_fetch import fetch_answer
from tests.harness.daemon_support import HOST, Daemon
from tests.harness.hostile_peer import (
    MB,
    HostilePeer,
    alerts_of_nothing,
    deep,
    flat_objects,
    real_groups,
)
from tests.harness.labsd import LabSystemd
from tests.harness.stack import Alertmanager, poll

SHAPES = ("flood", "alerts", "deep", "real")


def rss_kb(field: str) -> int:
    found = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    assert found is not None
    return int(found.group(1))


def chunks(shape: str, size: int) -> Iterator[bytes]:
    if shape == "real":  # 50 groups of 400 alerts: 20,000, the default cap
        return rechunk(real_groups(50, 400))
    return {"flood": flat_objects, "alerts": alerts_of_nothing, "deep": deep}[shape](size)


def rechunk(parts: Iterator[bytes], size: int = 65536) -> Iterator[bytes]:
    buf = bytearray()
    for part in parts:
        buf += part
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    yield bytes(buf)


def one(shape: str, method: str, size: int) -> dict[str, object]:
    """Read one answer in this process; what it cost."""
    source = list(chunks(shape, size)) if method != "end-to-end" else []
    held = sum(len(c) for c in source)
    before = rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    began = time.perf_counter()
    result = "ok"
    read = 0
    took = 0.0
    if method == "json.loads":
        raw = bytearray()
        for chunk in source:
            raw += chunk
        read = len(raw)
        try:
            json.loads(raw)
        except (ValueError, RecursionError) as exc:
            result = type(exc).__name__
    elif method == "reader":
        reader = AnswerReader(AnswerLimits())
        try:
            for chunk in source:
                reader.feed(chunk)
            reader.finish()
        except AnswerRefused as exc:
            result = exc.result
        read = reader.bytes
    else:
        with HostilePeer(shape, size) as peer:
            answer = fetch_answer(peer.url + "/api/v2/alerts/groups", {}, peer=peer.name,
                                  timeout=60, limits=AnswerLimits())  # fmt: skip
            took = time.perf_counter() - began  # not the peer's shutdown
        result = answer.result
        held = sum(len(g.meta) + sum(map(len, g.alerts)) for g in answer.groups)
    seconds = took if method == "end-to-end" else time.perf_counter() - began
    peak = rss_kb("VmHWM") - before
    return {"shape": shape, "method": method, "answer_bytes": held, "read_bytes": read,
            "result": result, "peak_rss_mib": round(peak / 1024, 1),
            "seconds": round(seconds, 2)}  # fmt: skip


def daemon(size: int, rounds: int) -> None:
    """The daemon's RSS under every hostile shape at once."""
    route = "route:\n  receiver: nobody\n  group_wait: 0s\nreceivers:\n  - name: nobody\n"
    with tempfile.TemporaryDirectory(prefix="pull-") as tmp, LabSystemd() as lab:
        work = Path(tmp)
        am = Alertmanager(work / "am", route)
        am.start()
        shapes = ("flood", "alerts", "deep", "drip")
        peers = [HostilePeer("good", size).__enter__() for _ in shapes]
        try:
            body = [{"labels": {"alertname": "Ours", "instance": f"{HOST}:9100"}}]
            requests.post(f"{am.url}/api/v2/alerts", json=body, timeout=10).raise_for_status()
            urls = ",".join([am.url, *(p.url for p in peers)])
            settings = {"alertmanager_pull_interval": 1, "alertmanager_pull_timeout": 2}
            run = Daemon(lab, work / "state", alertmanager_urls=urls, **settings).start()
            assert run.proc is not None
            pid = run.proc.pid
            poll(
                lambda: (
                    (run.metric("macha_alertmanager_pull_alerts_total", result="new") or 0) >= 1
                ),
                60,
            )

            def complete() -> float:
                return run.metric("macha_alertmanager_pull_rounds_total", result="complete") or 0

            poll(lambda: complete() >= 3, 30)  # a few quiet rounds: the baseline
            before = vm(pid, "VmRSS")
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            for peer, shape in zip(peers, shapes, strict=True):
                peer.mode = shape
            began = time.monotonic()
            drip = peers[-1].name

            def timeouts() -> float:
                return (
                    run.metric("macha_alertmanager_pulls_total", peer=drip, result="timeout") or 0
                )

            poll(lambda: timeouts() >= rounds, 60 + 4 * rounds)
            took = time.monotonic() - began
            peak = vm(pid, "VmHWM")
            reply = requests.get(f"{run.url}/readyz", timeout=5)
            ready = f"{reply.status_code} {reply.text.strip()}"
            run.stop()
        finally:
            for peer in peers:
                peer.__exit__()
            am.stop()
    print(f"daemon: {rounds} rounds in {took:.1f} s against {', '.join(shapes)} ({size // MB} MiB"
          f" each) and a real Alertmanager: RSS {before / 1024:.1f} MiB before, peak"
          f" {peak / 1024:.1f} MiB (+{(peak - before) / 1024:.1f} MiB)")  # fmt: skip
    print(f"/readyz: {ready}")


def vm(pid: int, field: str) -> int:
    found = re.search(rf"{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert found is not None
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=60)
    parser.add_argument("--one", nargs=2, metavar=("SHAPE", "METHOD"))
    parser.add_argument("--daemon", action="store_true")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    size = args.size_mb * MB
    if args.daemon:
        daemon(size, args.rounds)
        return
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], size)))
        return
    print("| shape | method | answer | read | result | peak RSS growth | time |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for shape in SHAPES:
        for method in ("json.loads", "reader", "end-to-end"):
            out = subprocess.run(
                [sys.executable, __file__, "--size-mb", str(args.size_mb), "--one", shape, method],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            row = json.loads(out.stdout)
            answer = f"{int(row['answer_bytes']) / MB:.1f} MiB" if row["answer_bytes"] else "-"
            read = f"{int(row['read_bytes']) / MB:.2f} MiB" if row["read_bytes"] else "-"
            print(f"| {shape} | {method} | {answer} | {read} | {row['result']} |"
                  f" {row['peak_rss_mib']} MiB | {row['seconds']} s |")  # fmt: skip


if __name__ == "__main__":
    main()
