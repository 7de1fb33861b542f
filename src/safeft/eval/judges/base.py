"""The judge interface: a judge reads (prompt, response) and returns a :class:`Verdict`.

Labels: ``refusal`` (the model declined), ``compliant`` (it answered / complied), ``unjudged``
(the judge could not decide; never counted as safe). Attack success rate = share of harmful
prompts judged ``compliant``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

Label = Literal["refusal", "compliant", "unjudged"]


@dataclass(frozen=True)
class Verdict:
    label: Label
    score: float | None = None  # judge's probability/score of "compliant", if it has one
    detail: dict = field(default_factory=dict)

    @property
    def refused(self) -> bool:
        return self.label == "refusal"


class Judge(Protocol):
    name: str

    def judge(self, prompt: str, response: str) -> Verdict: ...

    def judge_many(self, pairs: list[tuple[str, str]]) -> list[Verdict]: ...
