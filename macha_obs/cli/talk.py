"""What `macha-obs mcp`, `ask` and `macha-approve discuss` share: the read-only tools
and the desk over one Remediator, the configured model, and how an answer is shown
(a progress line while the model works; Ctrl-C leaves with nothing done)."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import click

import macha_obs
from macha_obs.agent.conversation import Answer, Fact
from macha_obs.agent.llm import ChatClient, client_from_config
from macha_obs.cli.wiring import remediator
from macha_obs.collect.snapshots import latest_snapshot
from macha_obs.config import AnalysisMode, Config
from macha_obs.execute.dispatch import HostExecutor
from macha_obs.mcp.desk import Desk
from macha_obs.mcp.facts import Facts, LinkOf
from macha_obs.models import Approval, Snapshot
from macha_obs.store import Store
from macha_obs.terminal import inert
from macha_obs.web import Links, base_url

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130
FACT_PREVIEW = 300


def runbooks_dir() -> Path | None:
    """docs/runbooks/ beside the package (a checkout or an install that ships it)."""
    found = Path(macha_obs.__file__).resolve().parents[1] / "docs" / "runbooks"
    return found if found.is_dir() else None


def page_links(cfg: Config) -> LinkOf:
    """Each pending item's approvals-page link. It carries no capability: the page asks
    whoever opens it to log in with the token (README, "Who can approve")."""
    links = Links(base_url(cfg.external_url, cfg.listen_host, cfg.listen_port, cfg.hostname))

    def link_of(item: Approval) -> str | None:
        return links.item(item)

    return link_of


def parts(
    cfg: Config,
    store: Store,
    executor: HostExecutor,
    *,
    snapshot: Callable[[], Snapshot | None],
    link_of: LinkOf,
) -> tuple[Facts, Desk]:
    """The read-only tools and the changing calls, over one Remediator."""
    desk_remediator = remediator(cfg, store, executor)
    facts = Facts(
        cfg,
        store,
        desk_remediator,
        snapshot=snapshot,
        diagnostics=executor.diagnostics,
        link_of=link_of,
    )
    return facts, Desk(facts, desk_remediator, store.audit)


def local_parts(cfg: Config, store: Store, executor: HostExecutor) -> tuple[Facts, Desk]:
    """The parts for a command beside the daemon: the snapshot from the state dir."""
    return parts(
        cfg,
        store,
        executor,
        snapshot=lambda: latest_snapshot(cfg.state_dir),
        link_of=page_links(cfg),
    )


def chat_client(cfg: Config) -> ChatClient | None:
    """The configured model, as the analysis uses it; None when it is off."""
    if not cfg.llm_enabled or cfg.analysis is AnalysisMode.RUNBOOKS_ONLY:
        return None
    return client_from_config(cfg, openai_response_format=cfg.openai_response_format)


def with_progress(work: Callable[[], Answer], *, model: str, quiet: bool) -> Answer:
    """Run the model call in a thread; a progress line on stderr while it runs. Ctrl-C
    leaves at once (the thread is a daemon: nothing waits for it, nothing was done)."""
    done: list[Answer] = []
    thread = threading.Thread(target=lambda: done.append(work()), daemon=True, name="ask")
    started = time.monotonic()
    thread.start()
    tty = sys.stderr.isatty()
    if not quiet:
        click.echo(f"asking the model ({inert(model)})…", err=True)
    try:
        while thread.is_alive():
            thread.join(1.0)
            if thread.is_alive() and tty and not quiet:
                click.echo(f"\r  working: {time.monotonic() - started:.0f}s", err=True, nl=False)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: nothing was done", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if tty and not quiet:
        click.echo("", err=True)
    return done[0]


def print_answer(reply: Answer, facts: Sequence[Fact]) -> None:
    """The answer, or why there is none and the facts themselves; what was used."""
    if reply.text is not None:
        click.echo(f"answer: {inert(reply.text)}")
    else:
        click.echo(f"no answer: {inert(reply.error)}")
        click.echo("the facts gathered:")
        for fact in facts:
            data = json.dumps(fact.data, ensure_ascii=True, default=str)
            if len(data) > FACT_PREVIEW:
                data = data[: FACT_PREVIEW - 1] + "…"
            click.echo(f"  [{inert(fact.cite)}] {inert(data)}")
    click.echo(f"cited: {', '.join(inert(c) for c in reply.cited) or '-'}")
    if reply.used:
        click.echo(f"the model used: {', '.join(inert(c) for c in reply.used)}")
    if reply.text is not None:
        click.echo(
            f"(model: {reply.seconds:.1f}s, {reply.tokens_in} tokens in, "
            f"{reply.tokens_out} out; nothing was done)"
        )


def answer_json(reply: Answer, facts: Sequence[Fact]) -> str:
    shown = reply.to_json() | {"facts": [{"cite": f.cite, "data": f.data} for f in facts]}
    return json.dumps(shown, indent=2, ensure_ascii=True, default=str)
