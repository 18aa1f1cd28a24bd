"""Chat clients for Ollama (`/api/chat`) and OpenAI-compatible servers, with JSON-schema
constrained output, bounded timeouts and retries only where a retry can help (connection
errors and 5xx; see llm_errors.py for the exception tree). The endpoint is trusted only
as configured (endpoint.py): its socket's owner, and an API key for OpenAI-compatible
servers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from macha_obs.agent.endpoint import (
    ApiKeyFileUnsafe,
    EndpointGuard,
    EndpointUntrusted,
    load_api_key,
)
from macha_obs.agent.llm_errors import (
    LlmError,
    LlmProtocolError,
    LlmServerError,
    LlmTimeout,
    LlmUnavailable,
    ModelMissing,
    retryable,
)
from macha_obs.agent.llm_stats import ERROR_KINDS, LlmMetrics
from macha_obs.config import Config

if TYPE_CHECKING:
    import requests

Message = Mapping[str, str]
# every outcome a chat can end in besides "ok", a fixed label set for the exporter
__all__ = [
    "ERROR_KINDS",
    "ApiKeyFileUnsafe",
    "ChatClient",
    "ChatReply",
    "EndpointUntrusted",
    "LlmError",
    "LlmMetrics",
    "LlmProtocolError",
    "LlmServerError",
    "LlmTimeout",
    "LlmUnavailable",
    "ModelMissing",
    "OllamaChat",
    "OpenAIChat",
    "client_from_config",
]


@dataclass(frozen=True)
class ChatReply:
    content: str
    tokens_in: int
    tokens_out: int
    duration_seconds: float
    finish_reason: str = ""


class ChatClient(Protocol):
    backend: str
    model: str

    def chat(self, messages: Sequence[Message], schema: Mapping[str, Any]) -> ChatReply: ...

    def check(self) -> None: ...


class _HttpChat:
    backend = "http"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        session: requests.Session | None = None,
        guard: EndpointGuard | None = None,
        connect_timeout: float = 3.0,
        read_timeout: float = 120.0,
        attempts: int = 3,
        max_tokens: int = 1000,
        seed: int | None = 0,
        temperature: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        metrics: LlmMetrics | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._session = session
        self._guard = guard
        self.timeout = (connect_timeout, read_timeout)
        self.attempts = attempts
        self.max_tokens = max_tokens
        self.seed = seed
        self.temperature = temperature
        self.sleep = sleep
        self.clock = clock
        self.metrics = metrics or LlmMetrics()

    @property
    def session(self) -> requests.Session:
        """The HTTP session, made (and guarded) at the first request: requests and
        urllib3 load then, not when the daemon starts (README, "Idle cost")."""
        if self._session is None:
            import requests

            self._session = requests.Session()
            if self._guard is not None:
                from macha_obs.agent.endpoint_http import guard_session

                guard_session(self._session, self._guard)
        return self._session

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=0.5, max=8),
            retry=retry_if_exception(retryable),
            sleep=self.sleep,
            reraise=True,
        )
        return retrying(self._request_once, method, path, body)

    def _headers(self) -> dict[str, str]:
        return {}

    def _request_once(self, method: str, path: str, body: Mapping[str, Any] | None) -> Any:
        import requests  # loaded with the session

        url = self.base_url + path
        headers = self._headers()
        try:
            resp = self.session.request(
                method, url, json=body, timeout=self.timeout, headers=headers or None
            )
        except requests.ReadTimeout as exc:
            raise LlmTimeout(f"{url}: no answer within {self.timeout[1]:g}s") from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise LlmUnavailable(f"{self.backend} server not reachable at {self.base_url}") from exc
        if resp.status_code >= 500:
            raise LlmServerError(f"{url}: HTTP {resp.status_code}: {_error_text(resp)}")
        if resp.status_code == 404 and "model" in _error_text(resp).lower():
            raise ModelMissing(self._missing_message(_error_text(resp)))
        if resp.status_code >= 400:
            raise LlmProtocolError(f"{url}: HTTP {resp.status_code}: {_error_text(resp)}")
        try:
            return resp.json()
        except ValueError as exc:
            raise LlmProtocolError(f"{url}: the answer is not JSON") from exc

    def _missing_message(self, detail: str) -> str:
        return f"model {self.model!r} is not available on {self.base_url}: {detail}"

    def chat(self, messages: Sequence[Message], schema: Mapping[str, Any]) -> ChatReply:
        start = self.clock()
        try:
            reply = self._chat(messages, schema, start)
        except LlmError as exc:
            self.metrics.observe(exc.kind, self.clock() - start)
            raise
        self.metrics.observe("ok", reply.duration_seconds, reply.tokens_in, reply.tokens_out)
        return reply

    def _chat(
        self, messages: Sequence[Message], schema: Mapping[str, Any], start: float
    ) -> ChatReply:
        raise NotImplementedError


class OllamaChat(_HttpChat):
    """Ollama's `/api/chat`, not streamed, `format` = the JSON schema."""

    backend = "ollama"

    def __init__(self, base_url: str, model: str, *, keep_alive: str = "30m", **kw: Any) -> None:
        super().__init__(base_url, model, **kw)
        self.keep_alive = keep_alive

    def check(self) -> None:
        """Raise LlmUnavailable if Ollama is down, ModelMissing if the model is not pulled."""
        names = self._model_names()
        if self.model not in names and f"{self.model}:latest" not in names:
            raise ModelMissing(
                f"model {self.model!r} is not pulled on {self.base_url} (have: "
                f"{', '.join(sorted(names)) or 'none'}); run `ollama pull {self.model}`"
            )

    def _model_names(self) -> set[str]:
        data = self._request("GET", "/api/tags")
        return {str(m.get("name", "")) for m in data.get("models", []) if isinstance(m, dict)}

    def _missing_message(self, detail: str) -> str:
        return (
            f"model {self.model!r} is not pulled on {self.base_url}: {detail}; "
            f"run `ollama pull {self.model}`"
        )

    def _chat(
        self, messages: Sequence[Message], schema: Mapping[str, Any], start: float
    ) -> ChatReply:
        options: dict[str, Any] = {"temperature": self.temperature, "num_predict": self.max_tokens}
        if self.seed is not None:
            options["seed"] = self.seed
        data = self._request(
            "POST",
            "/api/chat",
            {
                "model": self.model,
                "messages": list(messages),
                "stream": False,
                "format": dict(schema),
                "options": options,
                "keep_alive": self.keep_alive,
            },
        )
        message = data.get("message") if isinstance(data, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise LlmProtocolError("Ollama's answer has no message.content")
        return ChatReply(
            content=message["content"],
            tokens_in=int(data.get("prompt_eval_count") or 0),
            tokens_out=int(data.get("eval_count") or 0),
            duration_seconds=self.clock() - start,
            finish_reason=str(data.get("done_reason", "")),
        )


class OpenAIChat(_HttpChat):
    """`/v1/chat/completions` of an OpenAI-compatible server (llama.cpp, vLLM).

    `response_format="json_schema"` is OpenAI's standard form; `"json_object"` sends
    `{"type": "json_object", "schema": S}`, which llama-cpp-python's server needs (it
    answers the standard form with HTTP 500). With `api_key_file`, the key is read from it
    at each request and sent as a bearer token (ApiKeyFileUnsafe when the file is unsafe).
    """

    backend = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        response_format: Literal["json_schema", "json_object"] = "json_schema",
        api_key_file: Path | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(base_url, model, **kw)
        self.response_format = response_format
        self.api_key_file = api_key_file

    def _headers(self) -> dict[str, str]:
        if self.api_key_file is None:
            return {}
        return {"Authorization": f"Bearer {load_api_key(self.api_key_file)}"}

    def check(self) -> None:
        data = self._request("GET", "/v1/models")
        ids = {str(m.get("id", "")) for m in data.get("data", []) if isinstance(m, dict)}
        if self.model not in ids:
            raise ModelMissing(
                f"model {self.model!r} is not served by {self.base_url} (serves: "
                f"{', '.join(sorted(ids)) or 'none'})"
            )

    def _chat(
        self, messages: Sequence[Message], schema: Mapping[str, Any], start: float
    ) -> ChatReply:
        if self.response_format == "json_object":
            fmt: dict[str, Any] = {"type": "json_object", "schema": dict(schema)}
        else:
            fmt = {
                "type": "json_schema",
                "json_schema": {"name": "decision", "strict": True, "schema": dict(schema)},
            }
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "response_format": fmt,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        data = self._request("POST", "/v1/chat/completions", body)
        try:
            choice = data["choices"][0]
            content = choice["message"]["content"]
            usage = data.get("usage") or {}
        except (KeyError, IndexError, TypeError) as exc:
            raise LlmProtocolError("the answer has no choices[0].message.content") from exc
        if not isinstance(content, str):
            raise LlmProtocolError("choices[0].message.content is not text")
        return ChatReply(
            content=content,
            tokens_in=int(usage.get("prompt_tokens") or 0),
            tokens_out=int(usage.get("completion_tokens") or 0),
            duration_seconds=self.clock() - start,
            finish_reason=str(choice.get("finish_reason") or ""),
        )


def _error_text(resp: requests.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:300]
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict):
            err = err.get("message", err)
        return str(err)[:300]
    return str(data)[:300]


def client_from_config(
    config: Config,
    *,
    session: requests.Session | None = None,
    metrics: LlmMetrics | None = None,
    openai_response_format: Literal["json_schema", "json_object"] = "json_schema",
) -> ChatClient:
    """The configured client; `openai_response_format="json_object"` for llama.cpp.

    With `llm_endpoint_user`, every connection the client opens is checked first (on
    `session` too, when one is given): the server's socket must belong to that user.
    """
    guard = EndpointGuard(config.llm_endpoint_user) if config.llm_endpoint_user else None
    if session is not None and guard is not None:
        from macha_obs.agent.endpoint_http import guard_session

        guard_session(session, guard)
        guard = None  # guarded already
    common: dict[str, Any] = {
        "session": session,
        "guard": guard,
        "read_timeout": config.llm_timeout,
        "metrics": metrics,
    }
    if config.llm_backend == "ollama":
        return OllamaChat(
            config.ollama_url, config.model, keep_alive=config.llm_keep_alive, **common
        )
    return OpenAIChat(
        config.openai_url,
        config.model,
        response_format=openai_response_format,
        api_key_file=config.openai_api_key_file,
        **common,
    )
