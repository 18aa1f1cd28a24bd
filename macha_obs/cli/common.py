"""What every entry point shares: config loading and options, the store, exit codes.

Exit codes: 0 ok, 1 the request could not be done (e.g. approval not pending), 2 bad
configuration or usage.
"""

from __future__ import annotations

import getpass
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from macha_obs import config as config_mod
from macha_obs import statedir
from macha_obs.cli.errors import EXIT_USAGE, mapped_errors
from macha_obs.config import AnalysisMode, AutonomyLevel, Config, ConfigError
from macha_obs.store import Store
from macha_obs.terminal import inert

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("macha_obs")


def open_store(cfg: Config) -> Store:
    """The state's store; a refusal (StoreError) is mapped by the group's error handler."""
    return Store(cfg.state_dir, retention=cfg)


def config_options(fn: F) -> F:
    """--config and the settings people most often override, on every entry point."""
    options = [
        click.option(
            "--config",
            "config_path",
            type=click.Path(path_type=Path, dir_okay=False),
            help="TOML config (default: /etc/macha-obs/config.toml when present).",
        ),
        click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False)),
        click.option("--autonomy-level", type=click.Choice([a.value for a in AutonomyLevel])),
        click.option("--listen-address", help="HOST:PORT for /metrics, /alerts, /healthz."),
        click.option("--check-interval", type=float, help="Seconds between cycles."),
        click.option("--model", help="LLM model name."),
        click.option("--ollama-url"),
        click.option("--analysis", type=click.Choice([a.value for a in AnalysisMode])),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _terminated(signum: int, frame: object) -> None:
    del frame
    raise SystemExit(128 + signum)


class Group(click.Group):
    """A command group whose untrusted-state refusals end as a message and exit 1,
    never a traceback, wherever in a command they are raised."""

    def invoke(self, ctx: click.Context) -> Any:
        # SIGTERM unwinds like Ctrl-C: an action in flight is recorded interrupted, and
        # nothing is left half-done for the next start to find (serve sets its own)
        signal.signal(signal.SIGTERM, _terminated)
        with mapped_errors():
            return super().invoke(ctx)


def load_config(config_path: Path | None = None, **flags: Any) -> Config:
    try:
        return config_mod.load(config_path, overrides=flags)
    except ConfigError as exc:
        # a line per field, as the message has them; what a value carries shows escaped
        shown = "\n".join(inert(line) for line in str(exc).split("\n"))
        click.echo(f"error: {shown}", err=True)
        sys.exit(EXIT_USAGE)


_person: list[str] = []  # who ran the command, noted before a root CLI drops privileges


def who() -> str:
    """The person behind this command, for the audit log (not the user it runs as)."""
    return _person[0] if _person else _login_name()


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def keep_options(ctx: click.Context, config_path: Path | None, flags: dict[str, Any]) -> None:
    """A group's --config and flags, for ctx_config() to load once, when first needed."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    ctx.obj["flags"] = flags


def ctx_config(ctx: click.Context, *, as_owner: bool = True) -> Config:
    """The config, loaded once. Run as root, a command then becomes the state dir's
    owner before it touches anything there (`as_owner`; only the privileged oneshot's
    root side keeps root): whatever the service user planted in its own dir, root's
    commands can then touch nothing the service user could not."""
    if "config" not in ctx.obj:
        ctx.obj["config"] = load_config(ctx.obj["config_path"], **ctx.obj["flags"])
    cfg: Config = ctx.obj["config"]
    if as_owner and not ctx.obj.get("dropped"):
        ctx.obj["dropped"] = True
        _person[:] = [_login_name()]
        try:
            user = statedir.drop_to_owner(cfg.state_dir)
        except OSError as exc:
            click.echo(f"error: cannot become the state dir's owner: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        if user is not None:
            log.debug("running as %s, the owner of %s", user, cfg.state_dir)
    return cfg
