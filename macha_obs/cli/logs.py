"""`macha-logs`: the sidecar's journal, the audit logs, and orchestrator.log."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from macha_obs.cli.common import (
    config_options,
    load_config,
)

# ---------------------------------------------------------------- macha-logs

LOG_KINDS = ("service", "decisions", "actions", "orchestrator")


def _format_audit(line: str) -> str:
    """One JSONL audit record as a line a person reads."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return line.rstrip("\n")
    if not isinstance(rec, dict):
        return line.rstrip("\n")
    head = f"{rec.pop('ts', '-')} {rec.pop('event', '-'):<12}"
    incident = rec.pop("incident_id", None)
    bits = [f"incident={incident}"] if incident else []
    for key in ("label", "outcome", "risk", "status", "reason", "assessment", "summary"):
        if rec.get(key) not in (None, ""):
            bits.append(f"{key}={rec[key]}")
    if "action" in rec and "label" not in rec and isinstance(rec["action"], dict):
        bits.append(f"action={rec['action'].get('kind')} {rec['action'].get('unit', '')}".rstrip())
    return f"{head} {' '.join(bits)}"


def _follow(path: Path, lines: int, render: Callable[[str], str]) -> None:
    import time

    with path.open() as fh:
        for line in fh.readlines()[-lines:]:
            click.echo(render(line))
        while True:
            line = fh.readline()
            if line:
                click.echo(render(line))
            else:
                time.sleep(0.5)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("kind", type=click.Choice(LOG_KINDS))
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--json", "as_json", is_flag=True, help="Raw JSON lines (audit logs).")
@click.option("-n", "--lines", default=50, show_default=True, type=click.IntRange(1))
@config_options
def logs_main(
    kind: str, follow: bool, as_json: bool, lines: int, config_path: Path | None, **flags: Any
) -> None:
    """Read the sidecar's logs: its journal, the audit logs, or orchestrator.log."""
    cfg = load_config(config_path, **flags)
    if kind == "service":
        import subprocess

        argv = ["journalctl", "--no-pager", "-u", "macha-autonomous.service", "-n", str(lines)]
        argv += ["-o", "json"] if as_json else []
        argv += ["-f"] if follow else []
        sys.exit(subprocess.call(argv))
    path = (
        cfg.state_dir
        / {
            "decisions": "decisions.jsonl",
            "actions": "actions.jsonl",
            "orchestrator": "orchestrator.log",
        }[kind]
    )
    if not path.exists():
        raise click.ClickException(f"{path} does not exist yet (nothing logged)")

    def render(line: str) -> str:
        if as_json or kind == "orchestrator":
            return line.rstrip("\n")
        return _format_audit(line)

    if follow:
        _follow(path, lines, render)
        return
    with path.open() as fh:
        for line in fh.readlines()[-lines:]:
            click.echo(render(line))
