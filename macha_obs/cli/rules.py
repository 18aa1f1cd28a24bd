"""`macha-obs rules`: the alert rules for this config's thresholds.

`rules render DIR` is what the NixOS module runs at build time, in a sandbox without a
state dir, network, systemd or root; so it reads the config and writes DIR, nothing else
(it never becomes the state dir's owner: there is no state dir to own).
"""

from __future__ import annotations

from pathlib import Path

import click

from macha_obs.cli.common import Group, ctx_config
from macha_obs.setup.rules import RULE_FILES, render, write_rules
from macha_obs.terminal import inert


@click.group("rules", cls=Group)
def rules_group() -> None:
    """The Prometheus alert rules, rendered from the thresholds in the config."""


@rules_group.command("render")
@click.argument("outdir", type=click.Path(path_type=Path, file_okay=False))
@click.pass_context
def rules_render(ctx: click.Context, outdir: Path) -> None:
    """Write OUTDIR/macha.yml and OUTDIR/macha-sidecar.yml (OUTDIR is created).

    Point Prometheus' rule_files at them, and render again whenever a threshold changes.
    """
    cfg = ctx_config(ctx, as_owner=False)
    written = write_rules(cfg, outdir)
    for path in written:
        click.echo(f"wrote {inert(path)}")


@rules_group.command("show")
@click.argument("name", type=click.Choice(RULE_FILES), default=RULE_FILES[0])
@click.pass_context
def rules_show(ctx: click.Context, name: str) -> None:
    """Print one rendered rule file (default macha.yml) to stdout."""
    click.echo(render(ctx_config(ctx, as_owner=False))[name], nl=False)
