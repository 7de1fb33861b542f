"""``completion`` (prefill attack): the assistant turn is pre-filled with the start of a compliant
answer, so the model must refuse *mid-answer* — the attack DeRTa is trained to resist.

The prefill is the record's ``target`` (AdvBench ships one per goal, e.g. "Sure, here is ...")
when it has one, otherwise ``opener``.
"""

from __future__ import annotations

from dataclasses import dataclass

from safeft.eval.attacks.base import BaseAttack
from safeft.eval.generation import Conversation
from safeft.eval.prompts import PromptRecord

DEFAULT_OPENER = "Sure, here is"


@dataclass
class CompletionAttack(BaseAttack):
    opener: str = DEFAULT_OPENER
    use_target: bool = True
    name: str = "completion"

    def params(self) -> dict:
        return {"opener": self.opener, "use_target": self.use_target}

    def apply(self, record: PromptRecord) -> Conversation:
        target = str(record.extra.get("target") or "").strip() if self.use_target else ""
        return Conversation.user(record.prompt, prefill=target or self.opener)
