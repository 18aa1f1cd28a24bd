"""Prompts rendered from template files and an explicit context: redacted, fenced, bounded.

Everything that came from the host or from Alertmanager (labels, annotations, journal
lines, tool output) is untrusted: secrets are redacted, control characters dropped, each
block is fenced with a nonce the data cannot know in advance, and the whole prompt is kept
within a token budget by dropping the oldest journal lines first. Pure: no I/O besides
reading the package's own templates.

Priority when the budget is tight (what is cut first comes last here):
1. the instructions, alerts, findings and unit status (each capped), never cut;
2. the newest journal lines, up to EVIDENCE_FLOOR tokens (or all of them if fewer);
3. past decisions about the same problems (agent/history.py), at most HISTORY_MAX
   tokens, best-known fixes first: cut before that minimum of evidence;
4. older journal lines, into whatever is left.
Past decisions are a person's words (rejection reasons) beside our counts: cleaned,
redacted and fenced like log text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from importlib import resources
from string import Template

from macha_obs.agent.redact import cut, redact, redact_lines
from macha_obs.models import Incident

__all__ = [
    "ACTION_CATALOGUE",
    "EVIDENCE_FLOOR",
    "HISTORY_MAX",
    "TOKEN_BUDGET",
    "TOOL_CATALOGUE",
    "Prompt",
    "PromptContext",
    "action_catalogue",
    "build_prompt",
    "clean_line",
    "clean_lines",
    "estimate_tokens",
    "fence",
    "redact",
    "suspicious",
    "system_message",
    "template",
]

TOKEN_BUDGET = 3000
# The newest evidence that past decisions never displace, and their own ceiling.
EVIDENCE_FLOOR = 600
HISTORY_MAX = 320
HISTORY_INTRO = "Past decisions on this host about the same problems (quoted: a person's words):"
LINE_MAX = 240
# Lines read before the oldest one kept, so a key block whose BEGIN line is just out of
# the window is still recognised as one (a PGP private key with subkeys runs ~100 lines).
BLOCK_LOOKBACK = 400

ACTION_CATALOGUE: dict[str, str] = {
    "restart_unit": "unit — restart a failed or misbehaving service",
    "start_unit": "unit — start a unit that is inactive",
    "reset_failed": "unit — clear systemd's failed state (start-limit-hit), then start it",
    "journal_vacuum": "(no fields) — shrink archived journal files",
    "nix_gc": "(no fields) — collect unreferenced nix store paths",
    "nix_rebuild": "mode (dry-build|test|switch|boot) — rebuild the configured system",
    "nix_rollback": "(no fields) — roll back to the previous system generation",
    "investigate": "tool, unit — run one read-only diagnostic (see the tools)",
    "config_change": (
        "path, diff — a change to one file of the NixOS configuration, for a human to "
        "review and apply: path relative to the configuration directory (one of: $files); "
        "diff a unified diff of that file alone ('--- a/PATH', '+++ b/PATH', then @@ hunks "
        "whose context lines match the file exactly)"
    ),
    "harden_unit": (
        "unit, setting, value — one hardening setting for a service, for a human to review "
        "and apply: setting and value only from the schema's lists (e.g. NoNewPrivileges "
        "yes, ProtectSystem strict|full, ProtectHome yes|read-only, PrivateTmp yes)"
    ),
}
# Without a configured directory there is nothing a diff could be checked against.
NO_CONFIG_CHANGE = "none can be proposed on this host (no NixOS configuration directory is set)"
CONFIG_FILES_SHOWN = 20
TOOL_CATALOGUE: dict[str, str] = {
    "unit_status": "unit — systemd's state of the unit",
    "journal_tail": "unit — the unit's last journal lines",
    "disk_usage": "(no fields) — filesystem usage",
    "top_processes": "(no fields) — the busiest processes by CPU and the largest by memory",
    "listening_sockets": "(no fields) — listening TCP/UDP sockets",
    "failed_units": "(no fields) — units in the failed state",
}

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_FENCE_WORD = re.compile(r"(?i)untrusted-data")

# Instructions hidden in data: recorded with the decision so an attempt is visible.
_SUSPICIOUS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("ignore-instructions", re.compile(r"(?i)\b(ignore|disregard|forget)\b.{0,40}\binstruction")),
    ("role-change", re.compile(r"(?i)\b(you are now|new instructions|system prompt)\b")),
    ("pipe-to-shell", re.compile(r"(?i)\b(curl|wget)\b[^|\n]*\|\s*(sudo\s+)?(ba|z|da)?sh\b")),
    ("stop-unit", re.compile(r"(?i)\b(stop|disable|mask|kill)\b.{0,20}\b(sshd?|networkd?|dbus)")),
    ("foreign-flake", re.compile(r"(?i)(nixos-rebuild|--flake|flake\s*=)")),
    ("self-approval", re.compile(r"(?i)\b(approve|approved|macha-approve|autonomy)\b")),
)


def _defuse(line: str) -> str:
    return _FENCE_WORD.sub("untrusted_data", _CONTROL.sub(" ", line)).rstrip()


def _bound(line: str) -> str:
    return line if len(line) <= LINE_MAX else line[: LINE_MAX - 1] + "…"


def clean_line(line: str) -> str:
    """One untrusted line: secrets redacted, control characters and fence words defused."""
    return _bound(redact(_defuse(line)))


def clean_lines(lines: Sequence[str]) -> list[str]:
    """The lines of one log, cleaned like `clean_line`; a key block spread over several
    lines is dropped whole (redact.redact_lines)."""
    return [_bound(x) for x in redact_lines([_defuse(x) for x in lines])]


def suspicious(text: str) -> list[str]:
    return [name for name, pattern in _SUSPICIOUS if pattern.search(text)]


def fence(label: str, lines: Sequence[str]) -> str:
    """Wrap untrusted lines; the nonce is derived from the content, so the content cannot
    contain its own closing marker (and fence words inside it were defused)."""
    body = "\n".join(lines) if lines else "(none)"
    nonce = hashlib.sha256(body.encode()).hexdigest()[:10]
    return f'<untrusted-data id="{nonce}" source="{label}">\n{body}\n</untrusted-data id="{nonce}">'


_WORD = re.compile(r"[A-Za-z]+")
_NOT_COUNTED = re.compile(r"[A-Za-z\s]+")


def estimate_tokens(text: str) -> int:
    """A conservative token count without the model's tokenizer.

    Measured against SmolLM2's tokenizer: log text with numbers, addresses and hex runs
    at 1-1.5 characters a token, prose at ~2.8, so characters/3 undercounted noisy logs by
    half. Here every digit, punctuation mark, non-ASCII character and newline counts as
    one token, a letter run of one or two as one each, a longer run as one per three;
    plus 5%. That was 1.04-1.44x the real count on every sample measured.
    """
    words = sum(len(w) if len(w) <= 2 else -(-len(w) // 3) for w in _WORD.findall(text))
    others = len(_NOT_COUNTED.sub("", text))
    return int((words + others + text.count("\n")) * 1.05) + 1


@cache
def template(name: str) -> Template:
    return Template(resources.files("macha_obs.agent").joinpath("templates", name).read_text())


@dataclass(frozen=True)
class PromptContext:
    incident: Incident
    hostname: str
    now: datetime
    unit_status: Mapping[str, str] = field(default_factory=dict)
    journals: Mapping[str, Sequence[str]] = field(default_factory=dict)
    steps_left: int = 1  # 1: the last step, no tools offered
    budget: int = TOKEN_BUDGET
    # the .nix files under nixos_config_dir (patches.config_files); none: no config_change
    config_files: Sequence[str] = ()
    # past decisions about the incident's problems, best first (agent/history.py)
    history: Sequence[str] = ()


@dataclass(frozen=True)
class Prompt:
    messages: list[dict[str, str]]
    tokens: int
    flags: list[str]  # suspicious patterns seen in the untrusted data ("source:pattern")

    @property
    def hash(self) -> str:
        joined = "\x1e".join(f"{m['role']}:{m['content']}" for m in self.messages)
        return hashlib.sha256(joined.encode()).hexdigest()


def system_message(
    hostname: str, now: datetime, steps_left: int, config_files: Sequence[str] = ()
) -> str:
    """The instructions; `config_files` are the files a config_change may name (none:
    the model is told that it cannot propose one)."""
    tools = ""
    if steps_left > 1:
        tools = template("tools.txt").substitute(
            steps=steps_left, tool_catalogue=_catalogue(TOOL_CATALOGUE)
        )
    return template("system.txt").substitute(
        hostname=clean_line(hostname),
        now=now.isoformat(timespec="seconds"),
        catalogue=_catalogue(action_catalogue(config_files)),
        tools=tools,
    )


def action_catalogue(config_files: Sequence[str]) -> dict[str, str]:
    """The actions as the model reads them, config_change told what it may name."""
    catalogue = dict(ACTION_CATALOGUE)
    shown = [clean_line(f) for f in config_files[:CONFIG_FILES_SHOWN]]
    if not shown:
        catalogue["config_change"] = NO_CONFIG_CHANGE
    else:
        more = len(config_files) - len(shown)
        files = ", ".join(shown) + (f" and {more} more" if more > 0 else "")
        catalogue["config_change"] = Template(catalogue["config_change"]).substitute(files=files)
    return catalogue


def _catalogue(table: Mapping[str, str]) -> str:
    return "\n".join(f"- {name}: {help_}" for name, help_ in table.items())


def build_prompt(ctx: PromptContext) -> Prompt:
    """The system and user messages for one incident, within `ctx.budget` tokens."""
    inc = ctx.incident
    system = system_message(ctx.hostname, ctx.now, ctx.steps_left, ctx.config_files)
    alert_lines = [_alert_line(a.status, a.labels, a.annotations) for a in inc.alerts[:20]]
    if len(inc.alerts) > 20:
        alert_lines.append(f"... and {len(inc.alerts) - 20} more alerts")
    finding_lines = [clean_line(f"{f.kind.value} {f.subject}: {f.summary}") for f in inc.findings]
    status_lines = [clean_line(f"{u}: {s}") for u, s in ctx.unit_status.items()]
    # every line costs at least two tokens: older lines than these could never fit
    keep = ctx.budget // 2
    journals = {
        u: clean_lines(list(lines)[-(keep + BLOCK_LOOKBACK) :])[-keep:] if keep else []
        for u, lines in ctx.journals.items()
    }
    history = [clean_line(x) for x in ctx.history]
    flags = _flags("alerts", alert_lines) + _flags("findings", finding_lines)
    for unit, lines in journals.items():
        flags += _flags(f"journal {unit}", lines)
    flags += _flags("history", history)

    def render(journal_lines: Mapping[str, Sequence[str]], history_lines: Sequence[str]) -> str:
        return template("incident.txt").substitute(
            incident_id=inc.id,
            source=inc.source,
            opened_at=inc.opened_at.isoformat(timespec="seconds"),
            units=", ".join(inc.units) or "none",
            alert_count=len(inc.alerts),
            firing_count=sum(1 for a in inc.alerts if a.firing),
            alerts=fence("alertmanager", alert_lines),
            finding_count=len(inc.findings),
            findings=fence("findings", finding_lines[:20]),
            status=fence("systemd", status_lines[:20]),
            journals="\n".join(fence(f"journal {u}", ls) for u, ls in journal_lines.items())
            or "(none)",
            history=_history_block(history_lines),
        )

    empty = dict.fromkeys(journals, ())
    fixed = estimate_tokens(system) + estimate_tokens(render(empty, ()))
    avail = max(ctx.budget - fixed, 0)
    evidence = sum(estimate_tokens(x) for lines in journals.values() for x in lines)
    history_allowed = min(HISTORY_MAX, avail - min(evidence, EVIDENCE_FLOOR))
    kept_history = _fit_history(history, history_allowed)
    if kept_history:
        avail -= estimate_tokens(render(empty, kept_history)) - estimate_tokens(render(empty, ()))
    kept = _fit_journals(journals, max(avail, 0))
    user = render(kept, kept_history)
    return Prompt(
        messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
        tokens=estimate_tokens(system) + estimate_tokens(user),
        flags=flags,
    )


def _alert_line(status: str, labels: Mapping[str, str], annotations: Mapping[str, str]) -> str:
    names = ("alertname", "severity", "unit", "name", "instance", "mountpoint")
    shown = {k: labels[k] for k in names if k in labels}
    text = " ".join(f"{k}={v}" for k, v in shown.items())
    summary = annotations.get("summary") or annotations.get("description") or ""
    # redacted before it is cut: a secret cut short would no longer look like one
    return clean_line(f"[{status}] {text} — {cut(summary, 160)}")


def _flags(source: str, lines: Sequence[str]) -> list[str]:
    found: dict[str, None] = {}
    for line in lines:
        for name in suspicious(line):
            found[f"{source}:{name}"] = None
    return list(found)


def _history_block(lines: Sequence[str]) -> str:
    """Nothing at all without past decisions: the prompt is then as it always was."""
    if not lines:
        return ""
    return f"\n{HISTORY_INTRO}\n{fence('decision history', lines)}\n"


def _fit_history(lines: Sequence[str], budget: int) -> list[str]:
    """The first (best) lines that fit in `budget` tokens with their fence and heading."""
    kept: list[str] = []
    used = estimate_tokens(_history_block(["x"])) - estimate_tokens("x")
    for line in lines:
        cost = estimate_tokens(line)
        if used + cost > budget:
            break
        kept.append(line)
        used += cost
    return kept


def _fit_journals(journals: Mapping[str, Sequence[str]], budget: int) -> dict[str, list[str]]:
    """Keep the newest lines of each unit within an equal share of `budget` tokens."""
    if not journals:
        return {}
    share = budget // len(journals)
    out: dict[str, list[str]] = {}
    for unit, lines in journals.items():
        kept: list[str] = []
        used = 0
        for line in reversed(lines):
            cost = estimate_tokens(line)
            if used + cost > share:
                break
            kept.append(line)
            used += cost
        out[unit] = kept[::-1]
    return out
