"""Run by test_distributed.py under torchrun (2 CPU processes, gloo): AsFT's penalty on a LoRA model
sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``), driven directly as in dist_fsdp.py
(accelerate shards only on GPUs).

The penalty is bound to the whole model (as ``train_asft`` binds it, before the Trainer's accelerator
shards the model), then the model is sharded: outside the forward its LoRA factors are DTensor shards.
Each rank trains the sharded model on its own batch with ``task loss + LAMBDA (penalty + anti-direction
term)``, and an unsharded copy, in the same process, on both ranks' batches (mean task loss, the same
penalty): the same data-parallel step. Checked here, with the numbers written to REPORT_DIR/rank<R>.json
and the trained weights (gathered) to rank<R>.safetensors:

* the penalty and the anti-direction term of the sharded model equal the unsharded copy's at every step;
* after a few SGD steps every trained weight matches the unsharded copy's (the penalty's gradient reaches
  each rank's shard once, beside FSDP's averaged task gradient).

Usage: python dist_fsdp_asft.py MODEL_DIR REPORT_DIR
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from dist_fsdp import LORA, batch, finish, mean_loss, sgd_step, shard, trainable
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from safeft.asft.build import DirectionRequest, compute_direction
from safeft.asft.direction import Direction
from safeft.asft.penalty import AsFTPenalty
from safeft.training.base import add_lora
from safeft.training.token_loss import is_sharded

from conftest import randomise_lora_b

STEPS = 3
LAMBDA = 0.5
LR = 0.05  # small enough that the penalty shrinks step by step (dist_fsdp.py's 0.5 diverges here)


def build_direction(model_dir: str, folder: Path) -> None:
    """V = W_aligned - W_original on q/v, the "aligned" model a seeded perturbation of the original;
    saves ``aligned/`` (the model AsFT fine-tunes) and ``direction/``."""
    aligned = AutoModelForCausalLM.from_pretrained(model_dir)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in aligned.named_parameters():
            if "q_proj" in name or "v_proj" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    aligned.save_pretrained(folder / "aligned")
    request = DirectionRequest(str(folder / "aligned"), model_dir, ["q_proj", "v_proj"], rank=2, paper=True)
    compute_direction(request).save(folder / "direction")


def objective(model, penalty: AsFTPenalty, batches: list[dict]) -> tuple[torch.Tensor, float, float]:
    task = sum(mean_loss(model, b) for b in batches) / len(batches)
    value, anti = penalty(), penalty.anti_direction()
    return task + LAMBDA * (value + anti), value.item(), anti.item()


def main(model_dir: str, report_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    report = Path(report_dir)
    if rank == 0:
        build_direction(model_dir, report)
    dist.barrier()
    direction = Direction.load(report / "direction")
    torch.manual_seed(0)
    # PEFT starts B at 0 (no update, zero penalty): start from a real update
    model = randomise_lora_b(add_lora(AutoModelForCausalLM.from_pretrained(report / "aligned"), LORA), seed=5)
    reference = copy.deepcopy(model)
    penalty = AsFTPenalty(model, direction, "svd", anti_direction=True)
    reference_penalty = AsFTPenalty(reference, direction, "svd", anti_direction=True)
    vocab = model.config.vocab_size
    batches = [batch(100 + r, vocab) for r in range(world)]
    shard(model, world)
    seen: dict = {"sharded": is_sharded(model), "penalty": [], "reference_penalty": [], "anti": []}
    for _ in range(STEPS):
        loss, value, anti = objective(model, penalty, [batches[rank]])
        loss.backward()  # FSDP averages the task gradient; the penalty's is the same on every rank
        ref_loss, ref_value, ref_anti = objective(reference, reference_penalty, batches)
        ref_loss.backward()
        seen["penalty"].append(value)
        seen["reference_penalty"].append(ref_value)
        seen["anti"].append([anti, ref_anti])
        sgd_step(model, LR)
        sgd_step(reference, LR)
    sharded_weights, reference_weights = trainable(model), trainable(reference)
    seen["max_weight_difference"] = max(
        (sharded_weights[n] - v).abs().max().item() for n, v in reference_weights.items()
    )
    seen["penalty_fell"] = seen["penalty"][-1] < seen["penalty"][0]
    save_file(sharded_weights, str(report / f"rank{rank}.safetensors"))
    if rank == 0:
        save_file(reference_weights, str(report / "reference.safetensors"))
    finish(report, seen, f"{STEPS} FSDP2 AsFT steps")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
