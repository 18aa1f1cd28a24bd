"""`macha-obs posture`: the host's posture as the sidecar sees it; `posture accept`: a
person accepts the listeners, enabled units and setuid/setgid files there are now.

The view reads the newest snapshot the daemon wrote in the state dir (read-only; it never
creates the dir); with no snapshot, or `--live`, it runs the cheap posture readings here
and now (authentication failures are then unknown: only the daemon counts them, from its
journal read). One section per posture reading the snapshot holds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click
from pydantic import BaseModel

from macha_obs.cli.common import Group, ctx_config, who
from macha_obs.collect.intrusion import AuthFailureTap, IntrusionCollector
from macha_obs.collect.posture import (
    BaselineError,
    SetidScanner,
    fetch_posture,
    load_baseline,
    save_baseline,
)
from macha_obs.collect.snapshots import latest_snapshot
from macha_obs.config import Config
from macha_obs.errors import UsageError
from macha_obs.models import (
    AUTH_SERVICES,
    BackupsReading,
    ExposureReading,
    IntrusionReading,
    PostureBaseline,
    PostureNow,
    posture_diff,
)
from macha_obs.statedir import StateDir
from macha_obs.systemd.bus import IsolatedBus
from macha_obs.terminal import inert

# The Snapshot's posture readings, in the order the view shows them (a field a build
# does not have yet is skipped).
POSTURE_FIELDS = ("exposure", "intrusion", "backups")
SHOWN = 20  # items listed per kind; the rest are counted


def _utc(epoch: float) -> str:
    return f"{datetime.fromtimestamp(epoch, UTC):%Y-%m-%d %H:%M:%S} UTC"


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _listed(title: str, items: list[str]) -> list[str]:
    lines = [f"  {title}: {len(items)}"]
    lines += [f"    {inert(item)}" for item in items[:SHOWN]]
    if len(items) > SHOWN:
        lines.append(f"    ... and {len(items) - SHOWN} more")
    return lines


def intrusion_lines(r: IntrusionReading, now: float, live: bool) -> list[str]:
    lines = ["intrusion signs"]
    if live:
        lines.append("  auth failures: not counted live (the daemon counts them as it reads)")
    else:
        window = _age(r.auth_window_seconds)
        total, recent = r.auth_failures_total, r.auth_failures_window
        counts = ", ".join(
            f"{s} {total.get(s, 0)} ({recent.get(s, 0)} in {window})" for s in AUTH_SERVICES
        )
        lines.append(f"  auth failures since the sidecar started: {counts}")
    if r.baseline_error:
        lines.append(f"  baseline: UNREADABLE: {inert(r.baseline_error)}")
    if r.baseline_at is None:
        if not r.baseline_error:
            lines.append("  baseline: no baseline (`macha-obs posture accept` makes one)")
        lines.append(f"  listening sockets now: {r.listeners}")
        return lines
    lines.append(f"  baseline: accepted {_utc(r.baseline_at)} ({_age(now - r.baseline_at)} ago)")
    lines.append(f"  listening sockets now: {r.listeners}")
    listeners = [x.key + (f" ({x.unit})" if x.unit else "") for x in r.unaccepted_listeners or []]
    lines += _listed("unaccepted listeners", listeners)
    if r.units_error:
        lines.append(f"  enabled units: unknown ({inert(r.units_error)})")
    lines += _listed("newly enabled units", list(r.new_enabled_units or []))
    lines += _listed("new setuid/setgid files", list(r.new_setid_files or []))
    return lines


def generic_lines(name: str, reading: BaseModel) -> list[str]:
    """A reading this view has no layout for yet: its fields, one per line."""
    lines = [name]
    for key, value in reading.model_dump(mode="json").items():
        text = json.dumps(value, ensure_ascii=True)
        lines.append(f"  {key}: {inert(text if len(text) <= 200 else text[:199] + '…')}")
    return lines


def exposure_lines(r: BaseModel) -> list[str]:
    """systemd-analyze security's scores, worst first."""
    if not isinstance(r, ExposureReading):
        return generic_lines("exposure", r)
    lines = [
        f"exposure (systemd-analyze security, run {_utc(r.ran_at)}, {r.duration_seconds:.1f}s)"
    ]
    units = sorted(r.units, key=lambda u: (u.score is None, -(u.score or 0.0), u.unit))
    for u in units[:SHOWN]:
        if u.score is None:
            lines.append(f"  {inert(u.unit):<32} no score: {inert(u.error)}")
            continue
        beyond = "  listens beyond loopback" if u.listening_non_loopback else ""
        lines.append(f"  {inert(u.unit):<32} {u.score:4.1f} {u.level:<8} {u.unsafe} unsafe{beyond}")
    if len(units) > SHOWN:
        lines.append(f"  ... and {len(units) - SHOWN} more")
    if r.skipped:
        lines.append(f"  not scored this run: {len(r.skipped)}")
    return lines


