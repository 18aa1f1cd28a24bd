"""`macha-obs webhook-token`: where the webhook's bearer token lives, for wiring Alertmanager."""

from __future__ import annotations

import os

import click

from macha_obs.cli.common import ctx_config
from macha_obs.intake.token import ensure_token, load_token, token_path
from macha_obs.terminal import inert


@click.command("webhook-token")
@click.option("--create", is_flag=True, help="Generate the token now if it does not exist yet.")
@click.pass_context
def webhook_token(ctx: click.Context, create: bool) -> None:
    """Print the path of the token file Alertmanager must send (never the token itself).

    Point Alertmanager's `http_config.authorization.credentials_file` at it, or at a
    copy: the file is 0600, readable by the daemon's user only.
    """
    cfg = ctx_config(ctx)
    if cfg.webhook_token_file is not None:
        # the operator's own file: theirs to create, ours only to point at
        if not cfg.webhook_token_file.exists():
            raise click.ClickException(f"webhook_token_file {cfg.webhook_token_file} is missing")
        click.echo(cfg.webhook_token_file)
        return
    if not cfg.webhook_auth:
        raise click.ClickException(
            "webhook_auth = false: the webhook takes no token (loopback only)"
        )
    path = token_path(cfg.state_dir)
    try:
        if create:
            ensure_token(cfg.state_dir)
        elif not os.path.lexists(path):
            raise click.ClickException(
                f"no token yet at {path}: `macha-obs serve` creates it when it starts, "
                "or run `macha-obs webhook-token --create`"
            )
        else:
            load_token(path)  # say now what would stop the daemon
    except OSError as exc:
        raise click.ClickException(inert(str(exc))) from exc
    click.echo(path)
