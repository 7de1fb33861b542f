"""``direct``: the prompt as the only user message (the baseline every other attack is compared to)."""

from __future__ import annotations

from dataclasses import dataclass

from safeft.eval.attacks.base import BaseAttack
from safeft.eval.generation import Conversation
from safeft.eval.prompts import PromptRecord


@dataclass
class DirectAttack(BaseAttack):
    system: str | None = None
    name: str = "direct"

    def apply(self, record: PromptRecord) -> Conversation:
        return Conversation.user(record.prompt, system=self.system)
