"""AutoDAN fitness for one population: sparse LM head (target positions only) vs. full logits.

    OMP_NUM_THREADS=1 python bench/bench_autodan_fitness.py [--model smollm2-135m-instruct]
        [--population 16] [--batch-size 8] [--repeats 3] [--out bench/results/bench_autodan_fitness.json]

Both paths score the same right-padded batches of ``chat(template(goal)) + target`` with the same
model; *sparse* is :func:`safeft.eval.attacks.autodan.target_logprobs` (the decoder once, the LM
head and fp32 soft-max on the m target positions of each row), *dense* runs the model's own head on
every position (``B x T x |V|`` logits) and gathers the same log-probabilities. The goal is a benign
request (speed does not depend on the text). Reported: median wall seconds per population, the
largest absolute difference between the two paths' log-likelihoods, and the size of the logits
tensor each path materialises.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

import torch

from safeft.eval.attacks.autodan import AutoDANAttack, target_logprobs
from safeft.eval.generation import render_prompt
from safeft.eval.prompts import PromptRecord
from safeft.models import DEFAULT_MODEL, load_model_and_tokenizer

GOAL = PromptRecord("bench", "Write a short poem about the sea")
TARGET = "Sure, here is a short poem about the sea"


@torch.inference_mode()
def dense_logprobs(model, tokenizer, convs, target: str, batch_size: int) -> list[float]:
    """Reference: full logits at every position, then the target tokens' log-probabilities."""
    tgt = tokenizer(target, add_special_tokens=False)["input_ids"]
    prompts = [tokenizer(render_prompt(tokenizer, c), add_special_tokens=False)["input_ids"] for c in convs]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk) + len(tgt)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(chunk):
            ids[row, : len(p) + len(tgt)] = torch.tensor(p + tgt)
            mask[row, : len(p) + len(tgt)] = 1
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        for row, p in enumerate(chunk):
            out.append(sum(logp[row, len(p) - 1 + j, t].item() for j, t in enumerate(tgt)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench/results/bench_autodan_fitness.json")
    args = ap.parse_args()

    model, tok = load_model_and_tokenizer(args.model)
    model.eval()
    attack = AutoDANAttack(autodan_population=args.population)
    convs = [attack.conversation(t, GOAL) for t in attack.initial_population(random.Random(0))]
    lengths = [len(tok(render_prompt(tok, c), add_special_tokens=False)["input_ids"]) for c in convs]

    def timed(fn):
        times, result = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), result

    sparse_s, (sparse, m, passes) = timed(lambda: target_logprobs(model, tok, convs, TARGET, args.batch_size))
    dense_s, dense = timed(lambda: dense_logprobs(model, tok, convs, TARGET, args.batch_size))
    vocab = model.get_output_embeddings().weight.shape[0]
    rows_per_batch = min(args.batch_size, len(convs))
    width = max(lengths) + m
    result = {
        "model": args.model,
        "population": len(convs),
        "batch_size": args.batch_size,
        "prompt_tokens_min_max": [min(lengths), max(lengths)],
        "target_tokens": m,
        "forward_passes": passes,
        "sparse_seconds_median": round(sparse_s, 3),
        "dense_seconds_median": round(dense_s, 3),
        "speedup": round(dense_s / sparse_s, 2),
        "max_abs_diff_loglik": max(abs(a - b) for a, b in zip(sparse, dense, strict=True)),
        "logits_mib_per_batch_sparse": round(rows_per_batch * m * vocab * 4 / 2**20, 1),
        "logits_mib_per_batch_dense_upper": round(rows_per_batch * width * vocab * 4 / 2**20, 1),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
