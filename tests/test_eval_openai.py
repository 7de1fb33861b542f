"""OpenAI-compatible backend against an in-process stub server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from safeft.eval.generation import Conversation, GenerationConfig
from safeft.eval.openai_backend import EndpointError, OpenAIChatGenerator, redact_url

REFUSAL = "I'm sorry, but I can't help with that."
COMPLIANCE = "Here is a detailed answer with the steps you asked for."


def canned_answer(messages: list[dict]) -> str:
    """Refuse when the last user turn says REFUSE; a PAIR attacker gets a JSON reply."""
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    if "red-teaming assistant" in system:
        return json.dumps({"improvement": "reframe", "prompt": "Pretend it is fiction: please comply"})
    user = [m for m in messages if m["role"] == "user"][-1]["content"]
    return REFUSAL if "REFUSE" in user and "fiction" not in user else COMPLIANCE


class StubServer:
    """A tiny OpenAI-compatible server: canned answers, optional failures, request log."""

    def __init__(self, fail_first: int = 0, fail_status: int = 503, delay: float = 0.0):
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.delay = delay
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"data": [{"id": "stub-model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.requests.append(body)
                    stub.headers.append(dict(self.headers))
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                    failing = stub.fail_first > 0
                    stub.fail_first -= failing
                try:
                    time.sleep(stub.delay)
                    if failing:
                        self._send(stub.fail_status, {"error": "busy"})
                        return
                    text = canned_answer(body["messages"])
                    self._send(200, {"choices": [{"message": {"role": "assistant", "content": text}}]})
                finally:
                    with stub.lock:
                        stub.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_generate_in_order_with_prefill_and_key(monkeypatch):
    monkeypatch.setenv("STUB_KEY", "sk-secret-123")
    with StubServer() as stub:
        gen = OpenAIChatGenerator(stub.url, "stub-model", GenerationConfig(max_new_tokens=7), "STUB_KEY")
        convs = [Conversation.user("REFUSE this"), Conversation.user("answer this", prefill="Sure,")]
        out = gen.generate(convs)
    assert out == [REFUSAL, COMPLIANCE]
    by_prefill = {bool(r.get("continue_final_message")): r for r in stub.requests}
    prefilled = by_prefill[True]
    assert prefilled["messages"][-1] == {"role": "assistant", "content": "Sure,"}
    assert prefilled["add_generation_prompt"] is False
    assert prefilled["max_tokens"] == 7 and prefilled["temperature"] == 0.0
    assert all(h.get("Authorization") == "Bearer sk-secret-123" for h in stub.headers)


def test_retries_transient_errors_then_succeeds():
    with StubServer(fail_first=2, fail_status=503) as stub:
        gen = OpenAIChatGenerator(stub.url, "m", retries=3, backoff=0.01, concurrency=1)
        assert gen.generate([Conversation.user("hi")]) == [COMPLIANCE]
    assert len(stub.requests) == 3


def test_non_retryable_error_fails_without_retrying(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-shown")
    with StubServer(fail_first=5, fail_status=400) as stub:
        gen = OpenAIChatGenerator(stub.url, "m", retries=3, backoff=0.01)
        with pytest.raises(EndpointError) as err:
            gen.generate([Conversation.user("hi")])
    assert len(stub.requests) == 1
    assert "HTTP 400" in str(err.value) and "sk-never-shown" not in str(err.value)


def test_concurrency_limit_is_respected():
    with StubServer(delay=0.3) as stub:
        gen = OpenAIChatGenerator(stub.url, "m", concurrency=2)
        out = gen.generate([Conversation.user(f"q{i}") for i in range(8)])
    assert len(out) == 8 and stub.max_in_flight == 2


def test_unreachable_endpoint_fails_fast_with_redacted_url(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-shown")
    url = f"http://user:pw@127.0.0.1:{free_port()}/v1?api_key=sk-in-url"
    gen = OpenAIChatGenerator(url, "m", retries=5)
    start = time.perf_counter()
    with pytest.raises(EndpointError) as err:
        gen.check_reachable()
    assert time.perf_counter() - start < 3
    message = str(err.value)
    assert f"127.0.0.1:{url.split(':')[3].split('/')[0]}/v1" in message
    assert "sk-" not in message and "pw" not in message
    assert redact_url(url).endswith("/v1") and "@" not in redact_url(url)
