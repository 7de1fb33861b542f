"""DeRTa training rows (Yuan et al. 2024, "Refuse Whenever You Feel Unsafe", arXiv 2407.09121).

From a safety triple (q, h, s) = (query, harmful answer, refusal):

* **MLE with harmful response prefix**: input ``chat(q) + h[:k] + s``, MLE loss on ``s`` (and the
  end-of-turn tokens) only. ``h[:k]`` is the first ``k`` whitespace-separated words of ``h`` with
  ``k ~ U{1, ..., n_words - 2}``; a fraction ``prefix_zero_fraction`` of rows get ``k = 0``, the plain
  safety-SFT row (1/3 in the official data script, RobustNLP/DeRTa ``data/train/generate_training_data.py``:
  ``if i % 3 == 0: ids = 0``).
* **Reinforced Transition Optimization (RTO)**: input ``chat(q) + h``; at *every* position
  ``t = 0 .. |h|`` the target is the refusal token ``r`` ("Sorry"):
  ``L_RTO = -sum_t log p(r | q, h[:t])``. The ordinary next tokens of ``h`` are never trained.
  Which positions are supervised in a step (``rto_keep_ratio``) is drawn in the loss, not here.

The harmful prefix and the refusal are tokenized separately, so the token that follows ``h[:k]`` in a
prefix row is exactly the refusal's first token, the same token RTO trains at every position.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field

from safeft.data.chat import (
    IGNORE,
    KIND_MLE,
    KIND_NONE,
    KIND_RTO,
    ChatFormat,
    Example,
    TruncationLog,
    encode_sft,
    supervised_example,
)
from safeft.data.records import DataError, HelpfulPair, SafetyTriple

log = logging.getLogger(__name__)

_WORD = re.compile(r"\S+")


def harmful_prefix(text: str, k_words: int) -> str:
    """The first ``k_words`` whitespace-separated words of ``text``, original spacing kept."""
    if k_words <= 0:
        return ""
    end = 0
    for i, match in enumerate(_WORD.finditer(text)):
        end = match.end()
        if i + 1 == k_words:
            break
    return text[:end]


def draw_prefix_words(n_words: int, rng: random.Random, zero_fraction: float) -> int:
    """Reference draw: k = 0 with probability ``zero_fraction``, else k ~ U{1, ..., n_words - 2}."""
    if n_words < 3 or rng.random() < zero_fraction:
        return 0
    return rng.randint(1, n_words - 2)


@dataclass
class DeRTaRowStats:
    rows: Counter = field(default_factory=Counter)
    prefix_words: list[int] = field(default_factory=list)
    rto_positions: int = 0
    mle_tokens: int = 0
    truncations: TruncationLog = field(default_factory=TruncationLog)

    def as_dict(self) -> dict:
        zero = sum(1 for k in self.prefix_words if k == 0)
        return {
            "rows": dict(self.rows),
            "prefix_rows_with_k0": zero,
            "mean_prefix_words": (sum(self.prefix_words) / len(self.prefix_words))
            if self.prefix_words
            else 0,
            "rto_positions": self.rto_positions,
            "mle_tokens": self.mle_tokens,
            "truncations": dict(self.truncations.counts),
        }


def refusal_ids(fmt: ChatFormat, triple: SafetyTriple) -> list[int]:
    ids = fmt.encode(triple.refusal)
    if not ids:
        raise DataError(f"{triple.origin}: field 'refusal' tokenizes to nothing")
    return ids + fmt.end_of_turn_ids


def encode_prefix_row(
    fmt: ChatFormat, triple: SafetyTriple, k_words: int, max_length: int, truncations: TruncationLog
) -> Example | None:
    """``chat(q) + h[:k] + s``, MLE on ``s`` only. Over-long rows lose harmful prefix tokens first."""
    prompt_ids = fmt.prompt_ids(triple.prompt)
    context_ids = fmt.encode(harmful_prefix(triple.harmful_response, k_words))
    answer_ids = refusal_ids(fmt, triple)
    overflow = len(prompt_ids) + len(context_ids) + len(answer_ids) - 1 - max_length
    if overflow > 0 and context_ids:
        truncations.add("harmful prefix shortened", triple.origin)
        context_ids = context_ids[: max(0, len(context_ids) - overflow)]
        overflow = len(prompt_ids) + len(context_ids) + len(answer_ids) - 1 - max_length
    if overflow > 0:
        truncations.add("dropped: prompt + refusal longer than max_length", triple.origin)
        return None
    return supervised_example(prompt_ids, context_ids, answer_ids, triple.origin, "prefix")


def encode_rto_row(
    fmt: ChatFormat, triple: SafetyTriple, refusal_token_id: int, max_length: int, truncations: TruncationLog
) -> Example | None:
    """``chat(q) + h`` with target ``refusal_token_id`` at every position from the answer's start."""
    prompt_ids = fmt.prompt_ids(triple.prompt)
    harmful_ids = fmt.encode(triple.harmful_response)
    if not harmful_ids:
        raise DataError(f"{triple.origin}: field 'harmful_response' is shorter than one token")
    if len(prompt_ids) >= max_length:
        truncations.add("dropped: prompt longer than max_length", triple.origin)
        return None
    if len(prompt_ids) + len(harmful_ids) > max_length:
        truncations.add("harmful response truncated (RTO)", triple.origin)
        harmful_ids = harmful_ids[: max_length - len(prompt_ids)]
    input_ids = prompt_ids + harmful_ids
    start = len(prompt_ids) - 1  # predicts the first answer token
    targets = [IGNORE] * start + [refusal_token_id] * (len(input_ids) - start)
    kinds = [KIND_NONE] * start + [KIND_RTO] * (len(input_ids) - start)
    return Example(input_ids, targets, kinds, triple.origin, "rto")


