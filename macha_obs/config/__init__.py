"""The single config model: file < MACHA_* environment < flags, read once at start.

model.py    Config, its fields and defaults; load, validate, env_overrides
checks.py   what a value must be (addresses, paths, unit names, trust entries)
source.py   where a setting came from (file, variable, flag) and the errors naming it
"""

from macha_obs.config.checks import split_host_port, trust_refusal
from macha_obs.config.loading import env_overrides, load, to_toml_dict, validate
from macha_obs.config.model import AnalysisMode, AutonomyLevel, Config
from macha_obs.config.source import (
    DEFAULT_CONFIG_PATH,
    ENV_PREFIX,
    ConfigError,
    format_validation_error,
    read_toml,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_PREFIX",
    "AnalysisMode",
    "AutonomyLevel",
    "Config",
    "ConfigError",
    "env_overrides",
    "format_validation_error",
    "load",
    "read_toml",
    "split_host_port",
    "to_toml_dict",
    "trust_refusal",
    "validate",
]
