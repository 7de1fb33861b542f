"""Run by test_distributed.py under torchrun / accelerate launch: a recipe's ``train_derta`` or
``train_asft`` (the whole method: data, self-distillation, the before/after check, training, saving,
merging), watched from inside each process. Every rank writes to REPORT_DIR:

* ``rank<R>.safetensors``: its trainable weights right after training (gathered into full tensors when
  the model is sharded, so ranks can be compared);
* ``rank<R>.json``: what it saw (world size, steps, rows, whether the model was sharded and how often the
  LM head ran inside the forward) and every file it opened for writing under the run's output_dir or the
  self-distillation cache (a ``sys.audit`` hook), with the time it returned.

Usage: python dist_train.py RECIPE REPORT_DIR
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

import safeft.training.token_loss as token_loss
from safeft.config import from_dict
from safeft.training.base import SafeFTTrainer

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def watch_writes(roots: list[Path], writes: list[str]) -> None:
    """Append to ``writes`` every path under ``roots`` that Python code opens for writing."""
    prefixes = [str(r.resolve()) + os.sep for r in roots]

    def hook(event: str, args: tuple) -> None:
        if event != "open" or not isinstance(args[0], (str, os.PathLike)):
            return
        mode, flags = args[1], args[2]
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & WRITE_FLAGS)
        if not writing:
            return
        path = os.path.abspath(os.fspath(args[0]))
        for prefix in prefixes:
            if path.startswith(prefix):
                writes.append(path)

    sys.addaudithook(hook)


def count_head_in_forward(seen: dict) -> None:
    """Count the calls of the sparse-head path that runs the LM head inside the model's forward."""
    inner = token_loss._logits_from_forward

    def counted(*args, **kwargs):
        seen["head_in_forward_calls"] += 1
        return inner(*args, **kwargs)

    token_loss._logits_from_forward = counted


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters as full tensors (a DTensor shard or a ZeRO-3 partition is all-gathered: every
    rank must call)."""
    weights = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if hasattr(p, "ds_id"):  # DeepSpeed ZeRO-3: the parameter is a partition until gathered
            import deepspeed

            with deepspeed.zero.GatheredParameters([p]):
                value = p.detach().float().cpu().clone().contiguous()
        else:
            value = (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().float().cpu().clone()
        weights[name.removeprefix("module.")] = value.contiguous()
    return weights


def record_training(seen: dict, report: Path, rank: int) -> None:
    """After ``trainer.train``: this rank's weights and what its trainer looked like."""
    inner = SafeFTTrainer.train

    def train(self, *args, **kwargs):
        result = inner(self, *args, **kwargs)
        save_file(full_weights(self.model), str(report / f"rank{rank}.safetensors"))
        seen.update(
            world_size=self.args.world_size,
            steps=self.state.global_step,
            rows=len(self.train_dataset),
            sharded=token_loss.is_sharded(self.model),
            fsdp=bool(getattr(self, "is_fsdp_enabled", False)),
            distributed_type=str(self.accelerator.distributed_type),
        )
        return result

    SafeFTTrainer.train = train


def train(recipe: str, data: dict) -> None:
    """``train_derta`` or ``train_asft`` on the recipe (``method:`` says which)."""
    method = data.pop("method")
    if method == "derta":
        from safeft.derta.trainer import DeRTaConfig, train_derta

        train_derta(from_dict(DeRTaConfig, data, where=recipe))
    elif method == "asft":
        from safeft.asft.trainer import AsFTConfig, train_asft

        train_asft(from_dict(AsFTConfig, data, where=recipe))
    else:
        raise ValueError(f"{recipe}: method must be derta or asft, got {method!r}")


def main(recipe: str, report_dir: str) -> None:
    rank = int(os.environ["RANK"])
    report = Path(report_dir)
    data = yaml.safe_load(Path(recipe).read_text())
    roots = [Path(data["output_dir"])] + ([Path(data["cache_dir"])] if data.get("cache_dir") else [])
    for root in roots:
        root.mkdir(parents=True, exist_ok=True)
    writes: list[str] = []
    seen: dict = {"head_in_forward_calls": 0}
    count_head_in_forward(seen)
    record_training(seen, report, rank)
    watch_writes(roots, writes)
    train(recipe, data)
    seen.update(returned_at=time.time(), writes=writes)
    (report / f"rank{rank}.json").write_text(json.dumps(seen, indent=1))
    print(f"rank {rank} of {seen.get('world_size')}: {seen.get('steps')} steps", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
