"""What every entry point shares: config loading and options, the store, exit codes.

Exit codes: 0 ok, 1 the request could not be done (e.g. approval not pending), 2 bad
configuration or usage.
"""

from __future__ import annotations

import getpass
import logging
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import click

from macha_obs import config as config_mod
from macha_obs import statedir
from macha_obs.cli.errors import Mapped, unwind_on_sigterm
from macha_obs.config import AnalysisMode, AutonomyLevel, Config
from macha_obs.errors import UsageError
from macha_obs.statedir import StateDir
from macha_obs.store import Store

F = TypeVar("F", bound=Callable[..., Any])
# every console script and command: -h as well as --help
HELP: dict[str, Any] = {"help_option_names": ["-h", "--help"]}
log = logging.getLogger("macha_obs")


def open_store(cfg: Config, *, create: bool = True) -> Store:
    """The state's store; a refusal (StoreError) is mapped by the group's error handler.
    A command that only reads passes create=False: where nothing was recorded yet it
    reads an empty store of its own (an empty queue, a closed breaker, no history) and
    says so on stderr, instead of making a state dir, as root, where none should be."""
    if create or StateDir(cfg.state_dir).db.exists():
        return Store(cfg.state_dir, retention=cfg)
    click.echo(f"note: nothing recorded yet in {cfg.state_dir} (no state.db there)", err=True)
    empty = click.get_current_context().with_resource(
        tempfile.TemporaryDirectory(prefix="macha-empty-")
    )
    return Store(Path(empty))


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


class Group(Mapped, click.Group):
    """A command group whose errors end as `error: ...` and an exit code, never a
    traceback, wherever in a command (or its command line) they are raised."""

    group_class = type  # subgroups are Groups too

    def invoke(self, ctx: click.Context) -> Any:
        unwind_on_sigterm()
        return super().invoke(ctx)


def load_config(config_path: Path | None = None, **flags: Any) -> Config:
    """The config from file < env < flags; a ConfigError goes to the one error path."""
    return config_mod.load(config_path, overrides=flags)


_person: list[str] = []  # who ran the command, noted before a root CLI drops privileges


def who() -> str:
    """The person behind this command, for the audit log (not the user it runs as)."""
    return _person[0] if _person else _login_name()


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _import_while_root(preload: Callable[[], None] | None = None) -> None:
    """What a command imports only when first needed (a model client's or `status`'s
    HTTP, the command's own `preload`; README "Idle cost"), imported before dropping to
    the state dir's owner: that user may not read the interpreter's own files (a venv
    under /root, this machine's Python), and an import after the drop would fail."""
    import requests  # noqa: F401

    import macha_obs.agent.endpoint_http  # noqa: F401

    if preload is not None:
        preload()


def keep_options(ctx: click.Context, config_path: Path | None, flags: dict[str, Any]) -> None:
    """A group's --config and flags, for ctx_config() to load once, when first needed."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    ctx.obj["flags"] = flags


def ctx_config(
    ctx: click.Context, *, as_owner: bool = True, preload: Callable[[], None] | None = None
) -> Config:
    """The config, loaded once. Run as root, a command then becomes the state dir's
    owner before it touches anything there (`as_owner`; only the privileged oneshot's
    root side keeps root): whatever the service user planted in its own dir, root's
    commands can then touch nothing the service user could not. `preload` imports, before
    that drop, what this command would otherwise import on first use."""
    if "config" not in ctx.obj:
        ctx.obj["config"] = load_config(ctx.obj["config_path"], **ctx.obj["flags"])
    cfg: Config = ctx.obj["config"]
    if as_owner and not ctx.obj.get("dropped"):
        ctx.obj["dropped"] = True
        _person[:] = [_login_name()]
        try:
            user = statedir.drop_to_owner(
                cfg.state_dir, before=partial(_import_while_root, preload)
            )
        except OSError as exc:
            raise UsageError(f"cannot become the state dir's owner: {exc}") from exc
        if user is not None:
            log.debug("running as %s, the owner of %s", user, cfg.state_dir)
    return cfg
