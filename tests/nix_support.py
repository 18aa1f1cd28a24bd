"""Helpers for the NixOS module tests: Nix evaluation without nixpkgs, unit rendering, polkit.

Nix never writes /nix here: every call passes `--store dummy://` (evaluation only) or a
store under a temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from macha_obs.config import split_host_port
from tests.labsd import LabSystemd, hidden_paths, wait_until
from tests.real import unavailable

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "nixos"
EVAL_NIX = FIXTURES / "eval.nix"
NIX_EVAL_TIMEOUT = 120


class NixError(Exception):
    """nix-instantiate (or nix) exited non-zero; the message is its stderr."""


# Debian 12 packages of the tools these tests run
PACKAGES = {
    "nix": "nix-bin",
    "nix-instantiate": "nix-bin",
    "systemd-analyze": "systemd",
    "busctl": "systemd",
    "node": "nodejs",
    "promtool": "prometheus",
    "amtool": "prometheus-alertmanager",
    "polkitd": "polkitd",
}


def need(tool: str) -> str:
    """The tool's path; a skip here, a failure under CI (or REQUIRE_REAL_COMPONENTS)."""
    path = shutil.which(tool)
    if path is None:
        unavailable(f"{tool} is not installed (apt-get install {PACKAGES.get(tool, tool)})")
    return path


def nix_instantiate(*args: str) -> str:
    argv = [need("nix-instantiate"), "--store", "dummy://", *args]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=NIX_EVAL_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise NixError(done.stderr.strip())
    return done.stdout


def nix_eval_json(*args: str) -> Any:
    return json.loads(nix_instantiate("--eval", "--strict", "--json", *args))


def eval_module(
    settings: Mapping[str, Any],
    other: Mapping[str, Any] | None = None,
    pkg_path: str = "/stub/macha-obs",
) -> dict[str, Any]:
    """nixos/module.nix with services.macha-autonomous = settings, through the stub lib."""
    result: dict[str, Any] = nix_eval_json(
        str(EVAL_NIX),
        "--argstr",
        "settingsJSON",
        json.dumps(settings),
        "--argstr",
        "otherJSON",
        json.dumps(other or {}),
        "--argstr",
        "pkgPath",
        pkg_path,
    )
    return result


def eval_lib(attr: str) -> Any:
    return nix_eval_json("-E", f"(import {REPO / 'nixos' / 'lib.nix'}).{attr}")


# ------------------------------------------------------------------ TOML


