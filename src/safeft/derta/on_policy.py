"""On-policy harmful answers for DeRTa (a safeft extension; the DeRTa paper trains on fixed triples).

DeRTa's rows put a harmful answer ``h`` before the refusal: ``chat(q) + h[:k] + s`` and RTO on
``chat(q) + h``. A dataset's ``h`` is written in another model's words, so the transition can attach to
that style (its openings, its formatting) instead of to the harm of the request. Under a direct attack the
model continues its *own* answer. ``harmful_answers`` chooses what ``h`` is:

* ``dataset``: the triple's harmful answer (the paper's set-up);
* ``self``: the original model's own greedy answer to ``q`` (adapters off, cached like self-distillation,
  :mod:`safeft.training.self_distill`); a prompt it refuses or answers with a loop keeps the dataset's ``h``;
* ``both``: every dataset triple, plus one triple with the model's answer per prompt it answered.

The refusal ``s`` is the triple's in every case. Only usable for a model that complies with harmful
requests (the embedded default does); an aligned model's answers are refusals and are counted as dropped.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace

from safeft.data.records import SafetyTriple

log = logging.getLogger(__name__)

HARMFUL_ANSWERS = ("dataset", "self", "both")


@dataclass
class OnPolicyStats:
    mode: str = "dataset"
    model_answers: int = 0  # triples whose harmful answer is the model's own
    dataset_answers: int = 0  # triples whose harmful answer is the dataset's
    dropped: Counter = field(default_factory=Counter)  # why a model answer was not used -> count

    def as_dict(self) -> dict:
        return {
            "mode": self.mode,
            "model_answers": self.model_answers,
            "dataset_answers": self.dataset_answers,
            "dropped_model_answers": dict(self.dropped),
        }


def with_model_answers(
    triples: list[SafetyTriple], answers: dict[str, str], mode: str, dropped: Counter | None = None
) -> tuple[list[SafetyTriple], OnPolicyStats]:
    """``triples`` with harmful answers taken from ``answers`` (triple origin -> the model's usable answer;
    a triple without one keeps its dataset answer) as ``mode`` says. A triple of a prompts-only source (empty
    dataset answer) needs the model's: without one it is dropped (counted as ``no answer, prompt only``)."""
    if mode not in HARMFUL_ANSWERS:
        raise ValueError(f"harmful_answers must be one of {HARMFUL_ANSWERS}, got {mode!r}")
    stats = OnPolicyStats(mode=mode, dropped=Counter(dropped or {}))
    if mode == "dataset":
        stats.dataset_answers = len(triples)
        return list(triples), stats
    own = {
        t.origin: replace(t, harmful_response=answers[t.origin], origin=f"{t.origin} (model's answer)")
        for t in triples
        if t.origin in answers
    }
    orphans = sum(1 for t in triples if not t.harmful_response and t.origin not in own)
    if orphans:
        stats.dropped["no answer, prompt only"] += orphans
    with_answer = [t for t in triples if t.harmful_response]
    if mode == "both":
        added = [own[t.origin] for t in triples if t.origin in own]
        out = with_answer + added
        stats.dataset_answers, stats.model_answers = len(with_answer), len(added)
    else:
        out = [own.get(t.origin, t) for t in triples if t.origin in own or t.harmful_response]
        stats.model_answers = sum(t.origin in own for t in triples)
        stats.dataset_answers = len(out) - stats.model_answers
    return out, stats


def on_policy_triples(
    model,
    tokenizer,
    triples: list[SafetyTriple],
    mode: str,
    *,
    fingerprint: str,
    max_new_tokens: int,
    system_prompt: str | None = None,
    cache_dir: str | None = None,
) -> tuple[list[SafetyTriple], OnPolicyStats]:
    """The model's own answers to the safety prompts (batched, cached), put into ``triples`` by ``mode``.
    Refusals, loops and empty answers are not harmful answers: those prompts keep the dataset's."""
    from safeft.training.self_distill import self_distill

    if mode == "dataset":
        return with_model_answers(triples, {}, mode)
    prompts = [(t.origin, t.prompt) for t in triples]
    result = self_distill(
        model,
        tokenizer,
        prompts,
        fingerprint=fingerprint,
        max_new_tokens=max_new_tokens,
        system_prompt=system_prompt,
        cache_dir=cache_dir,
        label="harmful answers (on-policy)",
    )
    answers = {p.origin.removeprefix("self_distill:"): p.response for p in result.pairs}
    out, stats = with_model_answers(triples, answers, mode, result.dropped)
    log.info("harmful answers: %s", stats.as_dict())
    return out, stats
