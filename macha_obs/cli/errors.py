"""The one place an error becomes what a person sees: `error: ...` and an exit code.

Every command exits 0 when done, EXIT_FAILED (1) when the request was fine but the host
or the state says no, and EXIT_USAGE (2) when the configuration or the command line is
wrong (README, "Every command exits with one of three codes"). A MachaError that leaves a
command is mapped here by its class (`macha_obs.errors`: a UsageError is 2, every other
MachaError 1), shown on stderr with whatever it quotes made inert, never as a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from macha_obs.config import ConfigError
from macha_obs.errors import MachaError, UsageError
from macha_obs.terminal import inert

EXIT_FAILED = 1
EXIT_USAGE = 2


def exit_code(exc: MachaError) -> int:
    """2 when changing the config or the command would help, 1 otherwise."""
    return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILED


def message(exc: MachaError) -> str:
    """What a person reads after `error: `. One line, every control character escaped,
    except a ConfigError's: config builds it a line per bad field, so each of its lines
    is escaped on its own and the lines are kept."""
    if isinstance(exc, ConfigError):
        return "\n".join(inert(line) for line in str(exc).split("\n"))
    return inert(exc)


@contextmanager
def mapped_errors() -> Iterator[None]:
    """Run a command body; a MachaError leaving it ends the command: `error: ` and its
    message on stderr, and its exit code (click's Exit, so standalone or not works)."""
    try:
        yield
    except MachaError as exc:
        click.echo(f"error: {message(exc)}", err=True)
        raise click.exceptions.Exit(exit_code(exc)) from exc


class Command(click.Command):
    """A stand-alone command (not under a Group) whose MachaErrors are mapped likewise."""

    def invoke(self, ctx: click.Context) -> Any:
        with mapped_errors():
            return super().invoke(ctx)
