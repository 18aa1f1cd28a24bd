"""A throw-away real systemd (PID 1) for tests, on a machine whose own PID 1 need not be systemd.

Never boot systemd against the host's real root: its tmpfiles and friends rewrite the
filesystem (it wipes /tmp). Here the container's root is an overlay of the host's /, whose
upper layer is a tmpfs that exists only in the container's private mount namespace, so every
write vanishes with the container. The host talks to it through its dbus-daemon socket under
/proc/PID/root: systemd's private socket cannot be used across PID namespaces.
Recipe and measurements: shared/lab/REAL_SYSTEMD.md.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any, Self

from pystemd.dbuslib import DBusAddress
from pystemd.systemd1 import Manager, Unit

SYSTEMD = Path("/lib/systemd/systemd")
NAME_PREFIX = "labsd-"
# Default home of a container's work directory (boot log, seed tree, scratch mountpoint),
# named like its cgroup so that sweep_stale() finds both when the owner died.
WORKDIR_PARENT = Path("/var/tmp")
_CAP_SYS_ADMIN = 21

# Only journald and the system bus: everything else a full boot starts either touches the
# machine (kernel modules, sysctl, udev, clocks) or just costs time.
_LAB_TARGET = """\
[Unit]
Description=Lab target: journald and the system D-Bus only
Requires=sysinit.target dbus.socket dbus.service systemd-journald.service
After=sysinit.target dbus.socket dbus.service systemd-journald.service
AllowIsolate=yes
"""

# Volatile: the journal lives in the container's /run and dies with it. No rate limit, so a
# test that logs fast still finds every line.
_JOURNALD_CONF = """\
[Journal]
Storage=volatile
RuntimeMaxUse=32M
RateLimitBurst=0
"""

# Units masked in the container (symlinks to /dev/null in the upper layer).
_MASKED_UNITS = (
    # The host's kernel: modules, sysctl, binfmt, pseudo filesystems.
    "systemd-modules-load.service",
    "systemd-sysctl.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount",
    "kmod-static-nodes.service",
    "sys-kernel-config.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount",
    "dev-hugepages.mount",
    # Devices: the container has no udev and a private /dev.
    "systemd-udevd.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service",
    "systemd-udev-settle.service",
    "systemd-hwdb-update.service",
    # First-boot, disk and storage setup that only makes sense on a real machine.
    "systemd-random-seed.service",
    "systemd-firstboot.service",
    "systemd-machine-id-commit.service",
    "systemd-repart.service",
    "systemd-pcrphase.service",
    "systemd-pcrphase-sysinit.service",
    "systemd-pstore.service",
    "systemd-remount-fs.service",
    "systemd-fsck-root.service",
    "cryptsetup.target",
    "veritysetup.target",
    "integritysetup.target",
    "swap.target",
    "e2scrub_reap.service",
    "ldconfig.service",
    "systemd-update-done.service",
    # The clock, consoles and logins.
    "systemd-timesyncd.service",
    "getty.target",
    "console-getty.service",
    "systemd-logind.service",
    "systemd-ask-password-console.path",
    "systemd-ask-password-wall.path",
    # Timers that would only cost time.
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "man-db.timer",
)

# The launcher joins the container's cgroup before anything forks, so the whole container
# lives in one subtree that a single cgroup.kill ends. Done in sh rather than a Python
# preexec_fn, which may deadlock when the test process has threads.
_JOIN_CGROUP = 'echo 0 > "$1" && shift && exec "$@"'

# Runs as PID 1 of the new PID namespace and ends by exec'ing systemd, so systemd is PID 1.
# $1 = scratch mountpoint, $2 = seed tree (copied into the overlay's upper layer),
# $3 = overlay lower layer, $4 = host paths to bind read-only (colon-separated); the rest
# goes to systemd.
_INIT_SCRIPT = r"""
set -euo pipefail
SCRATCH=$1; SEED=$2; LOWER=$3; BINDS=$4; shift 4
[ "$$" = 1 ] || { echo "labsd init must be PID 1 of a new PID namespace" >&2; exit 1; }
mount --make-rprivate /
mount -t tmpfs -o mode=0755,size=512m labsd-scratch "$SCRATCH"
mkdir -p "$SCRATCH"/{upper,work,root}
U=$SCRATCH/upper; R=$SCRATCH/root
cp -a "$SEED"/. "$U"/
mount -t overlay labsd-root -o "lowerdir=$LOWER,upperdir=$U,workdir=$SCRATCH/work" "$R"

