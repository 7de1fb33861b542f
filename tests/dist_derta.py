"""Run by test_distributed.py under torchrun: DeRTa training on a tiny model, then every rank writes
its own copy of the trained LoRA weights so the test can compare them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml
from safetensors.torch import save_file

from safeft.config import from_dict
from safeft.data.chat import ChatFormat
from safeft.derta.features import build_derta_examples
from safeft.derta.trainer import DeRTaConfig, DeRTaTrainer, load_safety_data
from safeft.training.base import load_for_training, run_trainer


def main(recipe: str, out: str) -> None:
    data = yaml.safe_load(Path(recipe).read_text())
    data.pop("method")
    config = from_dict(DeRTaConfig, data)
    config.merge = False  # keep the LoRA weights on rank 0 too, for the comparison
    model, tokenizer = load_for_training(config)
    examples, _ = build_derta_examples(load_safety_data(config), [], ChatFormat(tokenizer), seed=config.seed)
    trainer = run_trainer(config, DeRTaTrainer, model, tokenizer, examples, derta_config=config)
    weights = {
        n: p.detach().clone().contiguous() for n, p in trainer.model.named_parameters() if "lora_" in n
    }
    save_file(
        {n.replace("module.", ""): w for n, w in weights.items()},
        f"{out}/rank{os.environ['RANK']}.safetensors",
    )
    print(
        f"rank {trainer.args.process_index} of {trainer.args.world_size}: {trainer.state.global_step} steps"
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
