"""One exception tree, one root, and one CLI handler that turns it into exit codes."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import macha_obs
from macha_obs import config as config_mod
from macha_obs.agent.llm_errors import LlmTimeout
from macha_obs.agent.report import PayloadError
from macha_obs.cli import main
from macha_obs.cli.errors import EXIT_FAILED, EXIT_USAGE, Command, mapped_errors
from macha_obs.config import ConfigError
from macha_obs.errors import DBusTimeout, InvalidInput, MachaError, StateError, UsageError
from macha_obs.intake.token import WebhookTokenError
from macha_obs.models import InvalidUnitName, validate_unit_name
from macha_obs.setup.units import RenderError


def _exception_classes() -> list[type[BaseException]]:
    """Every exception class defined in the package, found by importing each module."""
    found: list[type[BaseException]] = []
    for info in pkgutil.walk_packages(macha_obs.__path__, "macha_obs."):
        if info.name.rsplit(".", 1)[-1] == "__main__":  # importing it would run the CLI
            continue
        module = importlib.import_module(info.name)
        found += [
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj)
            and issubclass(obj, BaseException)
            and obj.__module__ == module.__name__
        ]
    return found


def test_every_exception_in_the_package_derives_from_macha_error() -> None:
    classes = _exception_classes()
    assert len(classes) > 20  # the walk really reached the rooms
    strays = [f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, MachaError)]
    assert strays == []


def test_usage_errors_are_the_ones_a_person_fixes_by_changing_config_or_command() -> None:
    assert issubclass(ConfigError, UsageError)
    assert issubclass(RenderError, UsageError)
    assert issubclass(PayloadError, UsageError)
    for failure in (WebhookTokenError, LlmTimeout, DBusTimeout, InvalidUnitName):
        assert not issubclass(failure, UsageError), failure


def test_stdlib_bases_stay_where_callers_rely_on_them() -> None:
    # pydantic reports a ValueError raised in a validator; token callers catch ValueError
    assert issubclass(InvalidUnitName, InvalidInput)
    assert issubclass(InvalidUnitName, ValueError)
    assert issubclass(WebhookTokenError, ValueError)
    with pytest.raises(MachaError):
        validate_unit_name("foo;reboot.service")


# ---------------------------------------------------------------- the CLI handler


def _group(raise_it: BaseException) -> click.Group:
    """A small command group wired like the real one: its invoke runs in the handler."""

    class Mapped(click.Group):
        def invoke(self, ctx: click.Context) -> object:
            with mapped_errors():
                return super().invoke(ctx)

    @click.group(cls=Mapped)
    def cli() -> None:
        pass

    @cli.command("fail")
    def fail() -> None:
        click.echo("started")
        raise raise_it

    return cli


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("c.toml: not valid TOML"), EXIT_USAGE),
        (RenderError("prefix holds a space"), EXIT_USAGE),
        (PayloadError("not an Alertmanager v4 payload"), EXIT_USAGE),
        (StateError("state.db is a symlink; remove it"), EXIT_FAILED),
        (WebhookTokenError("the token file is missing"), EXIT_FAILED),
        (DBusTimeout("no reply within 5s"), EXIT_FAILED),
        (InvalidUnitName("bad unit"), EXIT_FAILED),
        (MachaError("anything else"), EXIT_FAILED),
    ],
)
def test_a_macha_error_ends_the_command_as_one_error_line_and_its_exit_code(
    error: MachaError, code: int
) -> None:
    result = CliRunner().invoke(_group(error), ["fail"])
    assert result.exit_code == code
    assert result.stdout == "started\n"
    assert result.stderr == f"error: {error}\n"


def test_what_an_error_quotes_reaches_the_terminal_inert() -> None:
    forged = StateError("cannot open /state/x\n  risk: low \x1b[2K\u202e")
    result = CliRunner().invoke(_group(forged), ["fail"])
    assert result.exit_code == EXIT_FAILED
    assert result.stderr == "error: cannot open /state/x\\n  risk: low \\x1b[2K\\u202e\n"


def test_a_config_error_keeps_a_line_per_field_each_made_inert() -> None:
    error = ConfigError("c.toml: invalid configuration\n  model: bad \x1b]0;x\x07")
    result = CliRunner().invoke(_group(error), ["fail"])
    assert result.exit_code == EXIT_USAGE
    assert result.stderr == ("error: c.toml: invalid configuration\n  model: bad \\x1b]0;x\\x07\n")


def test_anything_but_a_macha_error_is_not_disguised_as_one() -> None:
    result = CliRunner().invoke(_group(RuntimeError("a bug")), ["fail"])
    assert isinstance(result.exception, RuntimeError)  # a bug shows as one, to be reported
    assert "error:" not in result.stderr


def test_a_standalone_command_maps_errors_like_a_group() -> None:
    @click.command(cls=Command)
    def alone() -> None:
        raise PayloadError("not an Alertmanager v4 payload: alerts: Field required")

    result = CliRunner().invoke(alone, [])
    assert (result.exit_code, result.stderr) == (
        EXIT_USAGE,
        "error: not an Alertmanager v4 payload: alerts: Field required\n",
    )


def test_a_broken_config_through_macha_obs_reads_as_the_handler_shows_it(
    tmp_path: Path,
) -> None:
    """The real `macha-obs config validate` and the handler say the same about the same
    file, so wiring the handler into the Group changes nothing a person sees."""
    bad = tmp_path / "bad.toml"
    bad.write_text('autonomy_level = "yolo"\ncheck_interval = "soon\\u001b[2K"\n')
    env = {"MACHA_STATE_DIR": str(tmp_path / "state"), "MACHA_CONFIG": ""}
    real = CliRunner().invoke(main, ["config", "validate", str(bad)], env=env)

    @click.command(cls=Command)
    def load() -> None:
        config_mod.load(bad)

    mapped = CliRunner().invoke(load, [], env=env)
    assert real.exit_code == mapped.exit_code == EXIT_USAGE
    assert real.stderr == mapped.stderr
    assert mapped.stderr.startswith(f"error: {bad}: invalid configuration\n")
    assert "autonomy_level" in mapped.stderr
    assert "\x1b" not in mapped.stderr