# Fresh kernel filesystems; the knobs that reach the host kernel are read-only.
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
for p in sys sysrq-trigger irq bus; do
  if [ -e "$R/proc/$p" ]; then
    mount --bind "$R/proc/$p" "$R/proc/$p"
    mount -o remount,bind,ro,nosuid,nodev,noexec "$R/proc/$p"
  fi
done
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"

# A private /dev with the usual nodes only: no host block devices, no host consoles.
mount -t tmpfs -o mode=0755,nosuid,size=4m labsd-dev "$R/dev"
for n in "null c 1 3" "zero c 1 5" "full c 1 7" "random c 1 8" "urandom c 1 9" "tty c 5 0"; do
  read -r node kind major minor <<<"$n"; mknod -m 666 "$R/dev/$node" "$kind" "$major" "$minor"
done
mkdir -m 755 "$R/dev/pts" "$R/dev/mqueue"; mkdir -m 1777 "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5,nosuid,noexec devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev labsd-shm "$R/dev/shm"
mount -t mqueue -o nosuid,nodev,noexec mqueue "$R/dev/mqueue"
ln -s /proc/self/fd "$R/dev/fd"; ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"; ln -s /proc/self/fd/2 "$R/dev/stderr"
ln -s /dev/null "$R/dev/kmsg"; touch "$R/dev/console"
mount -t tmpfs -o mode=0755,nosuid,nodev,size=64m labsd-run "$R/run"
mount -t tmpfs -o mode=1777,nosuid,nodev,size=256m labsd-tmp "$R/tmp"
# Host paths the fresh /tmp and /run hide (a checkout and its venv under /tmp), read-only.
IFS=: read -r -a BIND_PATHS <<<"$BINDS"
for p in "${BIND_PATHS[@]}"; do
  [ -n "$p" ] && [ -e "$p" ] || continue
  mkdir -p "$R$p"; mount --bind "$p" "$R$p"; mount -o remount,bind,ro "$R$p"
done

cd "$R"; pivot_root . .; umount -l .; cd /
# Capabilities that reach past the namespaces (modules, clock, raw I/O) are dropped for good.
DROP=-sys_module,-sys_time,-sys_rawio,-wake_alarm,-block_suspend
DROP=$DROP,-syslog,-mac_admin,-mac_override,-sys_pacct,-mknod
exec setpriv --bounding-set="$DROP" \
  env -i container=labsd TERM=dumb PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  /lib/systemd/systemd --system --unit=lab.target --show-status=0 "$@"
"""


# The container mounts fresh tmpfs on these: host paths below them are invisible inside.
_FRESH_MOUNTS = (Path("/tmp"), Path("/run"), Path("/dev/shm"))
# A unit's own sandbox may hide these too: PrivateTmp= (/tmp, /var/tmp) and ProtectHome=
# (/root, /home, /run/user).
_SANDBOX_HIDES = (*_FRESH_MOUNTS, Path("/var/tmp"), Path("/root"), Path("/home"))


def _project_paths() -> set[Path]:
    """This checkout and the running interpreter's prefixes: units in the container run
    the project's own binaries from them."""
    wanted = {Path(__file__).resolve().parents[2]}
    return wanted | {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}


def _outermost(paths: Collection[Path]) -> list[Path]:
    ordered = sorted(paths)
    return [p for p in ordered if not any(p != q and p.is_relative_to(q) for q in ordered)]


def hidden_paths(hiders: Collection[Path] = _FRESH_MOUNTS) -> list[Path]:
    """The project's paths where a mount on one of `hiders` would hide them (a CI clone
    under /tmp): they are bound in read-only at the same paths."""
    return _outermost({p for p in _project_paths() if any(p.is_relative_to(m) for m in hiders)})


def checkout_dropin() -> str:
    """A unit drop-in for this machine only, so that a clone and its venv at any path (under
    /var/tmp, /tmp, /home, /root) run inside the sandbox of a unit under test: the unit's
    hardening stays as shipped; only the project's paths it would hide are bound in,
    read-only, at the same paths. On NixOS the package is in /nix/store and needs none."""
    binds = hidden_paths(_SANDBOX_HIDES)
    return "[Service]\n" + "".join(f"BindReadOnlyPaths={p}\n" for p in binds)