def to_toml(data: Mapping[str, Any]) -> str:
    """A small TOML writer for what the module renders (scalars, arrays, tables)."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        else:
            lines.append(f"{json.dumps(key)} = {_toml_value(value)}")
    for name, table in tables:
        lines.append(f"[{json.dumps(name)}]")
        lines.extend(to_toml(table).splitlines())
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


# ------------------------------------------------------------------ systemd units


def _unit_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render_unit(service: Mapping[str, Any]) -> str:
    """A unit file the way NixOS writes one from systemd.services.<name> (the parts used)."""
    unit = [f"Description={service['description']}"]
    for key in ("after", "wants", "requires", "before"):
        if service.get(key):
            unit.append(f"{key.capitalize()}={' '.join(service[key])}")
    for key, value in service.get("unitConfig", {}).items():
        unit.append(f"{key}={_unit_value(value)}")
    if service.get("restartIfChanged") is False:
        unit.append("X-RestartIfChanged=false")
    if service.get("stopIfChanged") is False:
        unit.append("X-StopIfChanged=false")

    environment = dict(service.get("environment", {}))
    if service.get("path"):
        # packages come out of eval.nix as {"storePath": ..., "name": ...}
        roots = [p["storePath"] if isinstance(p, dict) else p for p in service["path"]]
        environment["PATH"] = ":".join(f"{p}/{sub}" for p in roots for sub in ("bin", "sbin"))
    body = [f'Environment="{k}={v}"' for k, v in sorted(environment.items())]
    for key, value in service["serviceConfig"].items():
        values = value if isinstance(value, list) else [value]
        body.extend(f"{key}={_unit_value(v)}" for v in values)

    sections = [("Unit", unit), ("Service", body)]
    return "\n".join(f"[{name}]\n" + "\n".join(lines) + "\n" for name, lines in sections)


def run_tool(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a checker (promtool, amtool, systemd-analyze); by default it must succeed."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if check:
        assert done.returncode == 0, f"{argv[0]}: {done.stdout}{done.stderr}"
    return done


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return run_tool(need("systemd-analyze"), *args, check=False)


EXPOSURE = re.compile(r"Overall exposure level for (\S+): (\d+\.\d) (\w+)")


def exposure(unit_file: Path) -> tuple[float, str]:
    """`systemd-analyze security --offline=yes` → (score, verdict), e.g. (1.2, 'OK')."""
    done = systemd_analyze("security", "--offline=yes", "--no-pager", str(unit_file))
    match = EXPOSURE.search(done.stdout)
    assert match, f"no exposure level in:\n{done.stdout}\n{done.stderr}"
    return float(match[2]), match[3]


# ------------------------------------------------------------------ polkit


def polkit(
    rule: str,
    queries: Sequence[Mapping[str, Any]] = (),
    globs: Sequence[tuple[str, str]] = (),
) -> dict[str, list[Any]]:
    """Decisions of the rendered rule (node + a fake polkit), and its glob matches."""
    done = subprocess.run(
        [need("node"), str(FIXTURES / "polkit_harness.js")],
        input=json.dumps({"rule": rule, "queries": list(queries), "globs": list(globs)}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, list[Any]] = json.loads(done.stdout)
    return result


# ------------------------------------------------------------------ docs


def nix_blocks(markdown: str) -> list[str]:
    """The ```nix fenced blocks of a Markdown text."""
    return re.findall(r"^```nix\n(.*?)^```", markdown, flags=re.M | re.S)


# ------------------------------------------------------------------ the module in a container

SERVICE = "macha-autonomous"
PRIVILEGED = "macha-autonomous-privileged"
BUSCTL = (
    "busctl", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
    "org.freedesktop.systemd1.Manager",
)  # fmt: skip
LAB_UID = 4711
HIDDEN = (Path("/root"), Path("/home"), Path("/run/user"))  # what ProtectHome= hides


def _hidden_by_protect_home(path: Path) -> bool:
    return any(path == h or h in path.parents for h in HIDDEN)


@dataclass
class ModuleLab:
    """A LabSystemd with what the module installs: the daemon's user, the polkit rule,
    /etc/macha-obs/config.toml, the state directory, the two units and the CLI wrappers."""

    systemd: LabSystemd
    tools: dict[str, str]
    port: int

    @classmethod
    def install(cls, lab: LabSystemd, result: Mapping[str, Any], apps: Sequence[str]) -> Self:
        etc = lab.root / "etc"
        with (etc / "passwd").open("a") as passwd:
            passwd.write(f"{SERVICE}:x:{LAB_UID}:{LAB_UID}::/var/lib/{SERVICE}:/bin/false\n")
        with (etc / "group").open("a") as group:
            group.write(f"{SERVICE}:x:{LAB_UID}:\n")
        files = result["config"]["environment"]["etc"]
        rules = etc / "polkit-1" / "rules.d"
        rules.mkdir(parents=True, exist_ok=True)
        rule = files["polkit-1/rules.d/60-macha-autonomous.rules"]["text"]
        (rules / "60-macha-autonomous.rules").write_text(rule)
        settings = files["macha-obs/config.toml"]["source"]["toml"]
        (etc / "macha-obs").mkdir(exist_ok=True)
        (etc / "macha-obs" / "config.toml").write_text(to_toml(settings))
        # what StateDirectory= makes, for the CLI tools before the daemon first ran
        state = lab.root / "var" / "lib" / SERVICE
        state.mkdir(parents=True, exist_ok=True)
        os.chown(state, LAB_UID, LAB_UID)
        state.chmod(0o750)

        # Only for this machine: the venv's interpreter may live under /root (pyenv), which
        # ProtectHome= hides; on NixOS it is in /nix/store. ProtectHome=tmpfs hides the
        # same and lets a bind mount show just the interpreter. PATH: the stub packages'
        # paths mean nothing here.
        # A checkout under /tmp (a CI clone) is hidden the same way by PrivateTmp=.
        binds = {str(p) for p in (Path(sys.base_prefix), Path(sys.prefix))}
        binds = {b for b in binds if _hidden_by_protect_home(Path(b))}
        test_only = "[Service]\nEnvironment=PATH=/usr/bin:/bin\n"
        if binds:
            test_only += "ProtectHome=tmpfs\n"
        binds |= {str(p) for p in hidden_paths()}
        test_only += "".join(f"BindReadOnlyPaths={b}\n" for b in sorted(binds))
        services = result["config"]["systemd"]["services"]
        for name in (SERVICE, f"{PRIVILEGED}@"):
            lab.write_unit(f"{name}.service", render_unit(services[name]), reload=False)
            lab.write_unit(f"{name}.service.d/test-only.conf", test_only, reload=False)
        for app in apps:
            lab.write_unit(app, "[Service]\nExecStart=/bin/sleep infinity\n", reload=False)
        lab.daemon_reload()
        tools = {t["name"]: t["text"] for t in result["config"]["environment"]["systemPackages"]}
        return cls(lab, tools, split_host_port(settings["listen_address"])[1])

    def as_daemon_user(self, *busctl_args: str) -> subprocess.CompletedProcess[str]:
        """A call on systemd's Manager as the daemon's user: polkit decides."""
        become = ("setpriv", f"--reuid={SERVICE}", f"--regid={SERVICE}", "--clear-groups")
        return self.systemd.run(*become, *BUSCTL, *busctl_args, check=False)

    def tool(self, name: str, *args: str) -> str:
        """A CLI wrapper from environment.systemPackages, run as root; its stdout."""
        # the stub packages' coreutils and util-linux are the container's own
        script = self.tools[name].replace("/stub/coreutils/bin/", "/usr/bin/")
        script = script.replace("/stub/util-linux/bin/", "/usr/bin/")
        done = self.systemd.run("/bin/sh", "-c", script, name, *args, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def show(self, unit: str, prop: str) -> str:
        return self.systemd.run("systemctl", "show", "-p", prop, "--value", unit).stdout.strip()

    def daemon_log(self) -> str:
        return self.systemd.journal(f"{SERVICE}.service")

    @contextlib.contextmanager
    def running_daemon(self, timeout: float = 60.0) -> Iterator[None]:
        """The daemon started and ready (READY=1); stopped (SIGTERM) and inactive after."""
        unit = f"{SERVICE}.service"
        self.systemd.run("systemctl", "start", "--no-block", unit)
        seen = ("", "")

        def settled() -> bool:
            nonlocal seen
            seen = self.systemd.unit_state(unit)
            # a daemon that exits is restarted (Restart=on-failure): auto-restart is a failure
            return seen[0] in ("active", "failed") or seen[1] == "auto-restart"

        try:
            wait_until(settled, timeout)
            assert seen[0] == "active", f"{unit} is {seen}:\n{self.daemon_log()}"
            yield
        finally:
            self.systemd.run("systemctl", "stop", unit, check=False)
            self.systemd.wait_for_state(unit, ("inactive", "failed"), timeout=timeout)