def backups_lines(r: BackupsReading, now: float) -> list[str]:
    """Each backup unit: when it last succeeded, how often it should, whether it is late."""
    lines = [f"backups (late after their interval plus {_age(r.grace_seconds)})"]
    if not r.units:
        lines.append("  no unit matches backup_units")
    for u in sorted(r.units, key=lambda u: (not u.stale(now, r.grace_seconds), u.unit))[:SHOWN]:
        state = "LATE" if u.stale(now, r.grace_seconds) else "ok"
        if u.last_success is None:
            last = f"never seen succeed (watched {_age(now - u.first_seen)})"
        else:
            last = f"last success {_age(now - u.last_success)} ago"
        every = f"every {_age(u.expected_interval_seconds)} ({u.interval_source.value})"
        run = "  running now" if u.running else ""
        if u.last_run_success is False:
            run += f"  last run FAILED ({inert(u.result or 'failed')})"
        lines.append(f"  {inert(u.unit):<32} {state:<4} {last}, {every}{run}")
    if len(r.units) > SHOWN:
        lines.append(f"  ... and {len(r.units) - SHOWN} more")
    return lines


# a posture reading's own layout, by Snapshot field; the others get generic_lines
RENDERERS: dict[str, Callable[[BaseModel], list[str]]] = {"exposure": exposure_lines}


def _unit_files(cfg: Config) -> IsolatedBus:
    return IsolatedBus(cfg.systemd_bus_address, timeout=cfg.dbus_timeout)


def live_intrusion(cfg: Config) -> IntrusionReading:
    """The posture read here and now against the baseline (no auth failure counts)."""
    bus = _unit_files(cfg)
    try:
        collector = IntrusionCollector(
            AuthFailureTap(),
            state_dir=cfg.state_dir,
            unit_files=bus,
            setid_dirs=cfg.posture_setid_dirs,
        )
        reading, _ = collector.collect()
    finally:
        bus.close()
    return reading


def gather(cfg: Config, live: bool) -> dict[str, Any]:
    """{"source", "taken_at", <posture field>: reading} from the snapshot or a live run."""
    snapshot = None if live else latest_snapshot(cfg.state_dir)
    if snapshot is None:
        return {"source": "live", "taken_at": time.time(), "intrusion": live_intrusion(cfg)}
    found: dict[str, Any] = {"source": "snapshot", "taken_at": snapshot.taken_at}
    for name in POSTURE_FIELDS:
        reading = getattr(snapshot, name, None)
        if reading is not None:
            found[name] = reading
    return found


def render_text(found: dict[str, Any], now: float) -> str:
    live = found["source"] == "live"
    where = "read live now" if live else f"from the snapshot of {_utc(found['taken_at'])}"
    lines = [f"posture ({where})"]
    for name in POSTURE_FIELDS:
        reading = found.get(name)
        if reading is None:
            continue
        if isinstance(reading, IntrusionReading):
            lines += intrusion_lines(reading, now, live)
        elif isinstance(reading, BackupsReading):
            lines += backups_lines(reading, now)
        elif (render := RENDERERS.get(name)) is not None:
            lines += render(reading)
        else:
            lines += generic_lines(name, reading)
    if len(lines) == 1:
        lines.append("  no posture readings in the snapshot (the collectors failed or did not run)")
    return "\n".join(lines)


