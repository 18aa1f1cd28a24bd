"""A fleet of hosts on one machine: each host a network namespace with its own lab systemd,
node_exporter and `macha-obs serve`; one Prometheus and an Alertmanager HA pair (clustered
through their real gossip) in a hub namespace that bridges the hosts.

Nothing binds in the machine's own network namespace: the hub is a fresh namespace owned
by one thread of the test process (`Netns.fresh`), each host is its lab systemd's own
namespace (labsd already unshares one), and the hosts reach the hub over veth pairs on a
bridge inside the hub. Work that must happen "on" a host or in the hub (starting a server,
an HTTP request to it) runs on that namespace's thread: a process is born in the network
namespace of the thread that forks it, and a socket lives in the namespace it was made in.
Everything is stopped by PID; a namespace goes when its last process and thread do.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import requests

from macha_obs.intake.token import ensure_token
from tests.harness.daemon_support import Daemon
from tests.harness.labsd import LabSystemd
from tests.harness.stack import Alertmanager, Prometheus, StackError, binary, free_port, poll

T = TypeVar("T")

_CLONE_NEWNET = 0x40000000
# A private /24 that exists only inside the namespaces made here (no default route there).
SUBNET = "10.247.77"
HUB_ADDRESS = f"{SUBNET}.1"
SIDECAR_PORT = 9847  # every host has its own namespace: the same port on each, as in a fleet
NODE_EXPORTER_PORT = 9100
# node_exporter reports only the test's own units: a few series, a fast scrape.
FLEET_UNITS = r"fleet-.+\.service"

# The unit-failed rule written against node_exporter's systemd collector (its `name` label
# becomes the `unit` label the sidecar's runbooks read); `for: 0s` so it fires at once.
FLEET_RULES = """\
groups:
  - name: fleet
    rules:
      - alert: MachaUnitFailed
        expr: >-
          label_replace(node_systemd_unit_state{state="failed"} == 1,
          "unit", "$1", "name", "(.+)")
        for: 0s
        labels:
          severity: critical
        annotations:
          summary: "{{ $labels.unit }} failed on {{ $labels.instance }}"
