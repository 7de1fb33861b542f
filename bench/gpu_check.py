"""GPU check: DeRTa and AsFT training steps and batched generation at real scale, in one script.

    python bench/gpu_check.py [--out DIR]          # on one H100/H200: < 10 minutes
    python bench/gpu_check.py --tiny --out DIR     # a tiny random Llama on the CPU (seconds; tested)

Models (no download): ``smollm2`` = the embedded SmolLM2-135M-Instruct (GGUF, de-quantised to bf16),
``llama3-8b-shape`` = a randomly initialised model with Llama-3-8B's configuration (32 layers, d 4096,
FFN 14336, 32 query / 8 KV heads, vocabulary 128,256), built from the config directly on the GPU.
``--tiny`` replaces both with one 2-layer model.

Per model, on random token ids (the numbers do not depend on the text):

* ``derta``: LoRA (r 16, all linear layers), bf16 weights, gradient checkpointing, the DeRTa loss
  (:func:`safeft.derta.loss.derta_loss`; half the rows MLE, half RTO with keep ratio 0.25) and an
  AdamW step on the adapters;
* ``asft``: LoRA (r 8 on q_proj/v_proj), the task cross-entropy at answer positions plus the AsFT
  penalty (:class:`safeft.asft.penalty.AsFTPenalty`, svd projector, k 8, a random orthonormal
  direction), AdamW;
* ``generate``: greedy batched generation of a fixed number of new tokens (``min_new_tokens`` =
  ``max_new_tokens``).

Reported: tokens/s (training: input tokens per second of optimizer steps after ``--warmup`` steps;
generation: new tokens per second over the batch), peak GPU memory (``torch.cuda.max_memory_allocated``
per case), and MFU = achieved model FLOP/s / the card's dense bf16 peak. Model FLOPs per trained token
are ``4 N`` for LoRA (forward 2N + the input-gradient half of the backward 2N; frozen weights get no
weight gradient; gradient-checkpointing recompute and attention FLOPs are not counted) with ``N`` the
base model's non-embedding parameters; generation counts ``2 N`` per new token. The JSON goes to
``--out`` (default ``$OUT``, else ``bench/results``) as ``gpu_check.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

#: dense bf16 peak FLOP/s by card name fragment (no sparsity)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}

LLAMA3_8B = {
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
}
#: SmolLM2-135M-Instruct's configuration (the embedded default), for a random model of its shape when the
#: GGUF file is not installed (it is 98 MB; timings depend on the shape, not on the weights)
SMOLLM2_135M = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
}
TINY = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
}


def random_llama(shape: dict, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A ``LlamaForCausalLM`` with the given config, randomly initialised directly on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.to(device=device, dtype=dtype)


def non_embedding_params(model: torch.nn.Module) -> int:
    """Parameters of the decoder layers and the LM head (token embeddings are a lookup, no FLOPs)."""
    embed = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not embed) + (
        embed.numel() if model.config.tie_word_embeddings else 0
    )


def synthetic_batch(vocab: int, batch: int, seq: int, refusal_id: int, device: torch.device, seed: int):
    """Random ids; rows alternate MLE (answer = second half) and RTO (second half -> refusal token)."""
    from safeft.data.chat import IGNORE, KIND_MLE, KIND_NONE, KIND_RTO

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    targets = torch.full_like(ids, IGNORE)
    kinds = torch.full_like(ids, KIND_NONE)
    half = seq // 2
    for row in range(batch):
        if row % 2 == 0:
            targets[row, half - 1 : -1] = ids[row, half:]
            kinds[row, half - 1 : -1] = KIND_MLE
        else:
            targets[row, half - 1 : -1] = refusal_id
            kinds[row, half - 1 : -1] = KIND_RTO
    batch_dict = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "targets": targets,
        "kinds": kinds,
    }
    return {k: v.to(device) for k, v in batch_dict.items()}


def random_direction(model: torch.nn.Module, k: int, seed: int = 0):
    """A direction with random orthonormal U_k / W_k per LoRA layer (cheap at 8B scale, unlike SVDs)."""
    from safeft.asft.direction import Direction, LayerDirection
    from safeft.asft.penalty import find_lora_layers

    g = torch.Generator().manual_seed(seed)
    layers = {}
    for name, module in find_lora_layers(model).items():
        d_out, d_in = module.get_base_layer().weight.shape
        U = torch.linalg.qr(torch.randn(d_out, k, generator=g)).Q
        W = torch.linalg.qr(torch.randn(d_in, k, generator=g)).Q
        S = torch.linspace(1.0, 0.1, k) * 1e-2
        fro = float(S.norm())
        layers[name] = LayerDirection(name, (d_out, d_in), U, S, fro, 1.0, 1.0, F=U * S, W=W)
    return Direction(layers, {"targets": ["q_proj", "v_proj"], "aligned": "random (gpu_check)"})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def time_steps(step, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of ``step()`` averaged over ``steps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def train_case(base, method: str, args, device, refusal_id: int) -> dict:
    """LoRA training steps of ``method`` (derta | asft) on ``base``; returns tokens/s, memory, MFU."""
    from safeft.derta.loss import derta_loss
    from safeft.training.base import LoraSettings, add_lora
    from safeft.training.token_loss import token_losses

    if method == "derta":
        lora = LoraSettings(r=16, alpha=32)
    else:
        lora = LoraSettings(r=8, alpha=32, target_modules=["q_proj", "v_proj"])
    flops_per_token = 4 * non_embedding_params(base)  # counted before the adapters exist
    model = add_lora(base, lora)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    penalty = None
    if method == "asft":
        from safeft.asft.penalty import AsFTPenalty

        penalty = AsFTPenalty(model, random_direction(model, k=8), check_weights=False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    vocab = model.get_input_embeddings().weight.shape[0]
    batch = synthetic_batch(vocab, args.batch, args.seq, refusal_id, device, seed=0)

    def step() -> None:
        if method == "derta":
            loss = derta_loss(model, batch, rto_keep_ratio=0.25).loss
        else:
            select = batch["targets"] >= 0
            losses, _ = token_losses(
                model, batch["input_ids"], batch["attention_mask"], batch["targets"], select
            )
            loss = losses.mean() + penalty()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    _reset_peak(device)
    seconds = time_steps(step, args.steps, args.warmup, device)
    tokens = args.batch * args.seq
    result = {
        "method": method,
        "lora_r": lora.r,
        "trainable_params": sum(p.numel() for p in params),
        "batch": args.batch,
        "seq_len": args.seq,
        "seconds_per_step": round(seconds, 4),
        "tokens_per_s": round(tokens / seconds, 1),
        "peak_gpu_mem_gib": _peak_gib(device),
        "flops_per_token": flops_per_token,
    }
    result["mfu"] = _mfu(result["flops_per_token"] * tokens / seconds, args)
    model.unload()  # back to the plain base model for the next case
    return result


def generate_case(model, args, device) -> dict:
    """Greedy batched generation of exactly ``--new-tokens`` tokens per row."""
    model.eval()
    vocab = model.get_input_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (args.gen_batch, args.prompt_len), generator=g).to(device)
    kwargs = {
        "max_new_tokens": args.new_tokens,
        "min_new_tokens": args.new_tokens,
        "do_sample": False,
        "pad_token_id": 0,
    }

    def step() -> None:
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)

    _reset_peak(device)
    seconds = time_steps(step, 1, 1, device)
    new = args.gen_batch * args.new_tokens
    flops = 2 * non_embedding_params(model)
    return {
        "batch": args.gen_batch,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "seconds": round(seconds, 3),
        "new_tokens_per_s": round(new / seconds, 1),
        "peak_gpu_mem_gib": _peak_gib(device),
        "mfu": _mfu(flops * new / seconds, args),
    }


def _mfu(flops_per_s: float, args) -> float | None:
    return round(flops_per_s / args.peak_flops, 4) if args.peak_flops else None


def card_peak(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return platform.processor() or "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, next((v for k, v in PEAK_BF16.items() if k in name), None)


def load_models(args, device, dtype):
    """(name, model, refusal token id) per model of the check, built one at a time (a generator), so a
    model's peak memory never includes the next one's weights."""
    if args.tiny:
        yield "tiny-llama", random_llama(TINY, device, dtype), 7
        return
    from safeft.models import ModelNotFoundError, embedded_gguf_path, load_model_and_tokenizer

    try:
        embedded_gguf_path("smollm2-135m-instruct")
    except ModelNotFoundError:  # not installed: the same shape, random weights
        yield "smollm2-135m-shape (random init)", random_llama(SMOLLM2_135M, device, dtype), 1
    else:
        small, tok = load_model_and_tokenizer("smollm2-135m-instruct", dtype)
        refusal = tok("Sorry", add_special_tokens=False)["input_ids"][0]
        yield "smollm2-135m", small.to(device), refusal
        del small
    yield "llama3-8b-shape", random_llama(LLAMA3_8B, device, dtype), 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="one tiny random Llama (CPU-friendly; for tests)")
    p.add_argument("--out", help="output folder (default: $OUT, else bench/results)")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--batch", type=int, help="training rows per step (default 8; tiny 2)")
    p.add_argument("--seq", type=int, help="training sequence length (default 1024; tiny 32)")
    p.add_argument("--steps", type=int, help="timed optimizer steps (default 5; tiny 2)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--gen-batch", type=int, help="generation batch (default 32; tiny 2)")
    p.add_argument("--prompt-len", type=int, help="generation prompt length (default 256; tiny 8)")
    p.add_argument("--new-tokens", type=int, help="new tokens per row (default 128; tiny 4)")
    p.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak (default: by name)")
    args = p.parse_args(argv)
    defaults = (
        {"batch": 2, "seq": 32, "steps": 2, "gen_batch": 2, "prompt_len": 8, "new_tokens": 4}
        if args.tiny
        else {"batch": 8, "seq": 1024, "steps": 5, "gen_batch": 32, "prompt_len": 256, "new_tokens": 128}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    card, peak = card_peak(device)
    args.peak_flops = args.peak_tflops * 1e12 if args.peak_tflops else peak
    torch.manual_seed(0)
    report: dict = {
        "card": card,
        "dtype": str(dtype).removeprefix("torch."),
        "peak_bf16_flops": args.peak_flops,
        "torch": torch.__version__,
        "tiny": args.tiny,
        "models": {},
    }
    for name, model, refusal_id in load_models(args, device, dtype):
        entry = {"params": sum(p.numel() for p in model.parameters())}
        for method in ("derta", "asft"):
            entry[method] = train_case(model, method, args, device, refusal_id)
            print(f"{name} {method}: {json.dumps(entry[method])}", flush=True)
        entry["generate"] = generate_case(model, args, device)
        print(f"{name} generate: {json.dumps(entry['generate'])}", flush=True)
        report["models"][name] = entry
        del model  # freed before the generator builds the next model
        _reset_peak(device)
    out = Path(args.out or os.environ.get("OUT") or Path(__file__).parent / "results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'gpu_check.json'}")
    return report


if __name__ == "__main__":
    main()
