"""Benchmark: the sidecar's /metrics against Debian's node_exporter, in the same run.

    .venv/bin/python bench/scrape.py [-n 300] [--lab]
    .venv/bin/python bench/scrape.py --units 100,1000,5000 [-n 20]

Starts the sidecar as its own process (the project's collectors on this host, one
snapshot taken, then served) and node_exporter (default collectors) on loopback, scrapes
each N times the way Prometheus does (a new connection, gzip accepted), and prints median
and p90 latency, CPU per scrape, series count and RSS side by side. `--lab` boots the
systemd sandbox of tests/harness/labsd.py and points the sidecar's systemd collector at it, for
hosts (like CI's) where systemd is not PID 1. Figures, not assertions.

`--units N,...` shows how the cost grows with the host: it boots the lab systemd, adds
units to it in steps (started oneshot services, `RemainAfterExit=yes`) and, at each size,
reports the systemd collection time (the collector alone, through its D-Bus child; fresh,
and subscribed to unit signals as in the daemon, where it re-reads changed units only), the
sidecar's scrape time, series and RSS (with its child), and the same for node_exporter's
own systemd collector pointed at the lab's bus through DBUS_SYSTEM_BUS_ADDRESS (it reads
systemd at scrape time, so its scrape time is its collection time). Last, the cost per
added unit between the smallest and the largest size.
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


def serve_sidecar(port: int, state_dir: str, bus: str | None, dbus_timeout: float = 10.0) -> None:
    """The sidecar side: wire collectors → one cycle → exporter → HTTP, like `macha-obs serve`."""
    from macha_obs.collect import CollectionLoop, build_collectors
    from macha_obs.collect.meta import MemoryMeta
    from macha_obs.config import validate
    from macha_obs.metrics import build_registry
    from macha_obs.server import make_app, start_server

    cfg = validate(
        {
            "state_dir": state_dir,
            "systemd_bus_address": bus,
            "dns_names": ["localhost"],
            "check_interval": 3600,
            "dbus_timeout": dbus_timeout,
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


def tree_rss(proc: psutil.Process) -> int:
    """RSS of a process and its children (the sidecar's D-Bus child counts)."""
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def measure(name: str, port: int, pid: int, n: int, warmup: int = 20) -> dict[str, float | str]:
    proc = psutil.Process(pid)
    for _ in range(warmup):  # warm-up: caches, allocator pools, lazy imports
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
        "tree_rss_mib": tree_rss(proc) / MIB,
    }


def start(stack: ExitStack, argv: list[str], port: int, **kwargs: Any) -> subprocess.Popen[str]:
    from tests.harness.stack import poll

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


# ---------------------------------------------------------------- --units: growth with the host

BENCH_UNIT = "[Unit]\nDescription=scrape bench\n[Service]\nType=oneshot\nRemainAfterExit=yes\n"
BENCH_UNIT += "ExecStart=/bin/true\n"


def add_units(lab: Any, have: int, want: int) -> None:
    """Units have..want-1, loaded and active: written, one reload, started by one target."""
    names = [f"bench-{i:05d}.service" for i in range(have, want)]
    for name in names:
        lab.write_unit(name, BENCH_UNIT, reload=False)
    target = f"bench-upto-{want}.target"
    lab.write_unit(target, "[Unit]\nWants=" + " ".join(names) + "\n", reload=False)
    lab.daemon_reload()
    lab.run("systemctl", "start", target, timeout=600)


def time_collection(bus: str, runs: int = 5) -> tuple[float, float, int, float]:
    """Median seconds of the systemd collector's collect() on a fresh child and on one that
    is subscribed to unit signals (as in the daemon: it re-reads only changed units), units
    seen, the child's RSS MiB."""
    from macha_obs.collect.systemd import SystemdCollector
    from macha_obs.systemd.bus import IsolatedBus

    shared = IsolatedBus(bus, timeout=120)
    try:
        collector = SystemdCollector(bus=shared, timeout=120)
        collector.collect()  # the child's start-up is not the collection
        medians = []
        for subscribed in (False, True):
            if subscribed:
                shared.subscribe(lambda _event: None, lambda: None)
                collector.collect()  # fills the child's per-unit cache
            took = []
            for _ in range(runs):
                started = time.perf_counter()
                reading, _ = collector.collect()
                took.append(time.perf_counter() - started)
            medians.append(statistics.median(took))
        pid = shared.child.pid()
        rss = psutil.Process(pid).memory_info().rss / MIB if pid else 0.0
        return medians[0], medians[1], len(reading.units), rss
    finally:
        shared.close()


def wait_for_systemd(port: int) -> None:
    from tests.harness.stack import poll

    marker = b'macha_scrape_collector_success{collector="systemd"}'
    if not poll(lambda: marker in scrape(port)[1], timeout=600, interval=0.5):
        raise RuntimeError("the sidecar never published a systemd collection")


