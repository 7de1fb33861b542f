"""Generation through an OpenAI-compatible chat endpoint (a vLLM / llama.cpp server, or a hosted API).

``POST {base_url}/chat/completions`` with ``{"model", "messages", "max_tokens", "temperature"}``,
using only the standard library. The API key is read from the environment variable named by
``api_key_env`` (default ``OPENAI_API_KEY``; none is sent when it is unset) and never logged or
put in an error message; URLs in messages have any user:password and query string removed.

* Timeouts: each request has ``timeout`` seconds.
* Retries: HTTP 408/409/429/5xx, timeouts and dropped connections are retried ``retries`` times
  with exponential back-off (``backoff`` · 2^i seconds); other HTTP errors fail at once.
* Concurrency: at most ``concurrency`` requests in flight (a thread pool).
* Fail fast: :meth:`check_reachable` probes ``GET {base_url}/models`` once with a short timeout
  before any work, so an unreachable server is reported in seconds, not after every retry.
* Prefill: a conversation with a prefill sends it as a final assistant message with
  ``continue_final_message: true, add_generation_prompt: false`` (the vLLM extension); servers
  that ignore these fields treat the prefill as a finished assistant turn.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from safeft.eval.generation import Conversation, GenerationConfig, cut_at_stop

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class EndpointError(ValueError):
    """The endpoint is unreachable or keeps failing (the message holds the URL, never the key)."""


def redact_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


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

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")

    # -- identity ------------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        return hashlib.sha256(f"openai|{redact_url(self.base_url)}|{self.model}".encode()).hexdigest()[:16]

    # -- HTTP ----------------------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def check_reachable(self, timeout: float = 5.0) -> None:
        """One quick ``GET /models``; any HTTP answer (even 404) proves the server is up."""
        url = f"{self.base_url}/models"
        request = urllib.request.Request(url, headers=self._headers(), method="GET")
        try:
            with urllib.request.urlopen(request, timeout=min(timeout, self.timeout)):
                pass
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise EndpointError(f"cannot reach {redact_url(self.base_url)}: {reason}") from None

    def _post(self, payload: dict) -> dict:
        url = f"{self.base_url}/chat/completions"
        data = json.dumps(payload).encode()
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(url, data=data, headers=self._headers(), method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode())
            except urllib.error.HTTPError as exc:
                last_error = f"HTTP {exc.code} {exc.reason}"
                if exc.code not in RETRY_STATUS:
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                last_error = str(getattr(exc, "reason", exc))
            except json.JSONDecodeError:
                last_error = "the reply is not JSON"
            log.debug("POST %s failed (%s), attempt %d", redact_url(url), last_error, attempt + 1)
        raise EndpointError(
            f"request to {redact_url(url)} failed after {attempt + 1} attempt(s): {last_error}"
        )

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
        reply = self._post(payload)
        try:
            text = reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise EndpointError(
                f"{redact_url(self.base_url)}/chat/completions returned no choices[0].message.content"
            ) from None
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
