"""Self-distillation: the original model answers benign prompts, and those answers become helpful rows.

Training on the model's own answers keeps its helpful behaviour (and its style) while safety rows are
added. Answers are generated in batches with the adapters switched off and cached on disk, one JSONL
file per model fingerprint, each line keyed by (fingerprint, prompt id, the conversation, the decoding
settings): a second run with the same model and settings generates nothing, an interrupted run keeps
every finished batch, and a changed prompt or setting never returns a stale answer. Two processes that
share the cache file (``safeft sweep --jobs 2`` with a cold cache) take turns on a lock: the second
reads the first one's answers instead of generating them again.

Answers that are empty, refusals (keyword judge) or degenerate loops are dropped and counted: training
on them would teach over-refusal. In a distributed run the main process generates first; the other
ranks then read the finished cache.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from safeft.data.records import HelpfulPair

log = logging.getLogger(__name__)

CACHE_ENV = "SAFEFT_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$SAFEFT_CACHE_DIR`` or ``~/.cache/safeft``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "safeft")


@dataclass
class DistillResult:
    pairs: list[HelpfulPair]
    generated: int  # answers generated in this call (0 when everything came from the cache)
    dropped: Counter = field(default_factory=Counter)  # reason -> count

    def as_dict(self) -> dict:
        return {"kept": len(self.pairs), "generated": self.generated, "dropped": dict(self.dropped)}


def drop_reason(answer: str) -> str | None:
    """Why an answer may not be trained as a helpful row (None: it may)."""
    from safeft.check import is_repetitive
    from safeft.eval.judges.keyword import is_refusal

    text = answer.strip()
    if not text:
        return "empty"
    if is_refusal(text):
        return "refusal"
    if is_repetitive(text):
        return "repetitive"
    return None


def self_distill(
    model,
    tokenizer,
    prompts: list[tuple[str, str]],
    *,
    fingerprint: str,
    max_new_tokens: int = 96,
    batch_size: int = 16,
    system_prompt: str | None = None,
    cache_dir: str | Path | None = None,
    label: str = "self-distillation",
) -> DistillResult:
    """Answers of ``model`` (adapters off) to ``prompts`` (``(id, prompt)`` pairs), as helpful rows."""
    from safeft.eval.cache import GenerationCache, exclusive, generation_key
    from safeft.eval.generation import Conversation, GenerationConfig, HFGenerator
    from safeft.training.base import main_process_first, original_weights

    if not prompts:
        return DistillResult([], 0)
    gen = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    gen_key = gen.cache_key()
    path = Path(cache_dir or default_cache_dir()) / "self_distill" / f"{fingerprint}.jsonl"
    conversations = [Conversation.user(p, system=system_prompt) for _, p in prompts]
    keys = [
        generation_key(fingerprint, "self_distill", pid, gen_key, c)
        for (pid, _), c in zip(prompts, conversations, strict=True)
    ]
    generated = 0
    with main_process_first(), exclusive(path):  # read after another process's answers are written
        cache = GenerationCache(path)
        todo = [i for i, k in enumerate(keys) if k not in cache]
        if todo:
            log.info("%s: the original model answers %d prompts (cache %s)", label, len(todo), path)
            generator = HFGenerator(model, tokenizer, gen)
            was_training = model.training
            model.eval()
            chunk = max(1, batch_size) * 2
            with original_weights(model), torch.inference_mode():
                for start in range(0, len(todo), chunk):
                    idx = todo[start : start + chunk]
                    answers = generator.generate([conversations[i] for i in idx])
                    cache.put_many(
                        [
                            {
                                "key": keys[i],
                                "fingerprint": fingerprint,
                                "attack": "self_distill",
                                "prompt_id": prompts[i][0],
                                "response": a,
                            }
                            for i, a in zip(idx, answers, strict=True)
                        ]
                    )
                    generated += len(idx)
            model.train(was_training)
    pairs: list[HelpfulPair] = []
    dropped: Counter = Counter()
    for (pid, prompt), key in zip(prompts, keys, strict=True):
        answer = cache.get(key) or ""
        reason = drop_reason(answer)
        if reason:
            dropped[reason] += 1
        else:
            pairs.append(HelpfulPair(prompt, answer.strip(), f"self_distill:{pid}"))
    log.info("%s: kept %d of %d answers (dropped: %s)", label, len(pairs), len(prompts), dict(dropped))
    return DistillResult(pairs, generated, dropped)