def guard_column(ex: Example, refusal_token_id: int) -> list[int]:
    """``refusal_token_id`` at the MLE positions of a helpful row where its own target is not that token,
    ``IGNORE`` elsewhere (the ``avoid`` column)."""
    helpful = ex.row_type == "helpful"
    return [
        refusal_token_id if helpful and kind == KIND_MLE and target != refusal_token_id else IGNORE
        for kind, target in zip(ex.kinds, ex.targets, strict=True)
    ]


def refusal_guard_column(ex: Example, refusal_token_id: int) -> list[int]:
    """``refusal_token_id`` at the MLE positions of a safety row after its first one (the refusal after
    its first token, end of turn included) where the row's own target is not that token, ``IGNORE``
    elsewhere (the ``avoid_in_refusal`` column)."""
    avoid = [IGNORE] * len(ex.kinds)
    if ex.row_type != "prefix":
        return avoid
    answer = [t for t, kind in enumerate(ex.kinds) if kind == KIND_MLE]
    for t in answer[1:]:
        if ex.targets[t] != refusal_token_id:
            avoid[t] = refusal_token_id
    return avoid


def build_derta_examples(
    triples: list[SafetyTriple],
    helpful: list[HelpfulPair],
    fmt: ChatFormat,
    *,
    prefix: bool = True,
    rto: bool = True,
    prefix_zero_fraction: float = 1 / 3,
    refusal_token: str = "Sorry",
    max_length: int = 512,
    seed: int = 0,
    guard: bool = False,
    refusal_guard: bool = False,
) -> tuple[list[Example], DeRTaRowStats]:
    """All training rows of a DeRTa run: every helpful row, and per safety triple one MLE safety row and
    one RTO row (the official mix, ``generate_training_data.py``: ``Sorry_data[:3000] +
    Concate_refuse_data[:3000]`` from the same triples).

    Ablations, as in the paper's ablation rows:

    * ``prefix=True, rto=True``: DeRTa (harmful-prefix MLE row + RTO row per triple);
    * ``prefix=True, rto=False``: MLE with harmful prefix only;
    * ``prefix=False, rto=True``: "+RTO": a plain refusal row (``k = 0``) + an RTO row per triple;
    * ``prefix=False, rto=False``: vanilla safety SFT, a plain refusal row per triple (position 0 only).

    ``guard=True`` gives every row an ``avoid`` column for the guard term (``loss.py``): the refusal
    token at each answer position of a helpful row (except where the answer's own next token is it),
    ``IGNORE`` elsewhere. ``refusal_guard=True`` gives every row an ``avoid_in_refusal`` column for the
    refusal guard: the refusal token at each position of an MLE safety row after its first (the rest of
    the refusal and its end of turn: a refusal, once started, is not restarted with a second "Sorry").
    RTO rows are never guarded.
    """
    rng = random.Random(seed)
    stats = DeRTaRowStats()
    refusal_token_id = fmt.single_token(refusal_token)
    if len(fmt.encode(refusal_token)) != 1:
        log.warning(
            "refusal token %r is %d tokens; RTO trains its first token (id %d)",
            refusal_token,
            len(fmt.encode(refusal_token)),
            refusal_token_id,
        )
    examples: list[Example] = []
    for triple in triples:
        n_words = len(_WORD.findall(triple.harmful_response))
        k = draw_prefix_words(n_words, rng, prefix_zero_fraction) if prefix else 0
        row = encode_prefix_row(fmt, triple, k, max_length, stats.truncations)
        if row is not None:
            stats.prefix_words.append(k)
            examples.append(row)
        if rto:
            row = encode_rto_row(fmt, triple, refusal_token_id, max_length, stats.truncations)
            if row is not None:
                examples.append(row)
    for pair in helpful:
        row = encode_sft(fmt, pair.prompt, pair.response, pair.origin, max_length, stats.truncations)
        if row is not None:
            examples.append(row)
    for ex in examples:
        if guard:
            ex.avoid = guard_column(ex, refusal_token_id)
        if refusal_guard:
            ex.avoid_in_refusal = refusal_guard_column(ex, refusal_token_id)
        stats.rows[ex.row_type] += 1
        stats.rto_positions += sum(1 for k in ex.kinds if k == KIND_RTO)
        stats.mle_tokens += sum(1 for k in ex.kinds if k == KIND_MLE)
    if stats.truncations.counts:
        log.warning("max_length=%d: %s", max_length, stats.truncations.summary())
    return examples, stats
