"""The one OpenAI-compatible HTTP client of safeft: generation backend, LLM judge and PAIR attacker.

Why the standard library (``urllib``) and not ``requests``/``httpx``/``openai``: the client needs
one POST and one GET, and its safety rules must hold whatever a server answers. With ``urllib`` we
own every rule in this file and add no dependency: ``requests`` strips ``Authorization`` only on
cross-host redirects (and reads ``.netrc``), the ``openai`` package follows redirects through
httpx and retries with its own policy. Here:

* **Redirects are refused.** Any 3xx answer is an error naming the endpoint (use the final URL);
  the request, with its ``Authorization`` header, never goes to another location.
* **Keys**: read from the environment variable ``api_key_env`` (one per endpoint: generation
  ``--api-key-env``, judge ``--judge-api-key-env``, PAIR attacker ``--pair-attacker-api-key-env``),
  sent only as ``Authorization: Bearer``, removed from every message (``redact``), never logged,
  never returned with a reply. Reply headers are never stored or returned: callers get the JSON
  body only. A key sent over plain ``http://`` to a host other than loopback logs a warning.
* **URLs in messages** (:func:`public_url`) have user-info, query string and fragment removed.
* **Retries** (``retries`` after the first attempt, back-off ``backoff * 2**i`` with 25 % jitter, a
  numeric ``Retry-After`` honoured up to 60 s): HTTP 408/409/425/429/5xx, timeouts, dropped
  connections and replies that are not HTTP. Other 4xx fail at once (401/403 name the key variable).
* **Fail fast**: a refused connection or unknown host before the server has ever answered raises
  :class:`EndpointUnreachable` at once; timeouts before any answer raise it after the last attempt.
  :meth:`ChatClient.check_reachable` probes ``GET {base}/models`` so a run fails before any work.
* **Replies**: :meth:`ChatClient.chat` returns ``choices[0].message.content``; a reply that is not
  JSON, has no choices, or has ``content: null`` raises :class:`EndpointReplyError` (never an empty
  answer).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"


class EndpointError(ValueError):
    """An OpenAI-compatible endpoint failed (the message names the URL, never the key)."""


class EndpointUnreachable(EndpointError):
    """Nothing answers at the URL (refused connection, unknown host, or only timeouts)."""


class EndpointHTTPError(EndpointError):
    """The endpoint answered an HTTP status that is not retried (4xx, or a redirect)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class EndpointRetriesExhausted(EndpointError):
    """Transient failures (5xx, timeouts, broken replies) persisted through every retry."""


class EndpointReplyError(EndpointError):
    """The endpoint answered 200 but not with a usable chat completion (not JSON, null content...)."""


