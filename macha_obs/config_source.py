"""Where settings come from, for `config.py`: the TOML file, the MACHA_* environment, and
how a refusal is worded (the field, the reason, the value given).
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from macha_obs.config_checks import split_list
from macha_obs.errors import UsageError

ENV_PREFIX = "MACHA_"


class ConfigError(UsageError):
    """The configuration cannot be loaded; the message names the field and the reason."""


def env_values(
    environ: Mapping[str, str], fields: Collection[str], list_fields: Collection[str]
) -> dict[str, Any]:
    """MACHA_<FIELD> variables as a dict of raw values; unknown MACHA_ names are an error."""
    out: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name == "config":
            continue  # the path of the file itself, handled by load()
        if name not in fields:
            raise ConfigError(f"{key}: unknown setting (known: {', '.join(sorted(fields))})")
        try:
            out[name] = split_list(raw) if name in list_fields else raw
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from exc
    return out


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        reason = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {field}: {reason} (got {err.get('input')!r})")
    return "\n".join(lines)
