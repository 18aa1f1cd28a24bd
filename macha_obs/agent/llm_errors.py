"""The LLM clients' exceptions.

LlmError
├── LlmUnavailable        cannot reach the server (refused, reset, connect timeout) — retried
│   └── LlmTimeout        connected, but no answer within the read timeout — not retried
├── ModelMissing          the server runs but has no such model (Ollama: not pulled)
├── LlmServerError        the server answered 5xx — retried
└── LlmProtocolError      an answer we cannot use (4xx, not JSON, no content)
"""

from __future__ import annotations

from macha_obs.errors import MachaError


class LlmError(MachaError):
    kind = "error"


class LlmUnavailable(LlmError):
    kind = "unavailable"


class LlmTimeout(LlmUnavailable):
    kind = "timeout"


class ModelMissing(LlmError):
    kind = "model_missing"


class LlmServerError(LlmError):
    kind = "server_error"


class LlmProtocolError(LlmError):
    kind = "protocol"


ERROR_KINDS = ("unavailable", "timeout", "model_missing", "server_error", "protocol")


def retryable(exc: BaseException) -> bool:
    """Only what a second attempt can fix: no connection, or the server failed (5xx)."""
    return isinstance(exc, LlmServerError) or (
        isinstance(exc, LlmUnavailable) and not isinstance(exc, LlmTimeout)
    )