def public_url(url: str) -> str:
    """``url`` without user-info, query string or fragment: safe to print."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def endpoint_url(base_url: str, suffix: str) -> str:
    """``base_url`` with ``suffix`` (e.g. ``/chat/completions``) appended to its path unless the path
    already ends with it; the query string is kept (``?api-version=...``)."""
    parts = urllib.parse.urlsplit(base_url)
    path = parts.path.rstrip("/")
    for known in ("/chat/completions", "/models"):
        if path.endswith(known):
            path = path[: -len(known)]
    return urllib.parse.urlunsplit(parts._replace(path=path + suffix, fragment=""))


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Turn every redirect into an HTTPError, so credentials never follow it."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        return None


class ChatClient:
    """POST chat completions to one OpenAI-compatible endpoint (module docstring for the rules).

    Args:
        base_url: server root such as ``http://127.0.0.1:8000/v1`` (a URL ending in
            ``/chat/completions`` is accepted too).
        api_key_env: environment variable holding the key; ``None`` sends no key.
        require_key: raise when ``api_key_env`` is unset (a name the user gave explicitly).
        timeout: seconds per request (connect + read), > 0.
        retries: retries after the first attempt, >= 0.
        backoff: base delay in seconds, >= 0.
        what: how messages name this endpoint, e.g. ``"--endpoint"``, ``"LLM judge endpoint"``.
        headers: extra request headers (never logged).
    """

    def __init__(
        self,
        base_url: str,
        api_key_env: str | None = DEFAULT_API_KEY_ENV,
        require_key: bool = False,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        what: str = "endpoint",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.what = what
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{what} {public_url(base_url)!r}: expected an http:// or https:// URL")
        if int(retries) < 0:
            raise ValueError(f"{what}: retries must be >= 0, got {retries}")
        if float(timeout) <= 0:
            raise ValueError(f"{what}: timeout must be > 0 seconds, got {timeout}")
        if float(backoff) < 0:
            raise ValueError(f"{what}: backoff must be >= 0 seconds, got {backoff}")
        self.base_url = base_url
        self.chat_url = endpoint_url(base_url, "/chat/completions")
        self.models_url = endpoint_url(base_url, "/models")
        self.display_url = public_url(self.chat_url)
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.api_key_env = api_key_env
        self._key = os.environ.get(api_key_env) or None if api_key_env else None
        if self._key is None and require_key and api_key_env:
            raise ValueError(f"{what}: environment variable {api_key_env} (its API key) is not set")
        if self._key and parts.scheme == "http" and not is_loopback(parts.hostname):
            log.warning(
                "%s %s: the API key from $%s is sent over plain http:// to a host that is not this "
                "machine; use https://",
                what,
                public_url(base_url),
                api_key_env,
            )
        self._headers = dict(headers or {})
        self._opener = urllib.request.build_opener(_RefuseRedirects)
        self.answered = threading.Event()  # set once the endpoint has answered anything

    @property
    def has_key(self) -> bool:
        return self._key is not None

    def __repr__(self) -> str:  # never shows the key
        return f"ChatClient({self.display_url!r}, api_key_env={self.api_key_env!r})"

    def redact(self, text: str) -> str:
        """``text`` with the API key replaced by ``***``."""
        return text.replace(self._key, "***") if self._key else text

    def _request(self, url: str, data: bytes | None, method: str) -> urllib.request.Request:
        headers = {"Accept": "application/json", **self._headers}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        return urllib.request.Request(url, data=data, headers=headers, method=method)

    def _redirect_error(self, code: int) -> EndpointHTTPError:
        return EndpointHTTPError(
            f"{self.what} {self.display_url} answered a redirect (HTTP {code}); safeft does not follow "
            "redirects, so the API key never goes to another address: use the final URL",
            code,
        )

    def _unreachable(self, reason: object) -> EndpointUnreachable:
        return EndpointUnreachable(
            f"cannot reach the {self.what} {self.display_url}: {self.redact(str(reason))} "
            "(is the server running and the URL right?)"
        )

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(60.0, max(0.0, float(retry_after)))
            except ValueError:
                pass
        return self.backoff * (2**attempt) * (1.0 + 0.25 * random.random())

    def check_reachable(self, timeout: float = 5.0) -> None:
        """One quick ``GET /models``: any HTTP answer but a redirect proves the server is up."""
        request = self._request(self.models_url, None, "GET")
        try:
            with self._opener.open(request, timeout=min(timeout, self.timeout)):
                pass
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                raise self._redirect_error(exc.code) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            if isinstance(exc, http.client.HTTPException):
                reason = f"the reply is not HTTP ({type(exc).__name__})"
            raise self._unreachable(reason) from None
        self.answered.set()

    def post_json(self, payload: dict[str, Any]) -> tuple[Any, int]:
        """POST ``payload`` to the chat URL; returns (parsed JSON body, attempts used)."""
        data = json.dumps(payload).encode("utf-8")
        error = ""
        delay = 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(delay)
            retry_after: str | None = None
            log.debug("POST %s (attempt %d/%d)", self.display_url, attempt + 1, self.retries + 1)
            try:
                with self._opener.open(self._request(self.chat_url, data, "POST"), timeout=self.timeout) as r:
                    raw = r.read()
                self.answered.set()
            except urllib.error.HTTPError as exc:
                self.answered.set()
                if 300 <= exc.code < 400:
                    raise self._redirect_error(exc.code) from None
                try:
                    body = exc.read().decode("utf-8", "replace")
                except Exception:
                    body = ""
                snippet = _excerpt(self.redact(body), 120)
                if exc.code in RETRY_STATUSES:
                    error = f"HTTP {exc.code}"
                    retry_after = exc.headers.get("Retry-After") if exc.headers else None
                    log.warning("%s answered HTTP %d (attempt %d)", self.display_url, exc.code, attempt + 1)
                    delay = self._delay(attempt, retry_after)
                    continue
                hint = f" (check ${self.api_key_env})" if exc.code in (401, 403) and self.api_key_env else ""
                raise EndpointHTTPError(
                    f"{self.what} {self.display_url} answered HTTP {exc.code} {exc.reason}{hint}: {snippet}",
                    exc.code,
                ) from None
            except urllib.error.URLError as exc:
                if not isinstance(exc.reason, TimeoutError) and not self.answered.is_set():
                    raise self._unreachable(exc.reason) from None
                error = (
                    f"timed out after {self.timeout}s"
                    if isinstance(exc.reason, TimeoutError)
                    else self.redact(str(exc.reason))
                )
            except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
                if isinstance(exc, TimeoutError):
                    error = f"timed out after {self.timeout}s"
                elif isinstance(exc, http.client.HTTPException):
                    error = f"the reply is not HTTP ({type(exc).__name__})"
                else:
                    error = f"{type(exc).__name__} while reading the reply"
            else:
                try:
                    return json.loads(raw), attempt + 1
                except ValueError:
                    raise EndpointReplyError(
                        f"{self.what} {self.display_url}: the reply is not JSON: "
                        f"{_excerpt(self.redact(raw.decode('utf-8', 'replace')))!r}"
                    ) from None
            if not self.answered.is_set() and attempt == self.retries and "timed out" in error:
                raise self._unreachable(error) from None
            log.warning("%s: %s (attempt %d)", self.display_url, error, attempt + 1)
            delay = self._delay(attempt, None)
        raise EndpointRetriesExhausted(
            f"{self.what} {self.display_url} failed after {self.retries + 1} attempt(s): {error}"
        )

    def chat(self, payload: dict[str, Any]) -> tuple[str, int]:
        """One chat completion: (``choices[0].message.content``, attempts). A reply without text
        (no choices, ``content: null``, not a string) raises :class:`EndpointReplyError`."""
        reply, attempts = self.post_json(payload)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise EndpointReplyError(
                f"{self.what} {self.display_url}: the reply is not a chat completion "
                "(no choices[0].message.content)"
            ) from None
        if content is None:
            raise EndpointReplyError(
                f"{self.what} {self.display_url}: the reply's message content is null (no text); "
                "it is not counted as an empty answer"
            )
        if not isinstance(content, str):
            raise EndpointReplyError(
                f"{self.what} {self.display_url}: message content is {type(content).__name__}, expected text"
            )
        return content, attempts


def _excerpt(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
