"""Generation through an OpenAI-compatible chat endpoint (a vLLM / llama.cpp server, or a hosted API).

``POST {base_url}/chat/completions`` with ``{"model", "messages", "max_tokens", "temperature"}``
through :class:`safeft.eval.http_client.ChatClient`, which owns the transport rules: the key comes
from the environment variable named by ``api_key_env`` (default ``OPENAI_API_KEY``; none is sent
when it is unset), redirects are refused (the key never follows one), retries with exponential
back-off on 408/409/425/429/5xx, timeouts and broken replies, and URLs in messages are redacted.

* Concurrency: at most ``concurrency`` requests in flight (a thread pool).
* Fail fast: :meth:`check_reachable` probes ``GET {base_url}/models`` once with a short timeout
  before any work, so an unreachable server is reported in seconds, not after every retry.
* A reply whose content is ``null`` (or missing) is an :class:`EndpointError`: it is never turned
  into an empty answer, so it is never cached nor judged.
* Prefill: a conversation with a prefill sends it as a final assistant message with
  ``continue_final_message: true, add_generation_prompt: false`` (the vLLM extension); servers
  that ignore these fields treat the prefill as a finished assistant turn.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from safeft.eval.generation import Conversation, GenerationConfig, cut_at_stop
from safeft.eval.http_client import ChatClient, EndpointError, public_url

log = logging.getLogger(__name__)

__all__ = ["EndpointError", "OpenAIChatGenerator", "redact_url"]

#: ``url`` without user-info, query string or fragment
redact_url = public_url


@dataclass
class OpenAIChatGenerator:
    base_url: str
    model: str
    config: GenerationConfig = field(default_factory=GenerationConfig)
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60.0
    retries: int = 3
    concurrency: int = 4
    backoff: float = 0.5
    what: str = "--endpoint"

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        if self.concurrency < 1:
            raise ValueError(f"{self.what}: concurrency must be >= 1, got {self.concurrency}")
        self.client = ChatClient(
            self.base_url,
            api_key_env=self.api_key_env or None,
            timeout=self.timeout,
            retries=self.retries,
            backoff=self.backoff,
            what=self.what,
        )

    # -- identity ------------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        return hashlib.sha256(f"openai|{redact_url(self.base_url)}|{self.model}".encode()).hexdigest()[:16]

    def check_reachable(self, timeout: float = 5.0) -> None:
        """One quick ``GET /models``; any HTTP answer but a redirect proves the server is up."""
        self.client.check_reachable(timeout)

    def complete(self, conversation: Conversation) -> str:
        """One chat completion: the continuation text (prefill not included)."""
        cfg = self.config
        messages = list(conversation.messages)
        payload: dict = {
            "model": self.model,
            "messages": messages,
            "max_tokens": cfg.max_new_tokens,
            "temperature": cfg.temperature if cfg.do_sample else 0.0,
        }
        if cfg.do_sample:
            payload.update(top_p=cfg.top_p, seed=cfg.seed)
        if conversation.prefill:
            payload["messages"] = [*messages, {"role": "assistant", "content": conversation.prefill}]
            payload.update(continue_final_message=True, add_generation_prompt=False)
        text, _ = self.client.chat(payload)
        if conversation.prefill and text.startswith(conversation.prefill):
            text = text[len(conversation.prefill) :]  # some servers echo the prefilled text
        return cut_at_stop(text, cfg.stop)

    def generate(
        self,
        conversations: Sequence[Conversation],
        on_batch: Callable[[list[int], list[str]], None] | None = None,
    ) -> list[str]:
        """Completions in input order, ``concurrency`` at a time; ``on_batch`` per finished one."""
        outputs: list[str] = [""] * len(conversations)
        if not conversations:
            return outputs
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            futures = {pool.submit(self.complete, c): i for i, c in enumerate(conversations)}
            for future in as_completed(futures):
                i = futures[future]
                outputs[i] = future.result()
                if on_batch is not None:
                    on_batch([i], [outputs[i]])
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return outputs
