"""`macha-obs pause` and `macha-obs resume`: the human steps in, and steps back out.

While a pause holds, nothing executes: what the policy would run is only recorded, and
what it would queue is still queued. Resuming has every open incident analysed again,
so a unit that failed during the pause is dealt with if it is still failed.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import click

from macha_obs.cli.common import ctx_config, open_store, who
from macha_obs.intake.incidents import IncidentStore
from macha_obs.remediate.pause import PauseBook
from macha_obs.terminal import inert

_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# each unit at most once, largest first, like Go's and Prometheus's durations: 1d2h30m15s
_DURATION = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")
# a year: longer is no longer a pause, and every timestamp must stay printable
MAX_PAUSE = 366 * 86400


def parse_duration(text: str) -> int:
    """Seconds in `30m`, `2h`, `1h30m`, `90s`, `1d` or a bare `90` (seconds); ValueError
    for anything else, zero, or more than MAX_PAUSE."""
    value = text.strip().lower()
    if value.isascii() and value.isdigit():
        seconds = int(value)
    else:
        found = _DURATION.fullmatch(value)
        if not value or found is None:
            raise ValueError(f"{text!r} is not a duration (like 30m, 2h, 1h30m, 90s, 1d)")
        seconds = sum(
            int(n) * unit
            for n, unit in zip(found.groups(), _UNIT_SECONDS.values(), strict=True)
            if n
        )
    if seconds <= 0:
        raise ValueError(f"{text!r} is no time at all: a pause must last")
    if seconds > MAX_PAUSE:
        raise ValueError(
            f"{text!r} is more than {MAX_PAUSE // 86400}d;"
            " leave out --for to pause until `macha-obs resume`"
        )
    return seconds


def _duration_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    """--for through `parse_duration`: bad input is a usage error (exit 2)."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _utc(epoch: float) -> str:
    return f"{datetime.fromtimestamp(epoch, UTC):%Y-%m-%d %H:%M:%S} UTC"


@click.command("pause")
@click.option(
    "--for",
    "duration",
    metavar="DURATION",
    callback=_duration_option,
    help="How long: 30m, 2h, 1h30m, 90s, 1d (a bare number is seconds). Default: until resumed.",
)
@click.option("--reason", default="", help="Why, for the audit log and `macha-obs status`.")
@click.pass_context
def pause(ctx: click.Context, duration: int | None, reason: str) -> None:
    """Stop the sidecar from executing anything until `macha-obs resume` (or --for ends).

    It still watches, analyses, records what it would do and queues proposals; an
    approval given meanwhile is not carried out (the item stays pending).
    """
    cfg = ctx_config(ctx)
    with open_store(cfg) as store:
        book = PauseBook(store)
        now = store.clock()
        earlier = book.current(now)
        until = None if duration is None else now + duration
        paused = book.pause(until=until, reason=reason.strip(), by=who())
    if earlier is not None:
        click.echo(f"replaces the earlier pause ({inert(earlier.describe())})")
    click.echo(inert(paused.describe()))
    click.echo(
        "nothing executes meanwhile: findings are still analysed, proposals recorded or queued"
    )


@click.command("resume")
@click.pass_context
def resume(ctx: click.Context) -> None:
    """End a pause: open incidents are analysed again and fixed if policy allows."""
    cfg = ctx_config(ctx)
    with open_store(cfg) as store:
        now = store.clock()
        ended = PauseBook(store).resume(by=who())
        if ended is None:
            click.echo("not paused")
            return
        reopened = IncidentStore(store).reopen_all()
    if ended.until is not None and ended.until.timestamp() <= now:
        click.echo(f"the pause had already run out at {_utc(ended.until.timestamp())}")
    click.echo(f"resumed; {reopened} open incident(s) will be looked at again")
