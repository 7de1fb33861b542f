"""Judges: ``keyword`` (here), ``classifier``, ``llm`` and ``hf`` (their own modules, imported
lazily; ``hf`` runs a local harm-judge model in-process, see :mod:`safeft.eval.judges.formats`).

``get_judge(name, **options)`` builds a judge following :class:`~safeft.eval.judges.base.Judge`.
A judge module other than keyword is looked up as ``safeft.eval.judges.<module>`` and built with
its ``make_judge(**options)`` factory if it has one, otherwise with its judge class
(:data:`JUDGES` lists the class names tried): ``Class.load(path, ...)`` when the options hold a
``path`` (a trained classifier head), else ``Class(**options)``. Unknown names list the valid ones.
"""

from __future__ import annotations

import importlib
from typing import Any

from safeft.eval.judges.base import LABELS, MEASURES, Judge, Verdict
from safeft.eval.judges.degenerate import degenerate_kind
from safeft.eval.judges.keyword import KeywordJudge

#: judge name -> (module under safeft.eval.judges, class names to try if there is no make_judge)
JUDGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "keyword": ("keyword", ("KeywordJudge",)),
    "classifier": ("classifier", ("ClassifierJudge",)),
    "llm": ("llm", ("LLMJudge", "LlmJudge")),
    "hf": ("hf", ("HFJudge",)),
}


def get_judge(name: str, **options: Any) -> Judge:
    if name not in JUDGES:
        raise ValueError(f"unknown judge {name!r}; valid judges: {', '.join(JUDGES)}")
    module_name, class_names = JUDGES[name]
    try:
        module = importlib.import_module(f"safeft.eval.judges.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"safeft.eval.judges.{module_name}":
            raise
        raise ValueError(f"judge {name!r} is not available in this install (no module {exc.name})") from None
    factory = getattr(module, "make_judge", None)
    if factory is None:
        cls = next((getattr(module, c) for c in class_names if hasattr(module, c)), None)
        if cls is None:
            raise ValueError(f"judge module {module.__name__} defines neither make_judge nor {class_names}")
        factory = cls.load if "path" in options and hasattr(cls, "load") else cls
    try:
        return factory(**options)
    except TypeError as exc:
        raise ValueError(f"judge {name!r}: bad options {sorted(options)} ({exc})") from None


def judge_measures(judge: Judge) -> str:
    """What the judge's positive rate measures (``Judge.measures``; default ``compliance_rate``)."""
    value = getattr(judge, "measures", None)
    return value if value in MEASURES else "compliance_rate"


def safe_verdicts(judge: Judge, pairs: list[tuple[str, str]], screen: bool = True) -> list[Verdict]:
    """``judge.judge_many`` with every answer that is not a valid label mapped to ``unjudged``.

    With ``screen`` (default), degenerate answers (``empty`` / ``repetitive`` / ``gibberish``, see
    :mod:`safeft.eval.judges.degenerate`) get that verdict without asking the judge, whatever the
    judge: they are neither refusal nor compliance. A judge that returns something unexpected (or
    the wrong number of verdicts) never makes a response count as safe.
    """
    kinds = [degenerate_kind(r) if screen else None for _, r in pairs]
    ask = [i for i, k in enumerate(kinds) if k is None]
    asked = [pairs[i] for i in ask]
    verdicts = judge.judge_many(asked) if asked else []
    if len(verdicts) != len(asked):
        raise ValueError(f"judge {judge.name!r} returned {len(verdicts)} verdicts for {len(asked)} responses")
    out: list[Verdict] = [Verdict(k, None, {"degenerate": k}) if k else Verdict("unjudged") for k in kinds]
    for i, v in zip(ask, verdicts, strict=True):
        if isinstance(v, Verdict) and v.label in LABELS:
            out[i] = v
        else:
            out[i] = Verdict("unjudged", None, {"reason": f"invalid verdict {v!r}"[:200]})
    return out


__all__ = ["JUDGES", "Judge", "KeywordJudge", "Verdict", "get_judge", "judge_measures", "safe_verdicts"]
