"""Helpers for the NixOS module tests: Nix evaluation without nixpkgs, unit rendering, polkit.

The module is evaluated by the real NixOS module system: nixpkgs' `lib` (lib.evalModules,
beside tests/fixtures/nixos/nixos-options.nix), found as nixpkgs_lib.py says: NIXPKGS_LIB,
../shared/nixpkgs-lib, or the pinned download. A clone with none of them (offline, nothing
beside it) falls back to the stand-in evaluator (eval.nix), skips the tests that need the
real module system and says so in one line at the end of the run; under CI the real lib
is required. REQUIRE_REAL_COMPONENTS=1 (`./macha-dev test`) does not require it: the
README's test command passes in a clone with nothing beside it.

Nix never writes /nix here: every call passes `--store dummy://` (evaluation only) or a
store under a temporary directory.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from macha_obs import config as config_mod
from macha_obs.config import Config
from tests.harness import nixpkgs_lib
from tests.harness.real import in_ci, unavailable

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "nixos"
EVAL_NIX = FIXTURES / "eval.nix"  # the stand-in
REAL_EVAL_NIX = FIXTURES / "real-eval.nix"
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


STAND_IN_SKIP = "needs the real NixOS module system; the stand-in evaluator is in use"


@functools.cache
def lookup() -> nixpkgs_lib.Found:
    """Looked up once a run (the download is tried at most once)."""
    try:
        return nixpkgs_lib.find(os.environ, REPO)
    except nixpkgs_lib.LibPathError as exc:
        pytest.fail(str(exc), pytrace=False)


def real_lib() -> Path | None:
    """The real nixpkgs lib, or None: the stand-in (outside CI only)."""
    found = lookup()
    if found.path is None and in_ci():
        pytest.fail(
            f"the real nixpkgs lib is missing: {found.source}. CI must evaluate the NixOS "
            "module with it (see tests/harness/nixpkgs_lib.py)",
            pytrace=False,
        )
    return found.path


def need_real_lib() -> Path:
    """For tests of what only the real module system does (priorities, merging, types):
    a skip with the stand-in (it cannot show them), a failure under CI."""
    lib = real_lib()
    if lib is None:
        pytest.skip(STAND_IN_SKIP)
    return lib


def stand_in_summary() -> str | None:
    """The one line that ends a run whose NixOS tests used the stand-in, else None."""
    if lookup.cache_info().currsize == 0 or lookup().path is not None:
        return None
    return (
        "warning: the NixOS tests ran against the stand-in evaluator "
        f"(tests/fixtures/nixos/eval.nix), those that need the real module system skipped: "
        f"{lookup().source}"
    )


def eval_module(
    settings: Mapping[str, Any],
    other: Mapping[str, Any] | None = None,
    pkg_path: str = "/stub/macha-obs",
    *,
    user_module: str | None = None,
    with_overlay: bool = False,
    fatal_assertions: bool = False,
) -> dict[str, Any]:
    """nixos/module.nix with services.macha-autonomous = settings and the definitions in
    `other` (JSON) — through lib.evalModules of the real nixpkgs lib, or the stand-in.

    `user_module` (a Nix expression: a module of the user's own, with mkForce and the
    like), `with_overlay` (pkgs has the flake's overlay) and `fatal_assertions` (fail like
    building the system does) need the real lib."""
    common = ("--argstr", "settingsJSON", json.dumps(settings), "--argstr", "otherJSON",
              json.dumps(other or {}), "--argstr", "pkgPath", pkg_path)  # fmt: skip
    real = need_real_lib() if (user_module or with_overlay or fatal_assertions) else real_lib()
    evaluator, extra = EVAL_NIX, []
    if real is not None:
        evaluator, extra = REAL_EVAL_NIX, ["--argstr", "libPath", str(real)]
    if user_module is not None:
        extra += ["--arg", "userModule", user_module]
    if with_overlay:
        extra += ["--arg", "withOverlay", "true"]
    if fatal_assertions:
        extra += ["--arg", "fatalAssertions", "true"]
    result: dict[str, Any] = nix_eval_json(str(evaluator), *common, *extra)
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

    environment = {k: v for k, v in service.get("environment", {}).items() if v is not None}
    if service.get("path") and "PATH" not in environment:
        # the stand-in does not derive PATH from `path` as NixOS does: the same here
        # (packages come out of the evaluators as {"storePath": ..., "name": ...})
        roots = [p["storePath"] if isinstance(p, dict) else p for p in service["path"]]
        bins = [f"{p}/bin" for p in roots] + [f"{p}/sbin" for p in roots]
        environment["PATH"] = ":".join(bins)
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


# ------------------------------------------------------------------ what the tests share

SERVICE = "macha-autonomous"
PRIVILEGED = "macha-autonomous-privileged"
DOCS = REPO / "docs" / "nixos.md"

# The seed's users wrote this; it must keep working.
SEED_EXAMPLE = {
    "enable": True,
    "autonomyLevel": "auto-safe",
    "checkInterval": 300,
    "model": "llama3.1:70b",
}
ALERTMANAGER_ON = {"services": {"prometheus": {"alertmanager": {"enable": True}}}}
PROMETHEUS_ON = {"services": {"prometheus": {"enable": True, "alertmanager": {"enable": True}}}}
# what alertmanager.enable requires: a receiver that reaches a person (any receiver)
HUMAN_RECEIVER = {"name": "admin", "webhook_configs": [{"url": "https://ntfy.example.org/admin"}]}
WITH_ALERTMANAGER = {"alertmanager": {"enable": True, "humanReceiver": HUMAN_RECEIVER}}


def rendered_config(result: Mapping[str, Any]) -> Config:
    """The TOML the module writes to /etc/macha-obs/config.toml, loaded by the model."""
    etc = result["config"]["environment"]["etc"]["macha-obs/config.toml"]["source"]
    text = to_toml(etc["toml"])
    return config_mod.validate(tomllib.loads(text), source="rendered config.toml")


def alertmanager_configuration(result: Mapping[str, Any]) -> dict[str, Any]:
    configuration: dict[str, Any] = result["config"]["services"]["prometheus"]["alertmanager"][
        "configuration"
    ]
    return configuration


def receiver(configuration: Mapping[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in configuration["receivers"] if r["name"] == name)
    return found


def rule_blocks(rule_file_text: str) -> dict[str, str]:
    """alertname → the text of its rule, from a Prometheus rule file (no YAML library: the
    project does not depend on one; the rule files put one `- alert:` per rule)."""
    parts = re.split(r"^\s*- alert:\s*", rule_file_text, flags=re.M)[1:]
    return {part.split(None, 1)[0]: part for part in parts}


def rule_label(block: str, name: str) -> str | None:
    match = re.search(rf"^\s+{re.escape(name)}:\s*(\S+)\s*$", block, flags=re.M)
    return match[1] if match else None
