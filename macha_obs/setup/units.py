"""The service's files for a plain systemd host, rendered from the NixOS module's source.

`units.json` holds the names, the [Unit] lines and every hardening setting of the daemon
and of the privileged template; `polkit-rule.js.in` the polkit rule. nixos/lib.nix reads
the same two files, so a Debian, Ubuntu or Fedora host gets the units NixOS gets (a test
evaluates lib.nix and holds the two renderings equal). Pure: text in, text out; writing
the files is `macha_obs.setup.install`'s business.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

from macha_obs.errors import UsageError
from macha_obs.protected import BUILTIN_PROTECTED_UNITS

_HERE = Path(__file__).parent
_SOURCE = _HERE / "units.json"
_POLKIT_TEMPLATE = _HERE / "polkit-rule.js.in"

# The privileged unit's typed argument as the polkit rule checks it: the same grammar and
# bounds as macha_obs/execute/privileged.py (parse_instance) and nixos/lib.nix
# (privilegedInstanceRegExp, privilegedBounds) read it from units.json; tests hold
# units.json equal to privileged.py's grammar.
_GRAMMAR_SOURCE = json.loads(_SOURCE.read_text())["privilegedInstance"]
PRIVILEGED_INSTANCE_REGEXP: str = _GRAMMAR_SOURCE["regexp"]
PRIVILEGED_BOUNDS: dict[str, list[int]] = _GRAMMAR_SOURCE["bounds"]

# A prefix goes into ExecStart= verbatim: no whitespace, quotes, `%` (a specifier) or `$`.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._+/-]*")

Value = str | int | bool | list[str]


class RenderError(UsageError):
    """An input the units cannot carry (a prefix systemd would read differently)."""


@cache
def source() -> dict[str, Any]:
    """units.json, read once."""
    data: dict[str, Any] = json.loads(_SOURCE.read_text())
    return data


def names() -> dict[str, str]:
    return dict(source()["names"])


@dataclass(frozen=True)
class Paths:
    """Where a plain systemd host keeps each file (absolute; `install --root` prefixes)."""

    daemon_unit: PurePosixPath
    privileged_unit: PurePosixPath
    polkit_rule: PurePosixPath
    sysusers: PurePosixPath
    tmpfiles: PurePosixPath
    config: PurePosixPath


def paths() -> Paths:
    n = names()
    units = PurePosixPath("/etc/systemd/system")
    return Paths(
        daemon_unit=units / f"{n['service']}.service",
        privileged_unit=units / f"{n['privileged']}@.service",
        polkit_rule=PurePosixPath(f"/etc/polkit-1/rules.d/60-{n['service']}.rules"),
        sysusers=PurePosixPath(f"/etc/sysusers.d/{n['service']}.conf"),
        tmpfiles=PurePosixPath(f"/etc/tmpfiles.d/{n['service']}.conf"),
        config=PurePosixPath("/etc") / n["configFile"],
    )


def check_prefix(prefix: Path) -> Path:
    """The prefix the units run `bin/macha-obs` from; RenderError if ExecStart= cannot say it."""
    text = str(prefix)
    if not _SAFE_PATH.fullmatch(text) or ".." in prefix.parts:
        raise RenderError(
            f"{text!r}: the prefix must be an absolute path of letters, digits and ._+-/ only"
            " (it is written into ExecStart=); install into a venv such as /opt/macha-obs"
        )
    return prefix


# ------------------------------------------------------------------ [Service] settings


def service_config(prefix: Path, config_path: str, memory_max: str = "512M") -> dict[str, Value]:
    """The daemon's [Service] settings: lib.nix's serviceConfig with no token file."""
    n, src = names(), source()
    own = {
        "ExecStart": f"{check_prefix(prefix)}/bin/macha-obs --config {config_path} serve",
        "User": n["user"],
        "Group": n["user"],
        "StateDirectory": PurePosixPath(n["stateDir"]).name,
        "WorkingDirectory": n["stateDir"],
        "MemoryMax": memory_max,
    }
    return {**src["common"], **src["daemon"], **own}


def privileged_service_config(prefix: Path) -> dict[str, Value]:
    """The privileged template's [Service] settings: lib.nix's privilegedServiceConfig."""
    src = source()
    own = {"ExecStart": f"{check_prefix(prefix)}/bin/macha-obs privileged %i"}
    return {**src["common"], **src["privileged"], **own}


def _setting(value: Value | str) -> Iterable[str]:
    values = value if isinstance(value, list) else [value]
    for v in values:
        yield ("true" if v else "false") if isinstance(v, bool) else str(v)


def _service_lines(
    settings: Mapping[str, Value], why: Mapping[str, str], first: Sequence[str]
) -> list[str]:
    """Key=value lines (a list: one line per item, like NixOS), `first` keys leading."""
    order = [k for k in first if k in settings] + [k for k in settings if k not in first]
    lines: list[str] = []
    for key in order:
        if key in why:
            lines += textwrap.wrap(why[key], 88, initial_indent="# ", subsequent_indent="# ")
        lines.extend(f"{key}={v}" for v in _setting(settings[key]))
    return lines


def _unit_file(sections: Sequence[tuple[str, list[str]]]) -> str:
    head = [
        "# Written by `macha-obs install` from macha_obs/setup/units.json, the source of the NixOS",
        "# module's units too. Change settings with a drop-in (systemctl edit), not here:",
        "# `macha-obs install` rewrites this file and `macha-obs uninstall` removes it.",
    ]
    body = "\n\n".join(f"[{name}]\n" + "\n".join(lines) for name, lines in sections)
    return "\n".join(head) + "\n" + body + "\n"


def _unit_lines(unit: Mapping[str, str | list[str]]) -> list[str]:
    return [f"{k}={' '.join(v) if isinstance(v, list) else v}" for k, v in unit.items()]


_LEADING = ("Type", "ExecStart", "User", "Group")


def daemon_unit(prefix: Path, config_path: str, memory_max: str = "512M") -> str:
    src = source()
    why = {**src["why"]["common"], **src["why"]["daemon"]}
    service = _service_lines(service_config(prefix, config_path, memory_max), why, _LEADING)
    return _unit_file(
        [
            ("Unit", _unit_lines(src["daemonUnit"])),
            ("Service", service),
            ("Install", _unit_lines(src["daemonInstall"])),
        ]
    )


def privileged_unit(prefix: Path) -> str:
    src = source()
    why = {**src["why"]["common"], **src["why"]["privileged"]}
    env = [f'Environment="{k}={v}"' for k, v in sorted(src["privilegedEnvironment"].items())]
    service = env + _service_lines(privileged_service_config(prefix), why, _LEADING)
    # no [Install]: the daemon starts instances on demand, through polkit
    return _unit_file([("Unit", _unit_lines(src["privilegedUnit"])), ("Service", service)])


# ------------------------------------------------------------------ polkit, users, dirs


def _json(value: Any) -> str:
    """JSON as Nix's builtins.toJSON writes it (compact, non-ASCII kept)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def polkit_rule(protected_units: Sequence[str] = BUILTIN_PROTECTED_UNITS) -> str:
    """The rule for `protected_units` (built-ins first, as Config.protected_units has them)."""
    n = names()
    values: dict[str, Any] = {
        "USER": n["user"],
        "VERBS": source()["verbs"],
        "PROTECTED": list(protected_units),
        "PRIVILEGED_PREFIX": f"{n['privileged']}@",
        "INSTANCE": PRIVILEGED_INSTANCE_REGEXP,
        **{f"BOUNDS_{k}": v for k, v in PRIVILEGED_BOUNDS.items()},
    }
    # one pass, like builtins.replaceStrings: a value's own text is never rescanned
    pattern = re.compile("|".join(re.escape(f"@{k}@") for k in values))
    return pattern.sub(lambda m: _json(values[m[0].strip("@")]), _POLKIT_TEMPLATE.read_text())


