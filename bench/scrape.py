"""Benchmark: the sidecar's /metrics against Debian's node_exporter, in the same run.

    .venv/bin/python bench/scrape.py [-n 300] [--lab]

Starts the sidecar as its own process (the project's collectors on this host, one
snapshot taken, then served) and node_exporter (default collectors) on loopback, scrapes
each N times the way Prometheus does (a new connection, gzip accepted), and prints median
and p90 latency, CPU per scrape, series count and RSS side by side. `--lab` boots the
systemd sandbox of tests/labsd.py and points the sidecar's systemd collector at it, for
hosts (like CI's) where systemd is not PID 1. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
MIB = 1024 * 1024


def serve_sidecar(port: int, state_dir: str, bus: str | None) -> None:
    """The sidecar side: wire collectors → one cycle → exporter → HTTP, like `macha-obs serve`."""
    from macha_obs.collect import CollectionLoop, build_collectors
    from macha_obs.collect.meta import MemoryMeta
    from macha_obs.config import validate
    from macha_obs.exporter import build_registry
    from macha_obs.server import make_app, start_server

    cfg = validate(
        {
            "state_dir": state_dir,
            "systemd_bus_address": bus,
            "dns_names": ["localhost"],
            "check_interval": 3600,
        }
    )
    loop = CollectionLoop(
        build_collectors(cfg, MemoryMeta()),
        hostname=cfg.hostname,
        interval=cfg.check_interval,
        state_dir=cfg.state_dir,
    )
    # One cycle now and the next in an hour: the scrapes measure the exporter, not collectors.
    loop.start()
    server, thread = start_server(
        "127.0.0.1", port, make_app(build_registry(loop.latest), ready=loop.ready)
    )
    print("serving", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    server.shutdown()
    loop.stop(timeout=30)
    thread.join(10)


def scrape(port: int) -> tuple[float, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    started = time.perf_counter()
    conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
    reply = conn.getresponse()
    body = reply.read()
    took = time.perf_counter() - started
    conn.close()
    if reply.status != 200:
        raise RuntimeError(f"port {port}: HTTP {reply.status}")
    if reply.getheader("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    return took, body


def series(body: bytes) -> int:
    return sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))


def measure(name: str, port: int, pid: int, n: int) -> dict[str, float | str]:
    proc = psutil.Process(pid)
    for _ in range(20):  # warm-up: caches, allocator pools, lazy imports
        scrape(port)
    before = proc.cpu_times()
    latencies = []
    body = b""
    for _ in range(n):
        took, body = scrape(port)
        latencies.append(took)
    after = proc.cpu_times()
    cpu = (after.user + after.system) - (before.user + before.system)
    latencies.sort()
    return {
        "name": name,
        "median_ms": statistics.median(latencies) * 1000,
        "p90_ms": latencies[int(0.9 * (len(latencies) - 1))] * 1000,
        "cpu_ms": cpu / n * 1000,
        "series": series(body),
        "rss_mib": proc.memory_info().rss / MIB,
    }


def start(stack: ExitStack, argv: list[str], port: int, **kwargs: Any) -> subprocess.Popen[str]:
    from tests.stack import poll

    proc: subprocess.Popen[str] = subprocess.Popen(argv, text=True, **kwargs)

    def end() -> None:
        if proc.stdin:
            proc.stdin.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    stack.callback(end)
    if not poll(lambda: scrape(port)[0] >= 0, timeout=60):
        raise RuntimeError(f"{argv[0]} did not serve /metrics on port {port}")
    return proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="scrapes per exporter")
    parser.add_argument("--lab", action="store_true", help="point systemd at the sandbox")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", help=argparse.SUPPRESS)
    parser.add_argument("--bus", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve_sidecar(args.serve, args.state_dir, args.bus)
        return 0
    # Imported here, not at the top: the sidecar process (--serve) must not carry the
    # test harness's imports (requests) in the RSS it reports.
    from tests.stack import binary, free_port

    node = binary("node_exporter")
    if node is None:
        print("node_exporter is not installed (Debian: prometheus-node-exporter)")
        return 2
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="macha-bench-")))
        bus = None
        if args.lab:
            from tests.labsd import LabSystemd

            bus = stack.enter_context(LabSystemd(workdir=workdir / "lab")).bus_address
        sidecar_port, node_port = free_port(), free_port()
        argv = [
            sys.executable,
            __file__,
            "--serve",
            str(sidecar_port),
            "--state-dir",
            str(workdir / "state"),
        ] + (["--bus", bus] if bus else [])
        sidecar = start(stack, argv, sidecar_port, stdin=subprocess.PIPE)
        exporter = start(
            stack,
            [node, f"--web.listen-address=127.0.0.1:{node_port}"],
            node_port,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        rows = [
            measure("macha-obs", sidecar_port, sidecar.pid, args.n),
            measure("node_exporter", node_port, exporter.pid, args.n),
        ]
    print(
        f"{args.n} scrapes each, loopback, gzip, new connection per scrape"
        f"{', systemd: sandbox' if args.lab else ''}"
    )
    print(f"{'':14}{'median ms':>10}{'p90 ms':>9}{'CPU ms/scrape':>15}{'series':>8}{'RSS MiB':>9}")
    for r in rows:
        print(
            f"{r['name']:<14}{r['median_ms']:>10.2f}{r['p90_ms']:>9.2f}{r['cpu_ms']:>15.2f}"
            f"{r['series']:>8}{r['rss_mib']:>9.1f}"
        )
    ratio = float(rows[0]["median_ms"]) / float(rows[1]["median_ms"])
    print(f"median latency ratio macha-obs / node_exporter: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
