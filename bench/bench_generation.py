"""Batched HF generation vs. a one-prompt-at-a-time loop, same prompts, greedy.

    python bench/bench_generation.py [--model smollm2-135m-instruct] [--n 32] [--max-new-tokens 48]
                                     [--batch-size 16] [--threads T] [--bf16]
                                     [--vs-batch-size B] [--no-loop]
                                     [--out bench/results/bench_generation.json]

``--vs-batch-size B`` also times batches of B beside ``--batch-size`` and counts the outputs the two batch
sizes generate alike (64 vs 16 on 2 idle CPU threads, 2026-11-29: 1.71x, 128/128 equal, README
"Benchmarks"); ``--no-loop`` skips the one-at-a-time loop (slow at large ``--n``).

Both paths use :class:`safeft.eval.generation.HFGenerator` (the loop with ``batch_size=1``), so the
only difference is batching. Generated tokens = the output re-tokenised (the outputs are checked
identical, so both paths are credited with the same count); tokens/s = tokens / wall seconds.
Target: ratio >= 4x on a 2-core CPU, identical greedy outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from safeft.eval.generation import Conversation, GenerationConfig, HFGenerator
from safeft.models import DEFAULT_MODEL, load_model_and_tokenizer

PROMPTS = [
    "Give three tips for staying healthy.",
    "What are the three primary colours?",
    "Describe the structure of an atom.",
    "How can we reduce air pollution?",
    "Explain why the sky is blue.",
    "Write a haiku about autumn leaves.",
    "What is the capital of France?",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "Suggest a name for a friendly robot.",
    "How do I boil an egg?",
    "List four fruits that are rich in vitamin C.",
    "What does a compiler do?",
    "Explain photosynthesis to a ten-year-old.",
    "Write a short thank-you note to a teacher.",
    "Why do cats purr?",
    "Give me a fun fact about octopuses.",
    "How many days are there in a leap year?",
    "Translate 'good morning' into Spanish.",
    "What is the difference between weather and climate?",
    "Recommend a book for a long train journey.",
    "How does a bicycle stay upright?",
    "Write a one-line slogan for a bakery.",
    "What is 15 multiplied by 12?",
    "Name three planets in our solar system.",
    "Describe a sunset over the ocean.",
    "What is a prime number?",
    "How can I improve my handwriting?",
    "Explain what a rainbow is.",
    "Give two reasons to learn a second language.",
    "What is the boiling point of water at sea level?",
    "Write a limerick about a sleepy dog.",
    "How do plants drink water?",
]


def timed(gen: HFGenerator, convs: list[Conversation]) -> tuple[list[str], float]:
    start = time.perf_counter()
    # batch_size 1: the plain loop, one prompt per call
    out = [gen.generate([c])[0] for c in convs] if gen.config.batch_size == 1 else gen.generate(convs)
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--bf16", action="store_true", help="also time batched generation under bf16 autocast")
    ap.add_argument("--vs-batch-size", type=int, help="also time batches of this size (same prompts)")
    ap.add_argument("--no-loop", action="store_true", help="skip the one-prompt-at-a-time loop")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_generation.json"))
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model_and_tokenizer(args.model)
    model.eval()
    prompts = (PROMPTS * (args.n // len(PROMPTS) + 1))[: args.n]
    convs = [Conversation.user(p) for p in prompts]
    batched = HFGenerator(model, tokenizer, GenerationConfig(args.max_new_tokens, batch_size=args.batch_size))
    single = HFGenerator(model, tokenizer, GenerationConfig(args.max_new_tokens, batch_size=1))
    HFGenerator(model, tokenizer, GenerationConfig(4, batch_size=2)).generate(convs[:2])  # warm-up

    out_b, t_b = timed(batched, convs)
    print(f"batched: {t_b:.1f}s", flush=True)
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in out_b)
    result = {
        "model": args.model,
        "prompts": len(convs),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "generated_tokens": tokens,
        "batched_seconds": round(t_b, 2),
        "batched_tokens_per_s": round(tokens / t_b, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    print(f"{'path':<22} {'seconds':>8} {'tokens/s':>9}")
    print(f"{'batched (bs=' + str(args.batch_size) + ')':<22} {t_b:>8.1f} {tokens / t_b:>9.1f}")
    out_s = out_b
    if not args.no_loop:
        out_s, t_s = timed(single, convs)
        identical = out_b == out_s
        mismatches = [i for i, (a, b) in enumerate(zip(out_b, out_s, strict=True)) if a != b]
        result.update(
            loop_seconds=round(t_s, 2),
            loop_tokens_per_s=round(tokens / t_s, 1),
            speedup=round(t_s / t_b, 2),
            identical_outputs=identical,
            mismatched_prompts=mismatches,
        )
        print(f"{'one-at-a-time loop':<22} {t_s:>8.1f} {tokens / t_s:>9.1f}")
        print(f"speedup {t_s / t_b:.2f}x  (target >= 4x); identical greedy outputs: {identical}")
    if args.vs_batch_size:
        cfg = GenerationConfig(args.max_new_tokens, batch_size=args.vs_batch_size)
        out_v, t_v = timed(HFGenerator(model, tokenizer, cfg), convs)
        same = sum(a == b for a, b in zip(out_v, out_b, strict=True))
        result.update(
            vs_batch_size=args.vs_batch_size,
            vs_batched_seconds=round(t_v, 2),
            vs_speedup=round(t_b / t_v, 2),
            vs_outputs_equal=same,
        )
        label = f"batched (bs={args.vs_batch_size})"
        print(f"{label:<22} {t_v:>8.1f} {tokens / t_v:>9.1f}   ({same}/{len(convs)} outputs equal)")
        print(f"bs={args.vs_batch_size} vs bs={args.batch_size}: {t_b / t_v:.2f}x")
    if args.bf16:
        cfg = GenerationConfig(args.max_new_tokens, batch_size=args.batch_size, bf16_autocast=True)
        out_h, t_h = timed(HFGenerator(model, tokenizer, cfg), convs)
        same = sum(a == b for a, b in zip(out_h, out_s, strict=True))
        result.update(
            bf16_batched_seconds=round(t_h, 2),
            bf16_speedup_vs_fp32_batched=round(t_b / t_h, 2),
            bf16_outputs_equal_to_fp32=same,
        )
        print(f"{'batched bf16 autocast':<22} {t_h:>8.1f}   ({same}/{len(convs)} outputs equal to float32)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