"""

# Fails its first start, starts fine afterwards; every start leaves a line in /run/NAME.starts
# (so a restart is counted whoever asked for it). `ok` pre-creates the marker: healthy at once.
CRASH_ONCE = """\
[Service]
ExecStartPre=/bin/sh -c 'echo start >> /run/{name}.starts'
ExecStartPre=/bin/sh -c 'test -e /run/{name}.ok || {{ touch /run/{name}.ok; exit 3; }}'
ExecStart=/bin/sleep infinity
"""


# PDEATHSIG: a SIGKILLed test process takes the servers it started in a namespace with it.
DIE_WITH_US = ["setpriv", "--pdeathsig", "KILL", "--"]


class NetnsError(RuntimeError):
    """A namespace could not be made, entered or configured; the message says which."""


def _libc_call(name: str, *args: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        errno = ctypes.get_errno()
        raise NetnsError(f"{name}: {os.strerror(errno)}")


def _unshare_net() -> None:
    _libc_call("unshare", _CLONE_NEWNET)


def _enter_net_of(pid: int) -> None:
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _libc_call("setns", fd, _CLONE_NEWNET)
    finally:
        os.close(fd)


def run(argv: Sequence[str], timeout: float = 10.0) -> str:
    """Run a command (in the calling thread's namespace); its stdout, or NetnsError."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


class Netns:
    """One thread living in a network namespace: calls submitted run there, and processes
    they start are born there. A network namespace is per thread in Linux, so the rest of
    the test process stays where it was."""

    def __init__(self, name: str, enter: Callable[[], None]) -> None:
        self.name = name
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"netns-{name}", initializer=enter)
        self.tid = self.call(threading.get_native_id)

    @classmethod
    def fresh(cls, name: str) -> Netns:
        """A new, empty namespace (loopback up) that lives as long as this thread and the
        processes started in it."""
        netns = cls(name, _unshare_net)
        netns.ip("link", "set", "lo", "up")
        return netns

    @classmethod
    def of_process(cls, name: str, pid: int) -> Netns:
        """The network namespace process `pid` lives in."""
        return cls(name, lambda: _enter_net_of(pid))

    @property
    def path(self) -> str:
        """The namespace as a file `ip link set ... netns PATH` accepts."""
        return f"/proc/{os.getpid()}/task/{self.tid}/ns/net"

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        return self._pool.submit(fn, *args, **kwargs)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self.submit(fn, *args, **kwargs).result()

    def ip(self, *args: str) -> str:
        return self.call(run, ["ip", *args])

    def get(self, url: str, **params: str) -> requests.Response:
        """An HTTP GET from inside the namespace."""
        return self.call(requests.get, url, params=params, timeout=5)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _spawn(argv: list[str], env: dict[str, str], out: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def _relisten(argv: list[str], address: str, port: int) -> list[str]:
    """A stack server's argv, listening on `address` instead of loopback, and ended with
    the test process (the namespace thread that forks it lives as long as the process)."""
    flag = "--web.listen-address="
    return DIE_WITH_US + [f"{flag}{address}:{port}" if a.startswith(flag) else a for a in argv]


class HubPrometheus(Prometheus):
    """Prometheus on the hub's bridge address, where every host can reach it."""

    def __init__(self, workdir: Path, config_text: str, rule_files: list[Path]) -> None:
        super().__init__(workdir, config_text, rule_files)
        self.url = f"http://{HUB_ADDRESS}:{self.port}"

    def argv(self, path: str) -> list[str]:
        return _relisten(super().argv(path), HUB_ADDRESS, self.port)


class ClusteredAlertmanager(Alertmanager):
    """One Alertmanager of an HA pair on the hub's bridge, gossiping with its peers.

    Short gossip intervals make the cluster settle in about two seconds instead of the
    default's ten; `--cluster.peer-timeout` is how long the second peer waits for the
    first one's notification (seen through the gossiped notification log) before it
    sends itself, which is what keeps a pair from notifying twice.
    """

    def __init__(self, workdir: Path, config_text: str) -> None:
        super().__init__(workdir, config_text)
        self.url = f"http://{HUB_ADDRESS}:{self.port}"
        self.cluster_port = free_port()
        self.peers: list[str] = []

    @property
    def cluster_address(self) -> str:
        return f"{HUB_ADDRESS}:{self.cluster_port}"

    def argv(self, path: str) -> list[str]:
        argv = [a for a in super().argv(path) if not a.startswith("--cluster.")]
        argv = _relisten(argv, HUB_ADDRESS, self.port)
        argv += [
            f"--cluster.listen-address={self.cluster_address}",
            f"--cluster.advertise-address={self.cluster_address}",
            "--cluster.gossip-interval=50ms",
            "--cluster.pushpull-interval=2s",
            "--cluster.peer-timeout=2s",
            "--cluster.probe-interval=200ms",
            "--cluster.reconnect-interval=1s",
            f"--web.external-url={self.url}",
        ]
        return argv + [f"--cluster.peer={peer}" for peer in self.peers]

    def status(self) -> dict[str, Any]:
        reply = requests.get(f"{self.url}/api/v2/status", timeout=5)
        reply.raise_for_status()
        status: dict[str, Any] = reply.json()
        return status

    def clustered(self, size: int) -> bool:
        cluster = self.status()["cluster"]
        return bool(cluster["status"] == "ready" and len(cluster.get("peers") or []) == size)

    def reload(self, config_text: str) -> None:
        self.config.write_text(config_text)
        reply = requests.post(f"{self.url}/-/reload", timeout=10)
        if reply.status_code != 200:
            raise StackError(f"alertmanager reload: {reply.status_code} {reply.text}")

    def notifications(self) -> float:
        """Webhook notifications this peer sent (its own counter)."""
        text = requests.get(f"{self.url}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith('alertmanager_notifications_total{integration="webhook"}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def crash(self) -> None:
        """SIGKILL: a peer lost without leaving the cluster."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.stop()


class HostSidecar(Daemon):
    """`macha-obs serve` for one host of the fleet, on the host's own address."""

    def __init__(self, host: Host, state_dir: Path, **settings: object) -> None:
        listen = f"{host.address}:{SIDECAR_PORT}"
        super().__init__(host.lab, state_dir, listen_address=listen, hostname=host.name, **settings)
        self.host = host
        self.port = SIDECAR_PORT

    @property
    def url(self) -> str:
        return f"http://{self.host.address}:{SIDECAR_PORT}"

    def metric(self, name: str, **labels: str) -> float | None:
        # /metrics answers on the host's address, inside the host's namespace
        return self.host.netns.call(Daemon.metric, self, name, **labels)


@dataclass
class Host:
    """One host of the fleet: a lab systemd whose network namespace is the host's."""

    name: str
    address: str
    lab: LabSystemd
    netns: Netns
    node_exporter: subprocess.Popen[bytes] | None = None
    sidecar: HostSidecar | None = None
    log: Path | None = None

    def install(self, unit: str, *, healthy: bool) -> None:
        """Write a crash-once unit and start it: failed here unless `healthy`."""
        name = unit.removesuffix(".service")
        self.lab.write_unit(unit, CRASH_ONCE.format(name=name))
        if healthy:
            self.lab.run("touch", f"/run/{name}.ok")
        self.lab.run("systemctl", "start", unit, check=False)
        self.lab.wait_for_state(unit, "active" if healthy else "failed")

    def starts(self, unit: str) -> int:
        """How often systemd started `unit` here (the first start included)."""
        path = self.lab.root / "run" / f"{unit.removesuffix('.service')}.starts"
        with contextlib.suppress(FileNotFoundError):
            return len(path.read_text().splitlines())
        return 0

    def start_node_exporter(self, workdir: Path) -> None:
        exe = binary("node_exporter")
        if exe is None:
            raise StackError("node_exporter is not installed")
        argv = [
            *DIE_WITH_US,
            exe,
            "--collector.disable-defaults",
            "--collector.systemd",
            f"--collector.systemd.unit-include={FLEET_UNITS}",
            f"--web.listen-address={self.address}:{NODE_EXPORTER_PORT}",
            "--log.level=warn",
        ]
        # node_exporter's systemd collector talks to the system bus: this host's lab
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.lab.bus_address}
        self.log = workdir / f"node-exporter-{self.name}.log"
        with self.log.open("wb") as out:
            self.node_exporter = self.netns.call(_spawn, argv, env, out)

    def stop(self) -> None:
        if self.sidecar is not None:
            self.sidecar.stop()
            self.sidecar = None
        if self.node_exporter is not None:
            self.node_exporter.terminate()
            self.node_exporter.wait(10)
            self.node_exporter = None
        self.netns.close()
        self.lab.stop()


def prometheus_config(
    hosts: Sequence[tuple[str, str]], alertmanagers: Sequence[Alertmanager]
) -> str:
    """One job for the sidecars, one for node_exporter; `instance` = the host's name on
    both, as exporters/prometheus-fleet.yml sets it; alerts to every Alertmanager peer."""

    def targets(port: int) -> str:
        return "".join(
            f'      - targets: ["{address}:{port}"]\n        labels:\n          instance: {name}\n'
            for name, address in hosts
        )

    peers = ", ".join(f'"{HUB_ADDRESS}:{am.port}"' for am in alertmanagers)
    return (
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [{peers}]\n"
        "scrape_configs:\n"
        f"  - job_name: macha\n    static_configs:\n{targets(SIDECAR_PORT)}"
        f"  - job_name: node\n    static_configs:\n{targets(NODE_EXPORTER_PORT)}"
    )


def alertmanager_push_config(hosts: Sequence[Host]) -> str:
    """Push: a route and a webhook receiver per host, matched on `instance`, as in
    exporters/alertmanager-fleet.yml; each receiver sends that host's own token."""
    routes, receivers = "", ""
    for host in hosts:
        assert host.sidecar is not None
        routes += f'    - matchers: [instance="{host.name}"]\n      receiver: macha-{host.name}\n'
        receivers += (
            f"  - name: macha-{host.name}\n    webhook_configs:\n"
            f"      - url: {host.sidecar.url}/alerts\n        send_resolved: true\n"
            "        http_config:\n          authorization:\n            type: Bearer\n"
            f"            credentials_file: {host.sidecar.token_file}\n"
        )
    return _alertmanager_config(routes, receivers)


def alertmanager_pull_config() -> str:
    """Pull: no receiver per host; the sidecars ask the API for their own alerts."""
    return _alertmanager_config("", "")


def _alertmanager_config(routes: str, receivers: str) -> str:
    return (
        "route:\n  receiver: nobody\n  group_by: [alertname, instance, unit]\n"
        "  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\n"
        + (f"  routes:\n{routes}" if routes else "")
        + "receivers:\n  - name: nobody\n"
        + receivers
    )


@dataclass
class Fleet:
    """Hosts, a hub with Prometheus and an Alertmanager pair; `start()` then `close()`."""

    workdir: Path
    size: int = 3
    hub: Netns | None = None
    hosts: list[Host] = field(default_factory=list)
    alertmanagers: list[ClusteredAlertmanager] = field(default_factory=list)
    prometheus: HubPrometheus | None = None

    @property
    def members(self) -> list[tuple[str, str]]:
        """(name, address) of every host, known before any boots."""
        return [(f"host{n}", f"{SUBNET}.{10 + n}") for n in range(1, self.size + 1)]

    def start(self) -> Fleet:
        """Prometheus first: its fixed discovery delay (about 5 s before the first scrape)
        then passes while the Alertmanagers settle and the hosts boot."""
        try:
            self._start_hub()
            self.alertmanagers = [
                ClusteredAlertmanager(
                    self.workdir / f"alertmanager-{n}", alertmanager_pull_config()
                )
                for n in (1, 2)
            ]
            self._start_prometheus()
            self._start_alertmanagers()
            for name, address in self.members:
                self._start_host(name, address)
            self.wait_clustered()
            assert self.hub is not None
            assert self.prometheus is not None
            self.hub.call(self.prometheus.wait_targets_up, self.size)  # the node_exporters
            self.hub.call(self.prometheus.wait_alertmanagers)
        except BaseException:
            self.close()
            raise
        return self

    def _start_hub(self) -> None:
        self.hub = Netns.fresh("hub")
        self.hub.ip("link", "add", "fleet0", "type", "bridge")
        self.hub.ip("addr", "add", f"{HUB_ADDRESS}/24", "dev", "fleet0")
        self.hub.ip("link", "set", "fleet0", "up")

    def _start_host(self, name: str, address: str) -> None:
        assert self.hub is not None
        # labsd's PDEATHSIG fires when the starting *thread* exits: boot from this one
        lab = LabSystemd(workdir=self.workdir / f"{name}-lab").start()
        try:
            netns = Netns.of_process(name, lab.pid)
        except BaseException:
            lab.stop()
            raise
        host = Host(name, address, lab, netns)
        self.hosts.append(host)
        # the veth's host end is made straight in the host's namespace, its other on the bridge
        self.hub.ip(
            "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", netns.path
        )
        self.hub.ip("link", "set", name, "master", "fleet0", "up")
        netns.ip("addr", "add", f"{address}/24", "dev", "eth0")
        netns.ip("link", "set", "eth0", "up")
        netns.ip("link", "set", "lo", "up")
        host.start_node_exporter(self.workdir)

    def _start_alertmanagers(self) -> None:
        assert self.hub is not None
        first, second = self.alertmanagers
        first.peers = [second.cluster_address]
        second.peers = [first.cluster_address]
        for am in self.alertmanagers:
            self.hub.call(am.start)

    def wait_clustered(self, timeout: float = 30.0) -> None:
        """Every running peer sees all the others and has settled."""
        assert self.hub is not None
        running = [am for am in self.alertmanagers if am.pid is not None]
        for am in running:
            if not self.hub.call(poll, lambda a=am: a.clustered(len(running)), timeout, 0.1):
                raise StackError(f"alertmanager {am.url} not clustered:\n{am.log_tail()}")

    def _start_prometheus(self) -> None:
        assert self.hub is not None
        rules = self.workdir / "fleet-rules.yml"
        rules.write_text(FLEET_RULES)
        config = prometheus_config(self.members, self.alertmanagers)
        self.prometheus = HubPrometheus(self.workdir / "prometheus", config, [rules])
        self.hub.call(self.prometheus.start)

    # ---------------------------------------------------------------- sidecars

    def start_sidecars(self, mode: str, **settings: object) -> None:
        """`macha-obs serve` on every host (state under workdir/MODE/HOST), all at once."""
        for host in self.hosts:
            state = self.workdir / mode / host.name / "state"
            ensure_token(state)  # the token Alertmanager's receiver for this host sends
            host.sidecar = HostSidecar(host, state, **settings)
        started = [h.netns.submit(h.sidecar.start) for h in self.hosts if h.sidecar]
        for future in started:
            future.result()
        assert self.hub is not None
        assert self.prometheus is not None
        # every sidecar's counters scraped at their start values: increase() sees what follows
        self.hub.call(self.prometheus.wait_targets_up, 2 * len(self.hosts))

    def stop_sidecars(self) -> None:
        for host in self.hosts:
            if host.sidecar is not None:
                host.sidecar.stop()
                host.sidecar = None

    def configure_alertmanagers(self, config_text: str) -> None:
        assert self.hub is not None
        for am in self.alertmanagers:
            if am.pid is not None:
                self.hub.call(am.reload, config_text)

    def revive(self, am: ClusteredAlertmanager) -> None:
        """Start a stopped peer again and wait for the pair to settle."""
        assert self.hub is not None
        if am.pid is None:
            self.hub.call(am.start)
        self.wait_clustered()

    # ---------------------------------------------------------------- questions

    def query(self, expr: str) -> list[Any]:
        assert self.hub is not None
        assert self.prometheus is not None
        return self.hub.call(self.prometheus.query, expr)

    def notifications(self) -> list[float]:
        """Each peer's webhook notifications so far (None-safe: a stopped peer sent 0 more)."""
        assert self.hub is not None
        return [self.hub.call(am.notifications) if am.pid else 0.0 for am in self.alertmanagers]

    def close(self) -> None:
        for am in self.alertmanagers:
            am.stop()
        if self.prometheus is not None:
            self.prometheus.stop()
        for host in self.hosts:
            with contextlib.suppress(Exception):  # stop the others whatever one says
                host.stop()
        if self.hub is not None:
            self.hub.close()


@contextlib.contextmanager
def running_fleet(workdir: Path, size: int = 3) -> Iterator[Fleet]:
    fleet = Fleet(workdir, size).start()
    try:
        yield fleet
    finally:
        fleet.close()
