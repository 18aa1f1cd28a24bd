"""The one place an error becomes what a person sees: `error: ...` and an exit code.

Every command exits 0 when done, EXIT_FAILED (1) when the request was fine but the host
or the state says no, and EXIT_USAGE (2) when the configuration or the command line is
wrong (README, "Every command exits with one of three codes"). A MachaError that leaves a
command is mapped here by its class (`macha_obs.errors`: a UsageError is 2, every other
MachaError 1), shown on stderr with whatever it quotes made inert, never as a traceback.
click's own errors (a bad option, a missing argument, a ClickException a command raises)
get the same `error: ` prefix through `prefixed`, whichever console script it was.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import IO, Any

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


def _show_prefixed(exc: click.ClickException, file: IO[Any] | None = None) -> None:
    """Usage and hint as click shows them, then `error: ` and the message (click's own
    says `Error: `)."""
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        names = ctx.command.get_help_option_names(ctx)
        hint = f"Try '{ctx.command_path} {max(names, key=len)}' for help.\n" if names else ""
        click.echo(f"{ctx.get_usage()}\n{hint}", file=file, err=file is None)
    click.echo(f"error: {exc.format_message()}", file=file, err=file is None)


def prefixed(exc: click.ClickException) -> click.ClickException:
    """`exc`, shown as every other error is; a bare group's "no command" help stays
    click's. The same exception (its class and exit code), not a new one: nothing
    outside the one tree is raised (tests/test_errors.py)."""
    if not isinstance(exc, click.exceptions.NoArgsIsHelpError):
        exc.__dict__["show"] = partial(_show_prefixed, exc)
    return exc


@contextmanager
def mapped_errors() -> Iterator[None]:
    """Run a command body; a MachaError leaving it ends the command: `error: ` and its
    message on stderr, and its exit code (click's Exit, so standalone or not works).
    A click error is shown with the same prefix."""
    try:
        yield
    except MachaError as exc:
        click.echo(f"error: {message(exc)}", err=True)
        raise click.exceptions.Exit(exit_code(exc)) from exc
    except click.ClickException as exc:
        prefixed(exc)
        raise


class Mapped(click.Command):
    """Errors mapped from parsing (the command line) to the end of the command's body."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        with mapped_errors():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with mapped_errors():
            return super().invoke(ctx)


def _terminated(signum: int, frame: object) -> None:
    del frame
    raise SystemExit(128 + signum)


def unwind_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C: an action in flight is recorded interrupted, a child
    (`macha-logs`'s journalctl) is stopped, and nothing is left half-done for the next
    start to find (serve sets its own)."""
    signal.signal(signal.SIGTERM, _terminated)


class Command(Mapped):
    """A stand-alone command (not under a Group) whose errors are mapped likewise."""

    def invoke(self, ctx: click.Context) -> Any:
        unwind_on_sigterm()
        return super().invoke(ctx)
