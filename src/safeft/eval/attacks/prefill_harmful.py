"""``prefill-harmful-k``: pre-fill the assistant turn with the first ``k`` words of a *known harmful
answer* to the prompt (record ``extra["harmful_answer"]``; records without one are skipped).

Sweeping k (0, 5, 10, 20, 40) gives the refusal-position curve: refusal rate as a function of how
far into a harmful answer the model already is. A model that only refuses at position 0 has a
shallow safety alignment; DeRTa aims for a flat curve. k counts whitespace-separated words, not
model tokens, so the same conversations are sent to every backend and every tokenizer; the
prefill keeps the answer's own whitespace up to the k-th word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from safeft.eval.attacks.base import BaseAttack
from safeft.eval.generation import Conversation
from safeft.eval.prompts import PromptRecord

DEFAULT_KS: tuple[int, ...] = (0, 5, 10, 20, 40)
_WORD = re.compile(r"\S+")


def first_words(text: str, k: int) -> str:
    """The prefix of ``text`` that ends after its k-th whitespace-separated word (k=0: "")."""
    if k <= 0:
        return ""
    end = 0
    for i, match in enumerate(_WORD.finditer(text), 1):
        end = match.end()
        if i == k:
            break
    return text[:end]


@dataclass
class PrefillHarmfulAttack(BaseAttack):
    k: int = 0
    name: str = "prefill-harmful-k"

    @property
    def key(self) -> str:
        return f"{self.name}={self.k}"

    def params(self) -> dict:
        return {"k": self.k}

    def apply(self, record: PromptRecord) -> Conversation | None:
        answer = record.extra.get("harmful_answer")
        if not answer:
            return None
        return Conversation.user(record.prompt, prefill=first_words(str(answer), self.k))
