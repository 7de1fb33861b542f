"""Run by test_distributed.py under torchrun (2 CPU processes, gloo): the sparse-head loss and the
saving path of safeft on a LoRA model sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``).

accelerate applies FSDP only on GPUs, so on the CPU this drives torch's FSDP2 directly. Each rank trains
the sharded model on its own batch, and, in the same process, an unsharded copy on both ranks' batches
(mean loss): the same data-parallel step. Checked here, with the results written to
REPORT_DIR/rank<R>.json and the gathered weights to rank<R>.safetensors:

* ``is_sharded`` flips on the same object when ``fully_shard`` shards it in place;
* the loss takes the head-inside-the-forward path and its per-token losses match the unsharded model's;
* after a few SGD steps every trained weight (gathered) matches the unsharded copy's;
* ``trained_model`` (run_trainer's step after training) gathers the weights on every rank and rebuilds
  the model whole on rank 0 only; ``save_run`` saves ``adapter/`` and ``merged/`` from it, and the test
  compares them with the unsharded copy.

Usage: python dist_fsdp.py MODEL_DIR REPORT_DIR
"""

from __future__ import annotations

import copy
import json
import sys
import types
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM, AutoTokenizer

import safeft.training.token_loss as token_loss
from safeft.training.base import (
    LoraSettings,
    TrainConfig,
    add_lora,
    gathered_weights,
    save_run,
    trained_model,
)

LORA = LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
STEPS = 3
LR = 0.5


def batch(seed: int, vocab: int) -> dict[str, torch.Tensor]:
    """A padded batch of 2 rows (the second shorter) with about half of the real positions selected."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (2, 16), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 11:] = 0
    select = (torch.rand(2, 16, generator=g) > 0.5) & attention_mask.bool()
    targets = torch.randint(0, vocab, (2, 16), generator=g)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "targets": targets, "select": select}


def mean_loss(model: torch.nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
    losses, _ = token_loss.token_losses(model, b["input_ids"], b["attention_mask"], b["targets"], b["select"])
    return losses.mean()


def sgd_step(model: torch.nn.Module, lr: float = LR) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)
                p.grad = None


def finish(report: Path, seen: dict, what: str) -> None:
    """Write this rank's report, wait for the other rank, leave the process group."""
    rank, world = dist.get_rank(), dist.get_world_size()
    (report / f"rank{rank}.json").write_text(json.dumps(seen, indent=1))
    dist.barrier()
    dist.destroy_process_group()
    print(f"rank {rank} of {world}: {what}", flush=True)


def full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor all-gathered (a collective), a plain tensor as is."""
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach()


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: full(p).clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def shard(model: torch.nn.Module, world: int) -> None:
    """FSDP2 as accelerate applies it: each decoder layer, then the root."""
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.base_model.model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def count_head_in_forward(seen: dict) -> None:
    inner = token_loss._logits_from_forward

    def counted(*args, **kwargs):
        seen["head_in_forward_calls"] += 1
        return inner(*args, **kwargs)

    token_loss._logits_from_forward = counted


def save_from_gathered(model_dir: str, out: Path, model: torch.nn.Module, tokenizer, seen: dict) -> None:
    """run_trainer's steps after ``trainer.train`` on a trainer stand-in holding the sharded model:
    ``trained_model`` gathers on every rank and rebuilds on rank 0, ``save_run`` saves there."""
    config = TrainConfig(model=model_dir, output_dir=str(out), lora=LORA, dtype="fp32")
    out.mkdir(parents=True, exist_ok=True)
    trainer = types.SimpleNamespace(
        model=model,
        model_wrapped=model,
        accelerator=None,
        is_world_process_zero=lambda: dist.get_rank() == 0,
        state=types.SimpleNamespace(log_history=[{"step": STEPS}]),
    )
    seen["gathered_names"] = len(gathered_weights(model))  # what trained_model gathers, on this rank
    trained = trained_model(trainer, config)
    seen["trained_model_returned"] = trained is not None
    if trained is None:
        return

    def after_train(trainer, whole) -> None:
        seen["after_train_model_sharded"] = token_loss.is_sharded(whole)

    save_run(config, trainer, trained, tokenizer, after_train)


def main(model_dir: str, report_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    report = Path(report_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    model = add_lora(AutoModelForCausalLM.from_pretrained(model_dir), LORA)
    reference = copy.deepcopy(model)
    vocab = model.config.vocab_size
    batches = [batch(100 + r, vocab) for r in range(world)]
    seen: dict = {"head_in_forward_calls": 0, "sharded_before": token_loss.is_sharded(model)}
    shard(model, world)
    seen["sharded_after"] = token_loss.is_sharded(model)
    seen["reference_sharded"] = token_loss.is_sharded(reference)
    count_head_in_forward(seen)
    for step in range(STEPS):
        b = batches[rank]
        with torch.no_grad():  # the per-token losses of this rank's batch, sharded vs unsharded
            got, _ = token_loss.token_losses(
                model, b["input_ids"], b["attention_mask"], b["targets"], b["select"]
            )
            calls = seen["head_in_forward_calls"]
            want, _ = token_loss.token_losses(
                reference, b["input_ids"], b["attention_mask"], b["targets"], b["select"]
            )
        assert seen["head_in_forward_calls"] == calls, "the unsharded copy ran the head inside the forward"
        torch.testing.assert_close(
            got, want, rtol=1e-5, atol=1e-5, msg=lambda m, s=step: f"step {s} losses: {m}"
        )
        mean_loss(model, batches[rank]).backward()  # FSDP averages the gradient over the ranks
        (sum(mean_loss(reference, b) for b in batches) / world).backward()
        sgd_step(model)
        sgd_step(reference)
    sharded_weights, reference_weights = trainable(model), trainable(reference)
    for name, value in reference_weights.items():
        torch.testing.assert_close(
            sharded_weights[name], value, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}"
        )
    seen["lora_B_moved"] = any(v.abs().sum().item() > 0 for n, v in sharded_weights.items() if "lora_B" in n)
    save_file(sharded_weights, str(report / f"rank{rank}.safetensors"))
    if rank == 0:
        reference.save_pretrained(report / "reference_adapter")
        reference.merge_and_unload().save_pretrained(report / "reference_merged")
    save_from_gathered(model_dir, report / "run", model, tokenizer, seen)
    finish(report, seen, f"{STEPS} FSDP2 steps")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
