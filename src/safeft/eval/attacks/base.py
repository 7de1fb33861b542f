"""The attack interface: a pure transform from a prompt record to a :class:`Conversation`.

``apply(record)`` returns the conversation sent to the target model, or ``None`` when the attack
does not apply to the record (``prefill-harmful-k`` needs a known harmful answer).
``decode_response(text)`` maps the model's answer back to plain text before judging (identity
except for ciphers). ``key`` names the attack *and* its parameters in results and caches.
"""

from __future__ import annotations

from typing import Any, Protocol

from safeft.eval.generation import Conversation
from safeft.eval.prompts import PromptRecord


class Attack(Protocol):
    name: str

    @property
    def key(self) -> str: ...

    def params(self) -> dict[str, Any]: ...

    def apply(self, record: PromptRecord) -> Conversation | None: ...

    def decode_response(self, text: str) -> str: ...


class BaseAttack:
    """Defaults: key == name, no parameters, identity response decoding."""

    name: str = ""
    #: iterative attacks (PAIR) are driven by the runner, not by ``apply`` alone
    iterative: bool = False

    @property
    def key(self) -> str:
        return self.name

    def params(self) -> dict[str, Any]:
        return {}

    def apply(self, record: PromptRecord) -> Conversation | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode_response(self, text: str) -> str:
        return text
