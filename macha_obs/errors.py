"""One exception tree, one root: everything macha-obs raises on purpose is a MachaError.

Each room keeps its own errors beside the code that raises them (a ConfigError in
`config.py`, a PatchRefused in `patches.py`); they all derive from the root or
from one of the three bases below it, so a caller can catch a whole family, and the CLI
(`cli/errors.py`) turns any of them into one message a person can act on and an exit
code: 2 for a UsageError, 1 for every other. Nothing else maps errors to exit codes.
A message says what is wrong and, where there is one, what to do; it may quote
untrusted text, so whoever prints it makes it inert first (`terminal.inert`).

    MachaError
    ├── UsageError                      exit 2: change the config or the command, run again
    │   ├── config.ConfigError              a config file, MACHA_* value or flag (names the field)
    │   ├── units.RenderError               a --prefix the units' ExecStart= cannot carry
    │   ├── agent.report.PayloadError       `analyze` FILE is no Alertmanager v4 payload
    │   └── cli.mcp.McpTokenError           /mcp beyond loopback without a token
    ├── StateError                      the state dir cannot be used or trusted now
    │   ├── store.StateDirError             a state file is a symlink, a FIFO, someone else's
    │   ├── store.StoreError                the database cannot be opened or migrated
    │   ├── intake.pull.StoreUnusable       the pull takes nothing the store cannot keep
    │   └── daemon.AlreadyRunning           another daemon holds the state dir's lock
    ├── InvalidInput                    untrusted text refused whole, never salvaged
    │   ├── models.InvalidUnitName          (also a ValueError, for pydantic validators)
    │   ├── patches.PatchRefused            a proposed config diff the checks refuse
    │   ├── agent.schema.OutputInvalid      a model's answer that does not fit the schema
    │   ├── intake.pull_answer.AnswerRefused an Alertmanager answer past a bound, or no JSON
    │   └── mcp.facts.NotInRecord           a client named what the record does not hold
    ├── store.ApprovalError             an approval that cannot be acted on (not pending)
    ├── webhook_token.WebhookTokenError the token file is missing or unsafe (a ValueError)
    ├── agent.llm_errors.LlmError       the model did not answer usefully
    │   ├── LlmUnavailable ── LlmTimeout
    │   ├── ModelMissing, LlmServerError, LlmProtocolError
    │   └── agent.endpoint.EndpointUntrusted ── ApiKeyFileUnsafe
    ├── collect.base.CollectorError     a collector could not read its source
    │   └── collect.journal.CursorInvalid
    ├── ExecutorError                   an action could not be carried out (here: execute/
    │   ├── RefusedError, RunnerError       and systemd/ both raise them, and systemd/ is
    │   └── SystemdError ── TransientDBusError ── DBusTimeout    below execute/)
    ├── web.app.Refused                 a request the approvals page refuses (a page, a status)
    ├── install.InstallError            installing or uninstalling cannot go on
    └── rules.RulesError                the alert rules cannot be written

A stdlib base stays beside ours only where callers rely on it (pydantic turns a
ValueError raised in a validator into a ValidationError; the webhook token's callers
catch ValueError). Imports nothing of ours: every room may import it.
"""

from __future__ import annotations

__all__ = [
    "DBusTimeout",
    "ExecutorError",
    "InvalidInput",
    "MachaError",
    "RefusedError",
    "RunnerError",
    "StateError",
    "SystemdError",
    "TransientDBusError",
    "UsageError",
]


class MachaError(Exception):
    """The root: something macha-obs refuses or cannot do; the message is for a person."""


class UsageError(MachaError):
    """The configuration or the command line is wrong: change it and run again (exit 2)."""


class StateError(MachaError):
    """The state directory, or a file in it, cannot be used or trusted now."""


class InvalidInput(MachaError):
    """Untrusted input (a unit label, a model's answer, a diff) that breaks its contract:
    refused whole, never salvaged (DESIGN.md invariants 1 and 9)."""


class ExecutorError(MachaError):
    """An action could not be carried out."""


class RefusedError(ExecutorError):
    """Refused before any side effect (protected, not executable)."""


class RunnerError(ExecutorError):
    """A command could not be run to completion (missing binary, timeout)."""


class SystemdError(ExecutorError):
    """systemd refused or failed a request, or the bus failed."""


class TransientDBusError(SystemdError):
    """A D-Bus failure that may pass (no reply, disconnected): retried with backoff."""


class DBusTimeout(TransientDBusError):
    """A D-Bus call did not answer within our own bound."""