class LabBootError(RuntimeError):
    """The container could not be booted; the message says why and carries the boot log."""


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02
) -> bool:
    """Poll until predicate() is true or timeout passes; the last answer is returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _cgroup2_root() -> Path | None:
    # cgroup.controllers exists only in cgroup2: at / on a pure v2 host, under unified/ on a
    # hybrid one (a v1-only host has neither).
    for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if (root / "cgroup.controllers").exists():
            return root
    return None


def _has_cap_sys_admin() -> bool:
    status = Path("/proc/self/status").read_text()
    capeff = next(line for line in status.splitlines() if line.startswith("CapEff:"))
    return bool(int(capeff.split()[1], 16) >> _CAP_SYS_ADMIN & 1)


def unavailable_reason() -> str | None:
    """None when a container can be booted here, else a reason a person can act on."""
    if os.geteuid() != 0:
        return "needs root (mount, PID and cgroup namespaces; overlayfs on /)"
    if not _has_cap_sys_admin():
        return "needs CAP_SYS_ADMIN (an unprivileged container?)"
    if not SYSTEMD.exists():
        return f"{SYSTEMD} is not installed (Debian package systemd)"
    for tool in ("dbus-daemon", "unshare", "setpriv", "nsenter", "journalctl"):
        if shutil.which(tool) is None:
            return f"{tool} not found (Debian packages dbus, util-linux, systemd)"
    if "\toverlay\n" not in Path("/proc/filesystems").read_text():
        return "overlayfs is not available"
    cgroot = _cgroup2_root()
    if cgroot is None:
        return "no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified"
    if not os.access(cgroot, os.W_OK):
        return f"the cgroup2 hierarchy {cgroot} is not writable"
    return None


def _cgroup_has_processes(cgroup: Path) -> bool:
    for procs in cgroup.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            if procs.read_text().strip():
                return True
    return False


def _remove_cgroup(cgroup: Path) -> None:
    # A cgroup directory goes with rmdir only, and only once its children are gone: deepest first.
    for directory in sorted(
        (p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
    ):
        with contextlib.suppress(OSError):
            directory.rmdir()
    with contextlib.suppress(OSError):
        cgroup.rmdir()


def _kill_cgroup(cgroup: Path) -> None:
    with contextlib.suppress(OSError):
        (cgroup / "cgroup.kill").write_text("1")


def _drain_cgroup(cgroup: Path, timeout: float = 2.0) -> bool:
    """Kill whatever is left in the cgroup; True once it is empty."""
    if not _cgroup_has_processes(cgroup):
        return True
    _kill_cgroup(cgroup)
    return wait_until(lambda: not _cgroup_has_processes(cgroup), timeout)


def _owner_alive(entry: Path) -> bool:
    # Cgroups and work dirs are named labsd-<owner pid>-<random>; an unparsable name is kept.
    owner = entry.name.removeprefix(NAME_PREFIX).split("-", 1)[0]
    return not owner.isdigit() or Path(f"/proc/{owner}").exists()


def _stale(parent: Path) -> list[Path]:
    # A live owner may be booting right now, its cgroup still empty: only dead owners' entries.
    return [p for p in parent.glob(f"{NAME_PREFIX}*") if p.is_dir() and not _owner_alive(p)]


def sweep_stale() -> list[Path]:
    """Remove what containers of dead test processes (say, SIGKILLed) left: cgroups, work dirs."""
    removed = []
    cgroot = _cgroup2_root()
    for cgroup in _stale(cgroot) if cgroot is not None else []:
        # Orphans should not exist (PDEATHSIG), but end any that do.
        if _drain_cgroup(cgroup):
            _remove_cgroup(cgroup)
        if not cgroup.exists():
            removed.append(cgroup)
    for workdir in _stale(WORKDIR_PARENT):
        # Its scratch tmpfs was mounted in the dead container's namespace only, never here.
        shutil.rmtree(workdir, ignore_errors=True)
        if not workdir.exists():
            removed.append(workdir)
    return removed


def _write_seed(seed: Path, *, name: str, lower: Path) -> None:
    """Write the files that only the container sees; they become the overlay's upper layer."""
    etc = seed / "etc"
    units = etc / "systemd" / "system"
    units.mkdir(parents=True)
    (etc / "machine-id").write_text(os.urandom(16).hex() + "\n")
    (etc / "hostname").write_text(name + "\n")
    (units / "lab.target").write_text(_LAB_TARGET)
    journald = etc / "systemd" / "journald.conf.d"
    journald.mkdir()
    (journald / "lab.conf").write_text(_JOURNALD_CONF)
    for unit in _MASKED_UNITS:
        (units / unit).symlink_to("/dev/null")
    # Generators re-run on every daemon-reload and a test container needs none of them.
    generators = etc / "systemd" / "system-generators"
    generators.mkdir()
    for directory in ("lib/systemd/system-generators", "usr/lib/systemd/system-generators"):
        for generator in (lower / directory).glob("*"):
            with contextlib.suppress(FileExistsError):  # /lib is /usr/lib on merged-usr
                (generators / generator.name).symlink_to("/dev/null")