def render_json(found: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"source": found["source"], "taken_at": found["taken_at"]}
    for name in POSTURE_FIELDS:
        if (reading := found.get(name)) is not None:
            out[name] = reading.model_dump(mode="json")
    if found["source"] == "live" and "intrusion" in out:
        out["intrusion"]["auth_failures_total"] = None  # unknown, not zero
        out["intrusion"]["auth_failures_window"] = None
    return out


@click.group("posture", invoke_without_command=True, cls=Group)
@click.option("--json", "as_json", is_flag=True, help="The same, as JSON.")
@click.option(
    "--live",
    is_flag=True,
    help="Read listeners, enabled units and setid files now instead of the newest snapshot.",
)
@click.pass_context
def posture_group(ctx: click.Context, as_json: bool, live: bool) -> None:
    """The host's posture: auth failures, listeners, units and setid files not in the
    accepted baseline (and the other posture readings the snapshot holds).

    Reads the newest snapshot in the state dir (read-only); without one, or with --live,
    reads the posture here and now (auth failures are counted by the daemon only)."""
    if ctx.invoked_subcommand is not None:
        return
    cfg = ctx_config(ctx)
    found = gather(cfg, live)
    if as_json:
        click.echo(json.dumps(render_json(found), indent=2, ensure_ascii=True))
    else:
        click.echo(render_text(found, time.time()))


def _changes(old: PostureBaseline | None, now: PostureNow) -> list[str]:
    if old is None:
        return []
    diff = posture_diff(old, now)
    lines = [f"new since the baseline of {_utc(old.accepted_at)}:"]
    lines += _listed("listeners", [x.key for x in diff.listeners])
    lines += _listed("enabled units", diff.enabled_units or [])
    lines += _listed("setuid/setgid files", diff.setid_files)
    return lines


def _confirmed() -> bool:
    try:
        return click.confirm("accept this?", default=False)
    except click.Abort:  # no one to answer (stdin closed), or Ctrl-C: nothing is accepted
        click.echo()
        return False


@posture_group.command("accept")
@click.option("--yes", is_flag=True, help="Accept without asking.")
@click.pass_context
def posture_accept(ctx: click.Context, yes: bool) -> None:
    """Accept the listening sockets, enabled units and setuid/setgid files there are now
    as this host's posture: from now on, only what is new counts as an intrusion sign.
    Run as root (it reads every socket's owner) or as the state dir's owner."""
    cfg = ctx_config(ctx, as_owner=False)  # read as root: every socket's owner is visible
    if not cfg.state_dir.is_dir():
        raise UsageError(f"no state dir at {cfg.state_dir}: start the sidecar first (it makes it)")
    bus = _unit_files(cfg)
    try:
        now = fetch_posture(bus, SetidScanner(cfg.posture_setid_dirs), owners=True)
    finally:
        bus.close()
    cfg = ctx_config(ctx)  # the state dir's owner from here on
    state = StateDir(cfg.state_dir)
    state.check()
    try:
        old = load_baseline(state.root)
    except BaselineError as exc:
        click.echo(f"note: the current baseline is unreadable: {inert(str(exc))}", err=True)
        old = None
    baseline = PostureBaseline(
        accepted_at=time.time(),
        accepted_by=who()[:64],
        listeners=now.listeners,
        enabled_units=now.enabled_units,
        setid_files=now.setid_files,
    )
    listeners = [x.key + (f" ({x.unit})" if x.unit else "") for x in now.listeners]
    lines = ["to accept as this host's posture:"]
    lines += _listed("listening sockets", listeners)
    if now.enabled_units is None:
        lines.append(f"  enabled units: none accepted (the bus did not answer: {now.units_error})")
    else:
        lines.append(f"  enabled units: {len(now.enabled_units)}")
    lines += _listed("setuid/setgid files", now.setid_files)
    lines += _changes(old, now)
    click.echo("\n".join(lines))
    if not yes and not _confirmed():
        click.echo("nothing accepted")
        return
    path = save_baseline(state.root, baseline)
    click.echo(f"accepted by {inert(baseline.accepted_by)}, written to {inert(str(path))}")