def sysusers() -> str:
    """The daemon's system user and group, and the journal's group (sysusers.d(5))."""
    n = names()
    groups = source()["daemon"]["SupplementaryGroups"]
    lines = [
        "# macha-obs: the daemon's user (written by `macha-obs install`)",
        f'u {n["user"]} - "macha-obs sidecar" {n["stateDir"]} -',
        *(f"m {n['user']} {g}" for g in groups),
    ]
    return "\n".join(lines) + "\n"


def tmpfiles() -> str:
    """The state directory, for the CLI tools before the daemon first ran (tmpfiles.d(5))."""
    n = names()
    mode = source()["daemon"]["StateDirectoryMode"]
    return (
        "# macha-obs: the daemon's state (written by `macha-obs install`); StateDirectory=\n"
        "# makes the same directory when the daemon starts\n"
        f"d {n['stateDir']} {mode} {n['user']} {n['user']} -\n"
    )


def example_config() -> str:
    """/etc/macha-obs/config.toml for a plain systemd host: the fields the units depend on,
    and the ones a new user sets first."""
    n = names()
    return f"""\
# macha-obs on a plain systemd host. Written by `macha-obs install` when there was none;
# yours to edit (uninstall keeps it once you changed it). Every field, with its current
# value: `macha-obs config show`. After an edit: systemctl restart {n["service"]}.service

# The units depend on these two: leave them.
state_dir = {_json(n["stateDir"])}
privileged_unit = {_json(n["privileged"])}

# observe | suggest (queue everything for `macha-approve`) | auto-safe | auto-full
autonomy_level = "suggest"
listen_address = "127.0.0.1:9847"
# ollama_url = "http://127.0.0.1:11434"
# model = "llama3.1:8b"

# Units never acted on, beyond the built-ins (SSH, networking, D-Bus, journald, ...).
# The polkit rule holds the same list: run `macha-obs install` again after a change.
# protected_units = ["postgresql.service"]

# Alertmanager's bearer token: by default the daemon generates one in
# {n["stateDir"]}/webhook.token (0600) on its first start.
# webhook_token_file = "/etc/macha-obs/webhook.token"
"""
