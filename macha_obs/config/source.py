"""Where settings come from, for `config.py`: the TOML file, the MACHA_* environment, and
how a refusal is worded (the field, the reason, the value given).
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from macha_obs.config.checks import split_list
from macha_obs.errors import UsageError

ENV_PREFIX = "MACHA_"
DEFAULT_CONFIG_PATH = Path("/etc/macha-obs/config.toml")


class ConfigError(UsageError):
    """The configuration cannot be loaded; the message names the field and the reason."""


def gather(
    path: Path | None,
    environ: Mapping[str, str],
    overrides: Mapping[str, Any] | None,
    fields: Collection[str],
    list_fields: Collection[str],
) -> tuple[dict[str, Any], dict[str, str], str]:
    """The raw settings of file < environment < flags, where each came from (field ->
    the file, variable or flag), and the name of the source for messages."""
    if path is None and environ.get(ENV_PREFIX + "CONFIG"):
        path = Path(environ[ENV_PREFIX + "CONFIG"])
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    raw: dict[str, Any] = read_toml(path) if path is not None else {}
    origins = dict.fromkeys(raw, str(path))
    env = env_values(environ, fields, list_fields)
    origins |= {name: ENV_PREFIX + name.upper() for name in env}
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    origins |= {name: "--" + name.replace("_", "-") for name in flags}
    return raw | env | flags, origins, str(path) if path else "settings"


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
            hint = nearest(name, fields, ENV_PREFIX, upper=True)
            raise ConfigError(f"{key}: unknown setting{hint}")
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


def format_validation_error(
    exc: ValidationError,
    source: str,
    origins: Mapping[str, str] | None = None,
    fields: Collection[str] = (),
) -> str:
    """Each bad field with why, the value given and (with `origins`: field -> the file,
    variable or flag that set it) where it came from; an unknown one with its nearest."""
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        top = str(err["loc"][0]) if err["loc"] else ""
        origin = (origins or {}).get(top)
        where = f", from {origin}" if origin else ""
        if err["type"] == "extra_forbidden":
            hint = nearest(top, fields)
            lines.append(f"  {field}: unknown setting{hint} (from {origin or source})")
        else:
            lines.append(f"  {field}: {err['msg']} (got {err.get('input')!r}{where})")
    return "\n".join(lines)


def nearest(name: str, fields: Collection[str], prefix: str = "", *, upper: bool = False) -> str:
    """ "; did you mean X?" for an unknown setting: the snake_case spelling of a camelCase
    name (the seed's `autonomyLevel`), else the closest known name."""
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower().replace("-", "_")
    if snake in fields:
        found = snake
    else:
        close = difflib.get_close_matches(snake, list(fields), n=1, cutoff=0.6)
        if not close:
            return ""
        found = close[0]
    return f"; did you mean {prefix}{found.upper() if upper else found}?"
