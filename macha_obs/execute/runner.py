"""The process seam: argv lists only, never a shell (DESIGN.md invariant 1)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from macha_obs.errors import RunnerError

OUTPUT_LIMIT = 16_384


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    output: str


class Runner(Protocol):
    def __call__(self, argv: Sequence[str], *, timeout: float) -> Completed: ...


def truncate(text: str, limit: int = OUTPUT_LIMIT) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... truncated {len(text) - limit} characters]"


def subprocess_runner(argv: Sequence[str], *, timeout: float) -> Completed:
    """Run `argv` (a list, no shell) with stdout+stderr captured and truncated."""
    args = tuple(argv)
    if not args or not all(isinstance(a, str) and "\x00" not in a for a in args):
        raise RunnerError(f"refusing malformed argv {args!r}")
    try:
        proc = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise RunnerError(f"{args[0]}: not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise RunnerError(f"{args[0]}: no result within {timeout:g}s") from exc
    except OSError as exc:
        raise RunnerError(f"{args[0]}: {exc.strerror}") from exc
    return Completed(args, proc.returncode, truncate(proc.stdout.decode(errors="replace")))
