"""`macha-logs`: the sidecar's journal, the audit logs, and orchestrator.log.

The files quote alert, journal and model text, so what reaches the terminal is made inert:
text mode escapes every field it shows, and --json prints each record as ASCII JSON.
A log that does not exist yet is an empty log (exit 0), not an error. Retention rotates
the logs by rename (`log.1`, `log.2`, …): the last lines are read across the rotated
files, and --follow moves on to the new file when the name moves.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import click

from macha_obs import __version__
from macha_obs.cli.common import (
    HELP,
    config_options,
    load_config,
)
from macha_obs.cli.errors import EXIT_FAILED, Command
from macha_obs.statedir import StateDir
from macha_obs.terminal import inert

# ---------------------------------------------------------------- macha-logs

LOG_KINDS = ("service", "decisions", "actions", "orchestrator")


def log_path(state: StateDir, kind: str) -> Path:
    return {
        "decisions": state.decisions_log,
        "actions": state.actions_log,
        "orchestrator": state.orchestrator_log,
    }[kind]


_POLL_SECONDS = 0.5


def _record(line: str) -> dict[str, Any] | None:
    try:
        rec = json.loads(line)
    except ValueError:  # a torn or foreign line
        return None
    return rec if isinstance(rec, dict) else None


def _format_audit(line: str) -> str:
    """One JSONL audit record as a line a person reads."""
    rec = _record(line)
    if rec is None:
        return inert(line.rstrip("\n"))
    head = f"{inert(rec.pop('ts', '-'))} {inert(rec.pop('event', '-')):<12}"
    incident = rec.pop("incident_id", None)
    bits = [f"incident={inert(incident)}"] if incident else []
    for key in ("label", "outcome", "risk", "status", "reason", "assessment", "summary"):
        if rec.get(key) not in (None, ""):
            bits.append(f"{key}={inert(rec[key])}")
    if "action" in rec and "label" not in rec and isinstance(rec["action"], dict):
        action = f"{rec['action'].get('kind')} {rec['action'].get('unit', '')}".rstrip()
        bits.append(f"action={inert(action)}")
    return f"{head} {' '.join(bits)}"


def _format_log(line: str) -> str:
    """One orchestrator.log record (daemon.JsonLinesFormatter) as a line a person reads."""
    rec = _record(line)
    if rec is None or "message" not in rec:
        return inert(line.rstrip("\n"))
    text = (
        f"{inert(rec.get('ts', '-'))} {inert(rec.get('level', '-')):<7} "
        f"{inert(rec.get('logger', '-'))}: {inert(rec['message'])}"
    )
    if rec.get("exception"):
        text += f" | {inert(rec['exception'])}"
    return text


def _as_json(line: str) -> str:
    """The record as it is when it is plain ASCII JSON already (what the sidecar writes);
    else re-encoded as ASCII JSON, or, not being JSON at all, escaped."""
    raw = line.rstrip("\n")
    if raw.isascii() and raw.isprintable():
        return raw
    try:
        return json.dumps(json.loads(raw), ensure_ascii=True)
    except ValueError:
        return inert(raw)


def _open(path: Path) -> IO[str]:
    """The log, never through a symlink nor from a FIFO someone planted in the state dir."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        why = "a symlink, refused" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise click.ClickException(f"cannot read {inert(path)}: {inert(why)}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise click.ClickException(f"cannot read {inert(path)}: not a regular file")
    # only \n ends a record: a \r inside one is data, shown escaped, not a new line
    return os.fdopen(fd, errors="replace", newline="\n")


def _last_lines(fh: IO[str], last: int) -> list[str]:
    try:
        return fh.readlines()[-last:]
    except OSError as exc:
        raise click.ClickException(
            f"cannot read {inert(fh.name)}: {inert(exc.strerror or exc)}"
        ) from exc


def _history_lines(
    state: StateDir, path: Path, last: int, *, older_only: bool = False
) -> list[str]:
    """The last `last` lines of the log and, when it holds fewer, of its rotated files."""
    shown: list[str] = []
    for older in reversed(state.history(path)[: -1 if older_only else None]):
        if len(shown) >= last or not os.path.lexists(older):
            continue
        with _open(older) as fh:
            shown = _last_lines(fh, last - len(shown)) + shown
    return shown


def _follow(state: StateDir, path: Path, last: int, render: Callable[[str], str]) -> None:
    """The last lines, then every new one, until Ctrl-C; waits for a file not there yet."""
    try:
        if not os.path.lexists(path):
            click.echo(f"waiting for {inert(path)} to appear", err=True)
        while not os.path.lexists(path):
            time.sleep(_POLL_SECONDS)
        fh = _open(path)
        shown = _last_lines(fh, last)  # leaves fh at the end, where following starts
        if len(shown) < last:
            shown = _history_lines(state, path, last - len(shown), older_only=True) + shown
        for line in shown:
            click.echo(render(line))
        while True:
            for line in _new_lines(fh, path):
                click.echo(render(line))
            fh.close()  # rotated: the rest of the old file was read, on to the new one
            while not os.path.lexists(path):
                time.sleep(_POLL_SECONDS)
            fh = _open(path)
    except KeyboardInterrupt:  # the way to stop following: not a failure
        return


def _rotated(fh: IO[str], path: Path) -> bool:
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return True
    mine = os.fstat(fh.fileno())
    return (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino)


def _new_lines(fh: IO[str], path: Path) -> Iterator[str]:
    """New whole lines until the file is rotated away and fully read."""
    pending = ""
    while True:
        chunk = fh.readline()
        if not chunk:
            if _rotated(fh, path):
                chunk = fh.readline()  # written just before the rename
                if not chunk:
                    return
            else:
                time.sleep(_POLL_SECONDS)
                continue
        pending += chunk
        if pending.endswith("\n"):  # a line still being written waits for its end
            yield pending
            pending = ""


def _journal(journal_dir: Path | None, lines: int, as_json: bool, follow: bool) -> int:
    """The sidecar's unit in the journal the sidecar itself reads (`journal_dir`)."""
    argv = ["journalctl", "--no-pager", "-u", "macha-autonomous.service", "-n", str(lines)]
    argv += [f"--directory={journal_dir}"] if journal_dir is not None else []
    argv += ["-o", "json"] if as_json else []
    argv += ["-f"] if follow else []
    try:
        returncode = subprocess.call(argv)
    except OSError as exc:
        raise click.ClickException(f"cannot run journalctl: {exc}") from exc
    except KeyboardInterrupt:
        return 0
    return 0 if returncode == 0 else EXIT_FAILED


@click.command(cls=Command, context_settings=HELP)
@click.version_option(__version__, prog_name="macha-logs")
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
        click.get_current_context().exit(_journal(cfg.journal_dir, lines, as_json, follow))
    state = StateDir(cfg.state_dir)
    path = log_path(state, kind)

    def render(line: str) -> str:
        if as_json:
            return _as_json(line)
        return _format_log(line) if kind == "orchestrator" else _format_audit(line)

    if follow:
        _follow(state, path, lines, render)
        return
    if not os.path.lexists(path):
        click.echo(f"nothing logged yet ({inert(path)} does not exist)", err=True)
        return
    for line in _history_lines(state, path, lines):
        click.echo(render(line))