def size_row(bus: str, node: str, workdir: Path, units: int, n: int) -> dict[str, float]:
    from tests.harness.stack import free_port

    collect_s, warm_s, seen, child_mib = time_collection(bus)
    row = {"units": float(units), "listed": float(seen), "collect_s": collect_s}
    row["warm_s"] = warm_s
    row["child_mib"] = child_mib
    with ExitStack() as stack:
        port, node_port = free_port(), free_port()
        argv = [sys.executable, __file__, "--serve", str(port), "--state-dir"]
        argv += [str(workdir / f"state-{units}"), "--bus", bus, "--dbus-timeout", "120"]
        sidecar = start(stack, argv, port, stdin=subprocess.PIPE)
        wait_for_systemd(port)
        ours = measure("macha-obs", port, sidecar.pid, n, warmup=2)
        node_argv = [node, f"--web.listen-address=127.0.0.1:{node_port}"]
        node_argv += ["--collector.disable-defaults", "--collector.systemd"]
        node_argv += ["--collector.systemd.enable-restarts-metrics"]
        node_argv += ["--collector.systemd.enable-start-time-metrics"]
        env = {"PATH": "/usr/bin:/bin", "DBUS_SYSTEM_BUS_ADDRESS": bus}
        exporter = start(
            stack,
            node_argv,
            node_port,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        theirs = measure("node_exporter", node_port, exporter.pid, n, warmup=2)
    for key, r in (("ours", ours), ("node", theirs)):
        row[f"{key}_scrape_ms"] = float(r["median_ms"])
        row[f"{key}_series"] = float(r["series"])
        row[f"{key}_rss_mib"] = float(r["tree_rss_mib"])
    return row


def run_units(sizes: list[int], n: int) -> int:
    from tests.harness.labsd import LabSystemd
    from tests.harness.stack import binary

    node = binary("node_exporter")
    if node is None:
        print("node_exporter is not installed (Debian: prometheus-node-exporter)")
        return 2
    rows = []
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="macha-units-")))
        lab = stack.enter_context(LabSystemd(workdir=workdir / "lab"))
        have = 0
        for size in sizes:
            add_units(lab, have, size)
            have = size
            rows.append(size_row(lab.bus_address, node, workdir, size, n))
            print(f"{size} units measured", file=sys.stderr, flush=True)
    head = f"{'added':>6}{'listed':>7}{'collect s':>10}{'subscribed':>11}{'child MiB':>10}"
    head += f"{'scrape ms':>10}{'series':>8}{'RSS MiB':>8}  |  node_exporter"
    head += f"{'scrape ms':>10}{'series':>8}{'RSS MiB':>8}"
    print(f"median of 5 collections, {n} scrapes per exporter (RSS with children)")
    print(head)
    for r in rows:
        print(
            f"{r['units']:>6.0f}{r['listed']:>7.0f}{r['collect_s']:>10.3f}{r['warm_s']:>11.3f}"
            f"{r['child_mib']:>10.1f}"
            f"{r['ours_scrape_ms']:>10.1f}{r['ours_series']:>8.0f}{r['ours_rss_mib']:>8.1f}  |  "
            f"{'':13}{r['node_scrape_ms']:>10.1f}{r['node_series']:>8.0f}{r['node_rss_mib']:>8.1f}"
        )
    if len(rows) > 1:
        lo, hi = rows[0], rows[-1]
        added = hi["listed"] - lo["listed"]
        print(f"per unit, {lo['units']:.0f} → {hi['units']:.0f} units added:")
        for label, key, scale, unit in (
            ("collection", "collect_s", 1e6, "µs"),
            ("collection, subscribed", "warm_s", 1e6, "µs"),
            ("macha-obs scrape", "ours_scrape_ms", 1e3, "µs"),
            ("macha-obs RSS", "ours_rss_mib", 1024, "KiB"),
            ("macha-obs series", "ours_series", 1, ""),
            ("node_exporter scrape", "node_scrape_ms", 1e3, "µs"),
            ("node_exporter RSS", "node_rss_mib", 1024, "KiB"),
            ("node_exporter series", "node_series", 1, ""),
        ):
            print(f"  {label:<22}{(hi[key] - lo[key]) * scale / added:>9.2f} {unit}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="scrapes per exporter")
    parser.add_argument("--lab", action="store_true", help="point systemd at the sandbox")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", help=argparse.SUPPRESS)
    parser.add_argument("--bus", help=argparse.SUPPRESS)
    parser.add_argument("--dbus-timeout", type=float, default=10.0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--units", help="comma-separated lab sizes to add units up to, e.g. 100,1000,5000"
    )
    args = parser.parse_args()
    if args.serve is not None:
        serve_sidecar(args.serve, args.state_dir, args.bus, args.dbus_timeout)
        return 0
    if args.units:
        sizes = sorted({int(x) for x in args.units.split(",")})
        return run_units(sizes, args.n if args.n != 300 else 20)
    # Imported here, not at the top: the sidecar process (--serve) must not carry the
    # test harness's imports (requests) in the RSS it reports.
    from tests.harness.stack import binary, free_port

    node = binary("node_exporter")
    if node is None:
        print("node_exporter is not installed (Debian: prometheus-node-exporter)")
        return 2
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="macha-bench-")))
        bus = None
        if args.lab:
            from tests.harness.labsd import LabSystemd

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
