"""Config: file < MACHA_* environment < flags, merged protected units, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from macha_obs import config as config_mod
from macha_obs.config import AutonomyLevel, ConfigError
from macha_obs.protected import BUILTIN_PROTECTED_UNITS


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_are_safe() -> None:
    cfg = config_mod.load(None, environ={}, overrides={})
    assert cfg.autonomy_level is AutonomyLevel.SUGGEST
    assert cfg.check_interval == 300
    assert cfg.model == "llama3.1:70b"
    assert cfg.listen_host == "127.0.0.1"
    assert cfg.protected_units == BUILTIN_PROTECTED_UNITS


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, 'autonomy_level = "observe"\ncheck_interval = 10\nmodel = "a"\n')
    env = {"MACHA_CHECK_INTERVAL": "20", "MACHA_MODEL": "b"}
    cfg = config_mod.load(path, environ=env, overrides={"model": "c", "analysis": None})
    assert cfg.autonomy_level is AutonomyLevel.OBSERVE  # file
    assert cfg.check_interval == 20  # env beats file
    assert cfg.model == "c"  # flag beats env


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, 'autonomy_level = "auto-safe"\n')
    cfg = config_mod.load(None, environ={"MACHA_CONFIG": str(path)})
    assert cfg.autonomy_level is AutonomyLevel.AUTO_SAFE


def test_state_dir_and_listen_address_from_environment(tmp_path: Path) -> None:
    env = {"MACHA_STATE_DIR": str(tmp_path), "MACHA_LISTEN_ADDRESS": "127.0.0.1:0"}
    cfg = config_mod.load(None, environ=env)
    assert cfg.state_dir == tmp_path
    assert cfg.listen_port == 0


def test_protected_units_merge_with_builtins(tmp_path: Path) -> None:
    path = write(tmp_path, 'protected_units = ["postgresql.service", "sshd.service"]\n')
    cfg = config_mod.load(path, environ={})
    assert set(BUILTIN_PROTECTED_UNITS) <= set(cfg.protected_units)
    assert "postgresql.service" in cfg.protected_units
    assert cfg.protected_units.count("sshd.service") == 1


def test_protected_units_from_env_list(tmp_path: Path) -> None:
    cfg = config_mod.load(None, environ={"MACHA_PROTECTED_UNITS": "a.service, b@*.service"})
    assert {"a.service", "b@*.service"} <= set(cfg.protected_units)


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        ('autonomy_level = "yolo"\n', "autonomy_level", "Input should be"),
        ("check_interval = 0\n", "check_interval", "greater than or equal to 1"),
        ("bogus = 1\n", "bogus", "unknown setting"),
        ('listen_address = "nowhere"\n', "listen_address", "HOST:PORT"),
        ('ollama_url = "ftp://x"\n', "ollama_url", "http"),
        ('protected_units = ["a b.service"]\n', "protected_units", "not a unit name"),
    ],
)
def test_invalid_values_name_field_and_reason(
    tmp_path: Path, text: str, field: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        config_mod.load(write(tmp_path, text), environ={})
    message = str(info.value)
    assert field in message
    assert reason in message


def test_corrupt_toml_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        config_mod.load(write(tmp_path, 'autonomy_level = "x\n[[[\n'), environ={})


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        config_mod.load(tmp_path / "nope.toml", environ={})


def test_unknown_env_setting_is_an_error() -> None:
    with pytest.raises(ConfigError, match="MACHA_AUTONOMY: unknown setting"):
        config_mod.load(None, environ={"MACHA_AUTONOMY": "observe"})


def test_show_roundtrips_through_validation(make_config) -> None:
    cfg = make_config(autonomy_level="auto-full")
    again = config_mod.validate(config_mod.to_toml_dict(cfg))
    assert again == cfg


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        ('state_dir = ""\n', "state_dir", "must not be empty"),
        ('state_dir = "var/lib/macha"\n', "state_dir", "absolute path"),
        ('state_dir = "/var/lib/\\u0000macha"\n', "state_dir", "NUL"),
        ('journal_dir = "/var/log/\\u0000j"\n', "journal_dir", "NUL"),
        ('listen_address = "[::1:9847"\n', "listen_address", "IPv6 address in brackets"),
        ('listen_address = "::1:9847"\n', "listen_address", "IPv6 as [::1]"),
        ('listen_address = "[10.0.0.1]:9847"\n', "listen_address", "IPv6 address in brackets"),
        ('listen_address = "bad host:9847"\n', "listen_address", "not a host name"),
        ('hostname = "web1\\nevil"\n', "hostname", "not a host name"),
        ('hostname = "web1 "\n', "hostname", "not a host name"),
        ('host_aliases = ["*"]\n', "host_aliases", "not patterns"),
        ('host_aliases = ["web*.example.org"]\n', "host_aliases", "not patterns"),
        ('host_aliases = [""]\n', "host_aliases", "empty alias"),
        ('host_aliases = ["a\\nb"]\n', "host_aliases", "not a host name"),
        ("check_interval = true\n", "check_interval", "not true or false"),
        ("max_actions_per_hour = false\n", "max_actions_per_hour", "not true or false"),
        ("dbus_events = 1\n", "dbus_events", "not a number"),
    ],
)
def test_issue_20_values_are_refused_naming_the_field(
    tmp_path: Path, text: str, field: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        config_mod.load(write(tmp_path, text), environ={})
    message = str(info.value)
    assert f"  {field}: " in message
    assert reason in message


def test_what_the_stricter_checks_still_accept(tmp_path: Path) -> None:
    text = (
        'listen_address = "[::1]:9847"\nhostname = "web1.example.org."\n'
        'host_aliases = ["web1", "10.0.0.5", "::1", "web_1"]\ncheck_interval = 30\n'
    )
    cfg = config_mod.load(write(tmp_path, text), environ={"MACHA_DBUS_EVENTS": "false"})
    assert (cfg.listen_host, cfg.listen_port) == ("::1", 9847)
    assert cfg.host_aliases == ("web1", "10.0.0.5", "::1", "web_1")
    assert cfg.dbus_events is False
    env = {"MACHA_CHECK_INTERVAL": "45", "MACHA_STATE_DIR": str(tmp_path)}
    assert config_mod.load(None, environ=env).check_interval == 45.0


def test_intake_caps_have_documented_defaults() -> None:
    cfg = config_mod.validate({"hostname": "h"})
    assert (cfg.incident_max_open, cfg.incident_max_alerts) == (500, 1000)
    assert cfg.inbox_max_bytes == cfg.incident_alerts_max_bytes == 32 * 1024 * 1024
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in ("incident_max_open", "incident_max_alerts", "incident_alerts_max_bytes"):
        assert f"`{name}`" in readme
    assert "`inbox_max_bytes`" in readme