def _log_tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_bytes()[-limit:].decode(errors="replace")
    except OSError:
        return ""


class LabSystemd:
    """A real systemd booted as PID 1 of its own namespaces; a context manager."""

    def __init__(
        self, workdir: Path | None = None, *, boot_timeout: float = 30.0, lower: Path = Path("/")
    ) -> None:
        self.name = f"{NAME_PREFIX}{os.getpid()}-{os.urandom(3).hex()}"
        self._own_workdir = workdir is None
        self.workdir = workdir if workdir is not None else WORKDIR_PARENT / self.name
        self.boot_timeout = boot_timeout
        self.lower = lower  # the overlay's read-only lower layer: the host's / by default
        self.boot_seconds: float | None = None
        self._launcher: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._cgroup: Path | None = None

    # ---- where things are ---------------------------------------------------
    @property
    def pid(self) -> int:
        """The container's PID 1, as the host sees it."""
        if self._pid is None:
            raise RuntimeError("the container is not running: call start() first")
        return self._pid

    @property
    def root(self) -> Path:
        return Path(f"/proc/{self.pid}/root")

    @property
    def bus_address(self) -> str:
        return f"unix:path={self.root}/run/dbus/system_bus_socket"

    @property
    def journal_dir(self) -> Path:
        return self.root / "run" / "log" / "journal"

    @property
    def cgroup(self) -> Path:
        """The container's cgroup2 subtree, as the host sees it."""
        if self._cgroup is None:
            raise RuntimeError("the container has no cgroup: call start() first")
        return self._cgroup

    @property
    def boot_log(self) -> Path:
        return self.workdir / "boot.log"

    # ---- lifecycle ------------------------------------------------------------
    def start(self) -> Self:
        """Boot the container and wait until systemd answers on its system bus."""
        reason = unavailable_reason()
        if reason is not None:
            raise LabBootError(reason)
        sweep_stale()
        started = time.monotonic()
        try:
            self._launch()
            self._pid = self._wait_for_init(started)
            self._wait_until_running(started)
            self._open_project_paths()
        except Exception as error:
            detail = self._failure_detail()
            self.stop(graceful=False)
            raise LabBootError(f"{error}\n{detail}") from error
        except BaseException:  # Ctrl-C while booting: still leave nothing behind
            self.stop(graceful=False)
            raise
        self.boot_seconds = time.monotonic() - started
        # Normal interpreter exit without fixture teardown; PDEATHSIG covers a SIGKILL.
        atexit.register(self.stop)
        return self

    def _open_project_paths(self) -> None:
        """Any user in the container may reach the project's paths, as a package under /opt
        or /nix/store may be reached: a directory above them that others may not enter (a
        pyenv under /root, 0700) gets o+x in the container's overlay, never on the host."""
        for path in _project_paths():
            for parent in path.parents[:-1]:  # not /
                inside = self.root / parent.relative_to("/")
                if not inside.is_dir():
                    break  # a lower layer of its own, without the project
                mode = stat.S_IMODE(inside.stat().st_mode)
                if not mode & 0o001:
                    inside.chmod(mode | 0o001)

    def _launch(self) -> None:
        cgroot = _cgroup2_root()
        assert cgroot is not None  # unavailable_reason() checked it
        self._cgroup = cgroot / self.name
        self._cgroup.mkdir()
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        seed = self.workdir / "seed"
        shutil.rmtree(seed, ignore_errors=True)  # a second start() in the same workdir
        _write_seed(seed, name=self.name, lower=self.lower)
        scratch = self.workdir / "mnt"
        scratch.mkdir(exist_ok=True)
        join_cgroup = ["sh", "-c", _JOIN_CGROUP, "labsd-launch", str(self._cgroup / "cgroup.procs")]
        # PDEATHSIG: a SIGKILLed test process takes unshare with it, and --kill-child takes
        # PID 1 and so the whole PID namespace. It fires when the *thread* that started the
        # container exits: start it from the main thread.
        die_with_parent = ["setpriv", "--pdeathsig", "KILL", "--"]
        namespaces = ["unshare", "--mount", "--pid", "--fork", "--uts", "--ipc", "--net"]
        namespaces += ["--cgroup", "--propagation", "private", "--kill-child=SIGKILL"]
        binds = ":".join(str(p) for p in hidden_paths())
        init = ["bash", "-c", _INIT_SCRIPT, "labsd-init", str(scratch), str(seed), str(self.lower)]
        init.append(binds)
        argv = [*join_cgroup, *die_with_parent, *namespaces, *init]
        with self.boot_log.open("wb") as log:
            # A new session keeps the terminal's Ctrl-C away from the container: stop() ends it.
            self._launcher = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_for_init(self, started: float) -> int:
        """The PID of unshare's only child, the container's PID 1."""
        assert self._launcher is not None
        children = Path(f"/proc/{self._launcher.pid}/task/{self._launcher.pid}/children")
        while time.monotonic() - started < self.boot_timeout:
            with contextlib.suppress(OSError):
                kids = children.read_text().split()
                if kids:
                    return int(kids[0])
            if self._launcher.poll() is not None:
                raise LabBootError(f"the launcher exited early ({self._launcher.returncode})")
            time.sleep(0.005)
        raise LabBootError("unshare did not fork within the boot timeout")

    def _wait_until_running(self, started: float) -> None:
        assert self._launcher is not None
        socket = self.root / "run" / "dbus" / "system_bus_socket"
        last: object = "no bus socket yet"
        while time.monotonic() - started < self.boot_timeout:
            if self._launcher.poll() is not None:
                code = self._launcher.returncode
                raise LabBootError(f"the container exited during boot ({code})")
            if socket.exists():
                try:
                    last = self.system_state()
                except Exception as error:  # the bus is not answering yet: retry
                    last = error
                if last in ("running", "degraded"):
                    return
            time.sleep(0.01)
        raise LabBootError(f"systemd not running after {self.boot_timeout}s (last: {last!r})")

    def _failure_detail(self) -> str:
        detail = f"--- boot log tail ({self.boot_log}) ---\n{_log_tail(self.boot_log)}"
        if self._pid is not None and self.journal_dir.exists():
            # systemd's own account of a failed boot is in the journal, not the boot log.
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                journal = self.journal(None, "-n", "30", output="short-monotonic", timeout=5.0)
                detail += f"\n--- container journal tail ---\n{journal}"
        return detail

    def stop(self, graceful: bool = True, timeout: float = 10.0) -> list[str]:
        """Power the container off and remove every trace; returns what could not be removed."""
        atexit.unregister(self.stop)
        launcher, self._launcher = self._launcher, None
        if launcher is not None and launcher.poll() is None:
            if graceful and self._pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._pid, signal.SIGRTMIN + 4)  # systemd's "poweroff" signal
                with contextlib.suppress(subprocess.TimeoutExpired):
                    launcher.wait(timeout)
            if launcher.poll() is None:
                self._kill()
            launcher.wait(timeout)
        self._pid = None
        leftovers = self._remove_traces()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return leftovers

    def _kill(self) -> None:
        if self._cgroup is not None:
            _kill_cgroup(self._cgroup)
        if self._pid is not None:  # the death of PID 1 ends its namespace, even without cgroup.kill
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)

    def _remove_traces(self) -> list[str]:
        leftovers = []
        cgroup, self._cgroup = self._cgroup, None
        if cgroup is not None and cgroup.exists():
            # PID 1's death ends its namespace, but the last exits may still be in flight.
            _drain_cgroup(cgroup)
            _remove_cgroup(cgroup)
            if cgroup.exists():
                leftovers.append(f"cgroup {cgroup}")
        # The scratch tmpfs is mounted in the container's mount namespace only; seeing it in
        # ours would mean the recipe leaked a mount onto the host.
        scratch = f" {self.workdir / 'mnt'} "
        if any(scratch in line for line in Path("/proc/self/mountinfo").read_text().splitlines()):
            leftovers.append(f"mount {self.workdir / 'mnt'}")
        return leftovers

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- D-Bus ------------------------------------------------------------------
    def dbus(self) -> Any:
        """A fresh, unopened pystemd DBusAddress on the container's system bus (use `with`)."""
        return DBusAddress(self.bus_address.encode())

    def system_state(self) -> str:
        """Manager.SystemState: initializing, starting, running, degraded, stopping, ..."""
        with self.dbus() as bus:
            return str(Manager(bus=bus, _autoload=True).Manager.SystemState.decode())

    def daemon_reload(self) -> None:
        with self.dbus() as bus:
            Manager(bus=bus, _autoload=True).Manager.Reload()

    def unit_state(self, name: str) -> tuple[str, str]:
        """(ActiveState, SubState) of a unit; loading an unknown name gives inactive/dead."""
        with self.dbus() as bus:
            return _unit_state(bus, name)

    def wait_for_state(
        self, name: str, active_states: str | Collection[str], timeout: float = 10.0
    ) -> tuple[str, str]:
        """Wait until the unit's ActiveState is one of active_states; returns the state seen."""
        wanted = {active_states} if isinstance(active_states, str) else set(active_states)
        seen = ("", "")
        with self.dbus() as bus:

            def reached() -> bool:
                nonlocal seen
                seen = _unit_state(bus, name)
                return seen[0] in wanted

            if not wait_until(reached, timeout):
                raise TimeoutError(f"{name} is {seen}, not in {sorted(wanted)} after {timeout}s")
        return seen

    @contextlib.contextmanager
    def stalled_bus(self) -> Iterator[int]:
        """SIGSTOP the container's dbus-daemon: bus calls hang until their own timeout.

        Yields the daemon's host PID; SIGCONT on exit, so the bus works again afterwards.
        """
        daemon = self._dbus_daemon_pid()
        os.kill(daemon, signal.SIGSTOP)
        try:
            # kill() only queues SIGSTOP: without this a call made at once may still be answered.
            if not wait_until(lambda: _process_state(daemon) in ("T", "t"), timeout=5.0):
                raise RuntimeError(f"dbus-daemon {daemon} did not stop")
            yield daemon
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon, signal.SIGCONT)

    def _dbus_daemon_pid(self) -> int:
        namespace = os.readlink(f"/proc/{self.pid}/ns/pid")
        for pid in _pids_in_namespace(namespace):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "dbus-daemon":
                    return pid
        raise LookupError(f"no dbus-daemon in container {self.name}")

    # ---- units and files -------------------------------------------------------
    def _unit_path(self, name: str) -> Path:
        # Unit files are written through /proc/PID/root: a name must not climb out of it.
        if name.startswith("/") or ".." in Path(name).parts:
            raise ValueError(f"not a unit file name: {name!r}")
        return self.root / "etc" / "systemd" / "system" / name

    def write_unit(self, name: str, text: str, reload: bool = True) -> Path:
        """Write /etc/systemd/system/NAME inside the container (a drop-in: 'x.service.d/y.conf')."""
        path = self._unit_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if reload:
            self.daemon_reload()
        return path

    def remove_unit(self, name: str, reload: bool = True) -> None:
        self._unit_path(name).unlink(missing_ok=True)
        if reload:
            self.daemon_reload()

    # ---- commands and journal ----------------------------------------------------
    def run(
        self, *cmd: str, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container, e.g. systemctl, which refuses from the host."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-u", "-i", "-n", "-p", "--", *cmd],
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def journal(
        self, unit: str | None = None, *extra: str, output: str = "cat", timeout: float = 30.0
    ) -> str:
        """The container's journal, read from the host (for one unit, or all of it)."""
        argv = ["journalctl", "-D", str(self.journal_dir), "--no-pager", "-o", output, *extra]
        if unit is not None:
            argv += ["-u", unit]
        return subprocess.run(
            argv, check=True, capture_output=True, text=True, timeout=timeout
        ).stdout


def _unit_state(bus: Any, name: str) -> tuple[str, str]:
    unit = Unit(name.encode(), bus=bus, _autoload=True)
    return unit.Unit.ActiveState.decode(), unit.Unit.SubState.decode()


def _pids_in_namespace(namespace: str) -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "pid") == namespace:
                    yield int(entry.name)


def _process_state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]  # comm, in parentheses, may hold spaces
