"""AsFT training-step time relative to plain LoRA, next to a naive d x d implementation, in one run.

    python bench/bench_asft_step.py [--model smollm2-135m-instruct] [--batch-size 8] [--seq-len 128]
                                    [--rounds 8] [--warmup 2] [--rank 8] [--threads N]
                                    [--out bench/results/bench_asft_step.json]

One training step = forward, loss, backward and an AdamW update of the LoRA parameters (r 8, alpha
32 on q_proj/v_proj: the paper's defaults) on a fixed random batch. Variants, measured interleaved
round by round (so CPU contention from other processes hits them alike), median step time each:

* ``plain``: token cross-entropy only (plain LoRA);
* ``asft_svd``: + lambda * the factorised penalty (``safeft.asft.penalty.AsFTPenalty``, C = U_k U_k^T);
* ``asft_paper``: + the factorised ``paper`` penalty (C = V V^T / ||V||_F through its left factor);
* ``naive``: + lambda * sum ||dW - C dW||_F^2 with dW = s B A formed and C (d_out x d_out) kept per
  layer, as the official code does.

The direction is synthetic (a random rank-64 V per layer): step time does not depend on its values.
Target: asft_svd / plain <= 1.05. Also reported: the median of per-round ratios (robust to load
drifting between rounds) and the penalty's own forward+backward time, whose share of a plain step
is the overhead with timing noise removed (``1 + f+b / plain``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from safeft.asft.direction import Direction, LayerDirection
from safeft.asft.penalty import AsFTPenalty, find_lora_layers
from safeft.asft.spectral import dense_spectrum
from safeft.models import DEFAULT_MODEL, load_model, resolve_model
from safeft.training.base import LoraSettings, add_lora


def synthetic_direction(model: torch.nn.Module, rank: int, seed: int = 0) -> Direction:
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for name, module in find_lora_layers(model).items():
        W = module.get_base_layer().weight
        d_out, d_in = W.shape
        V = torch.randn(d_out, 64, generator=g) @ torch.randn(64, d_in, generator=g) * 1e-3
        spec = dense_spectrum(V)
        layers[name] = LayerDirection(
            name=name,
            shape=(d_out, d_in),
            U=spec.U[:, :rank].contiguous(),
            S=spec.S,
            F=spec.left_factor().contiguous(),
            fro_norm=spec.fro_sq**0.5,
            aligned_norm=float(W.norm()),
            unaligned_norm=float(W.norm()),
        )
    return Direction(layers, {"targets": ["q_proj", "v_proj"], "aligned": "synthetic"})


class NaivePenalty:
    """The official code's regulariser: dense C (d_out x d_out) per layer, dW formed every step."""

    def __init__(self, model: torch.nn.Module, direction: Direction):
        self.items = []
        for name, module in find_lora_layers(model).items():
            W = module.get_base_layer().weight
            C = direction.layers[name].projector("svd").dense().to(W.device, torch.float32)
            self.items.append((module, C, float(module.scaling["default"])))

    def __call__(self) -> torch.Tensor:
        total = torch.zeros((), device=self.items[0][1].device)
        for module, C, s in self.items:
            dW = s * (module.lora_B["default"].weight @ module.lora_A["default"].weight)
            total = total + torch.linalg.norm(dW - C @ dW) ** 2
        return total


def make_step(model, optimizer, batch, penalty: Callable[[], torch.Tensor] | None, lam: float = 1.0):
    def step() -> None:
        out = model(input_ids=batch, labels=batch, use_cache=False)
        loss = out.loss if penalty is None else out.loss + lam * penalty()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], None], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rank", type=int, default=8, help="k of the svd projector")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", default="bench/results/bench_asft_step.json")
    args = ap.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model(resolve_model(args.model), dtype=torch.float32)
    model = add_lora(model, LoraSettings(r=8, alpha=32, target_modules=["q_proj", "v_proj"])).to(device)
    with torch.no_grad():  # B = 0 at init would make every penalty trivially 0; time a trained state
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1e-2)
    model.train()
    direction = synthetic_direction(model, args.rank)
    penalties: dict[str, Callable[[], torch.Tensor] | None] = {
        "plain": None,
        "asft_svd": AsFTPenalty(model, direction, "svd", check_weights=False),
        "asft_paper": AsFTPenalty(model, direction, "paper", check_weights=False),
        "naive": NaivePenalty(model, direction),
    }
    vocab = model.get_input_embeddings().weight.shape[0]
    batch = torch.randint(
        0, vocab, (args.batch_size, args.seq_len), generator=torch.Generator().manual_seed(0)
    )
    batch = batch.to(device)
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-6)
    steps = {name: make_step(model, optimizer, batch, pen) for name, pen in penalties.items()}

    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.warmup + args.rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for name in order:
            t = timed(steps[name], device)
            if r >= args.warmup:
                times[name].append(t)
        with torch.no_grad():  # keep every variant stepping from the same weights
            for n, p in model.named_parameters():
                if n in state:
                    p.copy_(state[n])

    penalty_only = {}
    for name in ("asft_svd", "asft_paper", "naive"):
        pen = penalties[name]
        assert pen is not None
        samples = [timed(lambda pen=pen: pen().backward(), device) for _ in range(args.rounds + 2)][2:]
        penalty_only[name] = statistics.median(samples)
        optimizer.zero_grad(set_to_none=True)

    median = {name: statistics.median(ts) for name, ts in times.items()}
    # per-round ratios: both steps of a round ran back to back, so they share the machine's load
    paired = {
        name: statistics.median(t / p for t, p in zip(ts, times["plain"], strict=True))
        for name, ts in times.items()
    }
    result = {
        "model": args.model,
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or platform.machine()
        ),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "lora": {
            "r": 8,
            "alpha": 32,
            "targets": ["q_proj", "v_proj"],
            "layers": len(find_lora_layers(model)),
        },
        "k": args.rank,
        "rounds": args.rounds,
        "median_step_s": median,
        "ratio_to_plain": {name: median[name] / median["plain"] for name in median},
        "paired_ratio_to_plain": paired,
        "penalty_fwd_bwd_s": penalty_only,
        "penalty_share_of_plain_step": {name: t / median["plain"] for name, t in penalty_only.items()},
        "all_step_s": times,
        "target": "asft_svd / plain <= 1.05",
    }
    print(f"{args.model} on {device} ({result['device_name']}), batch {args.batch_size} x {args.seq_len}")
    print(
        f"{'variant':<12}{'median step (s)':>17}{'/ plain':>10}{'paired / plain':>16}"
        f"{'penalty f+b (ms)':>19}{'1 + f+b / plain':>17}"
    )
    for name in steps:
        pen_ms = f"{1e3 * penalty_only[name]:.2f}" if name in penalty_only else "-"
        share = f"{1 + penalty_only[name] / median['plain']:.4f}" if name in penalty_only else "-"
        print(
            f"{name:<12}{median[name]:>17.4f}{result['ratio_to_plain'][name]:>10.3f}{paired[name]:>16.3f}"
            f"{pen_ms:>19}{share:>17}"
        )
    ok = result["ratio_to_plain"]["asft_svd"] <= 1.05
    print(f"target asft_svd / plain <= 1.05: {'met' if ok else 'NOT met'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
