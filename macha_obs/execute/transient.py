"""systemd's tools for checking a patch before a person sees it: argv lists only.

`busctl` reads a unit's properties from systemd itself (its ExecStart, never a model's)
and starts, watches and stops a transient copy of it; `systemd-analyze` verifies a unit
file copy and scores its exposure offline. Every call goes through the runner seam; the
bus is the system bus, or `address` (the lab's, in tests). busctl rather than
systemd-run: systemd-run needs the manager's private socket, which a process outside the
manager's PID namespace cannot reach; the bus it can.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from macha_obs.errors import RunnerError
from macha_obs.execute.runner import Completed, Runner

DEST = "org.freedesktop.systemd1"
ROOT = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
SERVICE = "org.freedesktop.systemd1.Service"
TIMEOUT = 30.0
UINT64_MAX = 2**64 - 1


class BusError(RunnerError):
    """A bus call failed; the message says which and what systemd said."""


@dataclass(frozen=True)
class UnitFacts:
    """What systemd says about a service: where its file is, how it starts."""

    unit: str
    load_state: str
    fragment: str
    dropins: tuple[str, ...]
    triggered_by: tuple[str, ...]
    type: str
    exec_start: tuple[tuple[str, tuple[str, ...]], ...]  # (path, argv) per ExecStart=
    memory_max: int
    user: str
    group: str
    working_directory: str
    environment: tuple[str, ...] = ()
    environment_files: tuple[tuple[str, bool], ...] = ()  # (path, missing is fine)


class Systemd:
    """busctl and systemd-analyze through `runner`, on the system bus or `address`."""

    def __init__(
        self,
        runner: Runner,
        *,
        address: str | None = None,
        busctl: str = "busctl",
        analyze: str = "systemd-analyze",
        timeout: float = TIMEOUT,
    ) -> None:
        self.runner = runner
        self.address = address
        self.busctl = busctl
        self.analyze = analyze
        self.timeout = timeout

    def _bus(self, what: str, *args: str) -> str:
        where = f"--address={self.address}" if self.address else "--system"
        argv = [self.busctl, where, "--json=short", *args]
        done = self.runner(argv, timeout=self.timeout)
        if done.returncode != 0:
            said = " ".join(done.output.split())[:300]
            raise BusError(f"busctl {what}: {said}")
        return done.output

    def _call(self, method: str, signature: str, *args: str) -> Any:
        what = f"call {method}"
        out = self._bus(what, "call", "--", DEST, ROOT, MANAGER, method, signature, *args)
        values = _json_lines(out, what)
        return values[0] if values else None

    def _properties(self, path: str, interface: str, names: Sequence[str]) -> list[Any]:
        what = f"get-property {interface.rsplit('.', 1)[-1]}"
        out = self._bus(what, "get-property", "--", DEST, path, interface, *names)
        values = _json_lines(out, what)
        if len(values) != len(names):
            raise BusError(f"busctl {what}: {len(values)} of {len(names)} properties")
        return values

    def unit_path(self, unit: str) -> str:
        found = self._call("LoadUnit", "s", unit)
        if not isinstance(found, list) or not found:
            raise BusError(f"busctl LoadUnit {unit}: no object path in the answer")
        return str(found[0])

    def facts(self, unit: str) -> UnitFacts:
        path = self.unit_path(unit)
        load, fragment, dropins, triggered = self._properties(
            path, UNIT, ["LoadState", "FragmentPath", "DropInPaths", "TriggeredBy"]
        )
        kind, exec_start, memory_max, user, group, workdir, env, env_files = self._properties(
            path,
            SERVICE,
            [
                "Type",
                "ExecStart",
                "MemoryMax",
                "User",
                "Group",
                "WorkingDirectory",
                "Environment",
                "EnvironmentFiles",
            ],
        )
        return UnitFacts(
            unit=unit,
            load_state=str(load),
            fragment=str(fragment),
            dropins=tuple(str(d) for d in dropins),
            triggered_by=tuple(str(t) for t in triggered),
            type=str(kind),
            exec_start=tuple((str(e[0]), tuple(str(a) for a in e[1])) for e in exec_start),
            memory_max=int(memory_max),
            user=str(user),
            group=str(group),
            working_directory=str(workdir),
            environment=tuple(str(e) for e in env),
            environment_files=tuple((str(f[0]), bool(f[1])) for f in env_files),
        )

    def active_state(self, unit: str) -> tuple[str, str]:
        state, sub = self._properties(self.unit_path(unit), UNIT, ["ActiveState", "SubState"])
        return str(state), str(sub)

    def start_transient(self, unit: str, properties: Sequence[Sequence[str]]) -> None:
        """StartTransientUnit(unit, "fail", properties): each property is its busctl words
        (name, type, value...), built by the caller from systemd's facts and the catalogue."""
        words = [w for prop in properties for w in prop]
        self._call(
            "StartTransientUnit",
            "ssa(sv)a(sa(sv))",
            unit,
            "fail",
            str(len(properties)),
            *words,
            "0",
        )

    def stop(self, unit: str) -> None:
        self._call("StopUnit", "ss", unit, "replace")

    def reset_failed(self, unit: str) -> None:
        self._call("ResetFailedUnit", "s", unit)

    # ------------------------------------------------------------ systemd-analyze

    def verify(self, unit_file: str) -> Completed:
        return self.runner([self.analyze, "verify", "--man=no", unit_file], timeout=self.timeout)

    def security(self, unit_file: str) -> Completed:
        argv = [self.analyze, "security", "--offline=true", "--no-pager", unit_file]
        return self.runner(argv, timeout=self.timeout)


def _json_lines(out: str, what: str) -> list[Any]:
    """The values of busctl's --json=short lines; anything else it printed (a warning on
    stderr, which the runner merges) is skipped. BusError when a value line is not JSON."""
    values = []
    for line in out.splitlines():
        if not line.startswith("{"):
            continue
        try:
            values.append(json.loads(line)["data"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BusError(f"busctl {what}: unreadable answer {line[:200]!r}") from exc
    return values


def exec_property(path: str, argv: Sequence[str]) -> list[str]:
    """ExecStart as busctl words: a(sasb), one (path, argv, ignore-failure=false)."""
    return ["ExecStart", "a(sasb)", "1", path, str(len(argv)), *argv, "false"]


def setting_property(key: str, value: str, bus_type: str) -> list[str]:
    """A catalogue setting as busctl words, by its catalogue bus type."""
    if bus_type == "b":
        return [key, "b", "true" if value == "yes" else "false"]
    if bus_type == "families":
        families = value.split()
        return [key, "(bas)", "true", str(len(families)), *families]
    if bus_type == "t":
        return [key, "t", value]
    return [key, "s", value]
