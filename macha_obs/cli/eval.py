"""`macha-obs eval`: score a model (or the runbooks) on the incident suite, on this host.

The suite (eval/*.toml, one case a file) runs against a throw-away lab systemd, real
Prometheus and Alertmanager and a fake NixOS that live in the source checkout's tests/;
so the command runs bench/eval.py from a checkout, with the config's llm settings (any
Ollama or OpenAI-compatible endpoint, `--model` to pick another), and says how long it
will take before it starts. It never touches this host's own units: everything happens
in the lab's namespaces. It needs root (the lab boots systemd in namespaces).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from macha_obs.cli.common import ctx_config
from macha_obs.config import Config

MODES = ("runbooks-only", "runbooks-first", "llm-first")


def checkout_of(start: Path) -> Path | None:
    """The source checkout this package runs from (bench/eval.py and eval/ beside it)."""
    for root in (start, *start.parents):
        if (root / "bench" / "eval.py").is_file() and (root / "eval").is_dir():
            return root
    return None


def bench_argv(
    cfg: Config,
    *,
    modes: str,
    cases: str,
    llm_cases: str,
    history: str,
    repeat: int,
    model: str | None,
    small_model: bool,
    extra: list[str],
) -> list[str]:
    """bench/eval.py's arguments: the suite's options, and the endpoint from the config
    (`model` overrides its model) unless the small model is asked for."""
    argv = ["--modes", modes, "--history", history, "--repeat", str(repeat)]
    if cases:
        argv += ["--cases", cases]
    if llm_cases:
        argv += ["--llm-cases", llm_cases]
    wants_model = any(m != "runbooks-only" for m in modes.split(",") if m)
    if wants_model and not small_model:
        url = cfg.openai_url if cfg.llm_backend == "openai" else cfg.ollama_url
        argv += ["--backend", cfg.llm_backend, "--url", url, "--model", model or cfg.model]
        if cfg.llm_backend == "openai":
            argv += ["--response-format", cfg.openai_response_format]
    return argv + extra


@click.command("eval")
@click.option(
    "--modes", default=",".join(MODES), show_default=True,
    help="comma-separated: runbooks-only, runbooks-first, llm-first",
)  # fmt: skip
@click.option("--cases", default="", help="case names (eval/NAME.toml), comma-separated")
@click.option("--llm-cases", default="", help="cases for the model modes (default: --cases)")
@click.option(
    "--history", type=click.Choice(["no", "yes", "both"]), default="both", show_default=True,
    help="with the operator's history (learned from a simulated operator), without, or both",
)  # fmt: skip
@click.option("--repeat", type=click.IntRange(1, 100), default=1, show_default=True)
@click.option("--model", default=None, help="the model to score (default: the config's)")
@click.option(
    "--small-model", is_flag=True,
    help="the bundled SmolLM2 via llama.cpp instead of the configured endpoint",
)  # fmt: skip
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="the report as JSON")
@click.option("--markdown", type=click.Path(path_type=Path), help="the tables as markdown")
@click.pass_context
def eval_command(  # noqa: PLR0917 - click passes each option
    ctx: click.Context,
    modes: str,
    cases: str,
    llm_cases: str,
    history: str,
    repeat: int,
    model: str | None,
    small_model: bool,
    json_path: Path | None,
    markdown: Path | None,
) -> None:
    """Score the runbooks and a model on the incident suite (eval/), in a lab.

    One table per mode: right actions, forbidden actions proposed, executable and
    executed, unnecessary actions on the no-fault controls, a person told when needed,
    seconds from the fault to the first right action, model calls and tokens.
    """
    for mode in modes.split(","):
        if mode and mode not in MODES:
            raise click.UsageError(f"unknown mode {mode!r}: one of {', '.join(MODES)}")
    root = checkout_of(Path(__file__).resolve())
    if root is None:
        raise click.UsageError(
            "macha-obs eval runs from a source checkout (bench/eval.py and eval/ are not "
            "installed with the package): clone the repository, run `./macha-dev test --co` "
            "once, then `.venv/bin/macha-obs eval` there"
        )
    cfg = ctx_config(ctx, as_owner=False)
    extra = [*(["--json", str(json_path)] if json_path else [])]
    extra += ["--markdown", str(markdown)] if markdown else []
    argv = bench_argv(
        cfg, modes=modes, cases=cases, llm_cases=llm_cases, history=history, repeat=repeat,
        model=model, small_model=small_model, extra=extra,
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(root / "bench" / "eval.py"), *argv], cwd=root, check=False
    )
    ctx.exit(done.returncode)
