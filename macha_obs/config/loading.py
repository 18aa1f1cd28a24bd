"""Loading the config: file < MACHA_* environment < flags, validated into `Config`
(model.py), every error naming the field and where its value came from (source.py)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from macha_obs.config.model import Config
from macha_obs.config.source import ConfigError, env_values, format_validation_error, gather

_LIST_FIELDS = {
    name for name, field in Config.model_fields.items() if "tuple" in str(field.annotation)
}


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """MACHA_<FIELD> variables as a dict of raw values; unknown MACHA_ names are an error."""
    return env_values(environ, Config.model_fields, _LIST_FIELDS)


def load(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the config from file < environment < explicit overrides (CLI flags)."""
    environ = os.environ if environ is None else environ
    raw, origins, source = gather(path, environ, overrides, Config.model_fields, _LIST_FIELDS)
    return validate(raw, source=source, origins=origins)


def validate(
    raw: Mapping[str, Any], source: str = "settings", origins: Mapping[str, str] | None = None
) -> Config:
    """The config from merged raw values; a ConfigError names each bad field and, with
    `origins` (field -> the file, variable or flag that set it), where it came from."""
    try:
        return Config.model_validate(dict(raw))
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(exc, source, origins or {}, Config.model_fields)
        ) from exc


def to_toml_dict(cfg: Config) -> dict[str, Any]:
    """The effective config as plain TOML-able values (for `config show`)."""
    data = cfg.model_dump(mode="json")
    return {k: v for k, v in data.items() if v is not None}
