"""Ollama's API (`/api/chat`, `/api/tags`, `/api/version`) over llama_cpp.Llama, for tests.

Nothing packaged for this machine serves Ollama's API with a JSON-schema `format` over a
local GGUF, so the real small model is put behind this shim to test `OllamaChat` end to
end. Run: python -m tests.harness.ollama_shim MODEL.gguf PORT NAME
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from llama_cpp import Llama, llama_grammar


def grammar_for(fmt: Any) -> Any:
    if not fmt:
        return None
    text = json.dumps(fmt) if fmt != "json" else None
    gbnf = llama_grammar.JSON_GBNF if text is None else llama_grammar.json_schema_to_gbnf(text)
    # the stock `char` rule admits raw control characters, which strict JSON rejects
    gbnf = gbnf.replace('char ::= [^"\\\\] |', 'char ::= [^"\\\\\\x00-\\x1F] |')
    return llama_grammar.LlamaGrammar.from_string(gbnf, verbose=False)


def main() -> None:
    model_path, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    llm = Llama(model_path=model_path, n_ctx=4096, n_threads=2, verbose=False)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def send(self, obj: Any, status: int = 200) -> None:
            data = (json.dumps(obj) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/api/tags":
                model = {"name": name, "model": name, "size": 98362432, "details": {}}
                self.send({"models": [model]})
            elif self.path == "/api/version":
                self.send({"version": "0.0.0-shim"})
            else:
                self.send({"error": "404 page not found"}, 404)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            if self.path != "/api/chat":
                self.send({"error": "404 page not found"}, 404)
                return
            if body.get("model") != name:
                self.send(
                    {"error": f'model "{body.get("model")}" not found, try pulling it first'}, 404
                )
                return
            opts = body.get("options") or {}
            start = time.perf_counter()
            with lock:
                out: Any = llm.create_chat_completion(
                    messages=body.get("messages", []),
                    grammar=grammar_for(body.get("format")),
                    temperature=opts.get("temperature", 0.8),
                    seed=opts.get("seed"),
                    max_tokens=opts.get("num_predict", 1024),
                )
            took = int((time.perf_counter() - start) * 1e9)
            self.send(
                {
                    "model": name,
                    "created_at": datetime.now(UTC).isoformat(),
                    "message": {
                        "role": "assistant",
                        "content": out["choices"][0]["message"]["content"],
                    },
                    "done": True,
                    "done_reason": out["choices"][0]["finish_reason"],
                    "total_duration": took,
                    "prompt_eval_count": out["usage"]["prompt_tokens"],
                    "eval_count": out["usage"]["completion_tokens"],
                }
            )

        def log_message(self, *args: Any) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
