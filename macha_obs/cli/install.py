"""`macha-obs install` and `macha-obs uninstall`: the service on a plain systemd host.

Run once as root (Debian, Ubuntu, Fedora): the units, polkit rule, sysusers.d and
tmpfiles.d entries and an example config, rendered from the NixOS module's source.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from macha_obs.setup import install as inst
from macha_obs.setup.units import RenderError, check_prefix
from macha_obs.terminal import inert

_ROOT = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/"),
    show_default=True,
    help="Write under this directory instead of / (an image, a container's root).",
)
_DRY_RUN = click.option("--dry-run", is_flag=True, help="Say what would change; change nothing.")


def default_prefix() -> Path:
    """The environment this `macha-obs` runs from: its bin/ holds the console scripts."""
    return Path(sys.executable).parent.parent  # not resolved: a venv's python is a symlink


def _installed_script(prefix: Path) -> Path:
    try:
        check_prefix(prefix)
    except RenderError as exc:
        raise click.BadParameter(str(exc), param_hint="--prefix") from exc
    script = prefix / "bin" / "macha-obs"
    if not script.is_file():
        raise click.BadParameter(
            f"{script} does not exist: pass the prefix of the venv macha-obs is installed in",
            param_hint="--prefix",
        )
    return script


def _echo_report(report: inst.Report, dry_run: bool) -> None:
    would = "would " if dry_run else ""
    for name in report.written:
        click.echo(f"{would}write   {name}")
    for name in report.removed:
        click.echo(f"{would}remove  {name}")
    for name in report.kept:
        click.echo(f"keep    {name}")


@click.command("install")
@_ROOT
@click.option(
    "--prefix",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where macha-obs is installed (its bin/macha-obs runs the units) [default: this venv].",
)
@_DRY_RUN
@click.option("--force", is_flag=True, help="Overwrite files macha-obs did not write.")
def install_command(root: Path, prefix: Path | None, dry_run: bool, force: bool) -> None:
    """Write the units, polkit rule, sysusers.d/tmpfiles.d entries and an example config.

    Run it as root once (and again after changing protected_units, or upgrading): it
    starts nothing; it prints the commands that do.
    """
    prefix = prefix if prefix is not None else default_prefix()
    _installed_script(prefix)
    try:
        files = inst.plan(prefix, inst.configured_protected_units(root))
        report = inst.install(root, files, dry_run=dry_run, force=force)
    except OSError as exc:
        raise click.ClickException(inert(str(exc))) from exc
    _echo_report(report, dry_run)
    if not dry_run and root == Path("/"):
        click.echo("\nnow, as root:")
        for step in inst.next_steps():
            click.echo(f"  {step}")


@click.command("uninstall")
@_ROOT
@_DRY_RUN
@click.option("--force", is_flag=True, help="Remove installed files even if changed since.")
@click.option(
    "--purge-state",
    is_flag=True,
    help="Also delete the state directory (queue, audit log, token). Kept by default.",
)
def uninstall_command(root: Path, dry_run: bool, force: bool, purge_state: bool) -> None:
    """Remove what `macha-obs install` wrote (stop and disable the service first)."""
    try:
        report = inst.uninstall(root, dry_run=dry_run, force=force, purge_state=purge_state)
    except OSError as exc:
        raise click.ClickException(inert(str(exc))) from exc
    _echo_report(report, dry_run)
    if not dry_run and root == Path("/"):
        click.echo("\nnow, as root: systemctl daemon-reload")
