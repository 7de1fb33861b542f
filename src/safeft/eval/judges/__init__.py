"""Judges: keyword (here), classifier and llm (see their modules)."""

from safeft.eval.judges.base import Judge, Verdict
from safeft.eval.judges.keyword import KeywordJudge

__all__ = ["Judge", "KeywordJudge", "Verdict"]
