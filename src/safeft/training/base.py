"""What every safeft training method shares: the common config, a ``transformers.Trainer`` subclass
that logs a method's own metrics, LoRA set-up, checkpoint resume, and saving adapter + merged model.

A method (DeRTa, AsFT) subclasses :class:`TrainConfig` for its fields and :class:`SafeFTTrainer`,
implementing only ``compute_objective(model, inputs) -> (loss, metrics)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from safeft.config import ConfigError, save_recipe
from safeft.data.chat import IGNORE, KIND_NONE, Example
from safeft.models import DEFAULT_MODEL, load_model_and_tokenizer, save_model

log = logging.getLogger(__name__)


@dataclass
class LoraSettings:
    """PEFT LoRA: ``dW = (alpha / r) B A`` on each module named in ``target_modules``."""

    enabled: bool = True
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class TrainConfig:
    """Fields common to every training recipe (TRL-style: one flat dataclass per method)."""

    model: str = DEFAULT_MODEL
    chat_template: str | None = None
    system_prompt: str | None = None
    trust_remote_code: bool = False
    output_dir: str = "runs/train"
    data_dir: str | None = None  # where named data sources look first, e.g. ../shared/data
    lora: LoraSettings = field(default_factory=LoraSettings)
    learning_rate: float = 2e-4
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.03
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 512
    precision: str = "auto"  # auto | bf16 | fp32 ; auto = bf16 on GPUs that have it, else fp32
    group_by_length: bool = True
    logging_steps: int = 5
    save_steps: int = 50
    save_total_limit: int = 2
    seed: int = 42
    resume: str = "auto"  # auto (newest checkpoint in output_dir, if any) | never | a checkpoint path
    merge: bool = True
    report_to: list[str] = field(default_factory=list)
    dataloader_num_workers: int = 0

    def validate(self) -> None:
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.max_length < 8:
            raise ConfigError(f"max_length must be >= 8, got {self.max_length}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.lora.enabled and self.lora.r < 1:
            raise ConfigError(f"lora.r must be >= 1, got {self.lora.r}")


def has_accelerator() -> bool:
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or torch.backends.mps.is_available() or bool(xpu and xpu.is_available())


def use_bf16(precision: str) -> bool:
    if precision == "bf16":
        return True
    if precision == "fp32":
        return False
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


class PaddingCollator:
    """Right-pads ``input_ids`` / ``targets`` / ``kinds`` to the longest row of the batch."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8) -> None:
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(r["input_ids"]) for r in rows)
        longest = int(math.ceil(longest / self.multiple) * self.multiple)
        n = len(rows)
        batch = {
            "input_ids": torch.full((n, longest), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((n, longest), dtype=torch.long),
            "targets": torch.full((n, longest), IGNORE, dtype=torch.long),
            "kinds": torch.full((n, longest), KIND_NONE, dtype=torch.long),
        }
        for i, r in enumerate(rows):
            m = len(r["input_ids"])
            batch["input_ids"][i, :m] = torch.as_tensor(r["input_ids"])
            batch["attention_mask"][i, :m] = 1
            batch["targets"][i, :m] = torch.as_tensor(r["targets"])
            batch["kinds"][i, :m] = torch.as_tensor(r["kinds"])
        return batch


class SafeFTTrainer(Trainer):
    """A ``Trainer`` whose loss comes from ``compute_objective`` and whose extra metrics are logged.

    ``compute_objective`` returns the scalar loss of one micro-batch (a mean; the Trainer divides it by
    the gradient-accumulation steps) and a dict of detached metrics, averaged over the micro-batches
    between two log lines.
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metric_sums: dict[str, float] = defaultdict(float)
        self._metric_counts: dict[str, int] = defaultdict(int)

    def compute_objective(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float | None]]:
        raise NotImplementedError

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        loss, metrics = self.compute_objective(model, inputs)
        if model.training:
            for name, value in metrics.items():
                if value is not None:
                    self._metric_sums[name] += float(value)
                    self._metric_counts[name] += 1
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            for name, total in self._metric_sums.items():
                logs[name] = round(total / self._metric_counts[name], 4)
            self._metric_sums.clear()
            self._metric_counts.clear()
        super().log(logs, start_time)


@contextlib.contextmanager
def original_weights(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run with LoRA switched off (the model as it was before training) when it has adapters."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        yield model


def load_for_training(config: TrainConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model (with LoRA adapters if enabled) and tokenizer of a recipe."""
    config.validate()
    set_seed(config.seed)
    model, tokenizer = load_model_and_tokenizer(
        config.model, chat_template=config.chat_template, trust_remote_code=config.trust_remote_code
    )
    if config.lora.enabled:
        model = add_lora(model, config.lora)
    return model, tokenizer


def add_lora(model: PreTrainedModel, settings: LoraSettings) -> PreTrainedModel:
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in settings.target_modules if t not in names]
    if missing:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        )
        raise ConfigError(
            f"lora.target_modules {missing} match no module of the model; linear modules: {linear}"
        )
    lora = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def training_arguments(config: TrainConfig, **overrides: Any) -> TrainingArguments:
    kwargs: dict[str, Any] = {
        "output_dir": str(Path(config.output_dir) / "checkpoints"),
        "learning_rate": config.learning_rate,
        "num_train_epochs": config.num_train_epochs,
        "max_steps": config.max_steps,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "warmup_steps": config.warmup_ratio,
        "lr_scheduler_type": config.lr_scheduler_type,
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "bf16": use_bf16(config.precision),
        "logging_steps": config.logging_steps,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": config.save_total_limit,
        "seed": config.seed,
        "report_to": list(config.report_to) or "none",
        "remove_unused_columns": False,
        "train_sampling_strategy": "group_by_length" if config.group_by_length else "random",
        "length_column_name": "length",
        "dataloader_num_workers": config.dataloader_num_workers,
        "ddp_find_unused_parameters": False,
        "disable_tqdm": False,
        # Without an accelerator, accelerate only sets up torchrun's process group (gloo) when told
        # that CPU is the device; otherwise each rank would silently train alone.
        "use_cpu": not has_accelerator(),
    }
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def resume_checkpoint(config: TrainConfig) -> str | None:
    if config.resume == "never":
        return None
    if config.resume != "auto":
        if not Path(config.resume).is_dir():
            raise ConfigError(f"resume: checkpoint directory {config.resume!r} not found")
        return config.resume
    checkpoints = Path(config.output_dir) / "checkpoints"
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if last:
        log.info("resuming from %s", last)
    return last


def examples_dataset(examples: list[Example]) -> datasets.Dataset:
    if not examples:
        raise ConfigError("no training rows were built; check the data sources and max_length")
    return datasets.Dataset.from_list([e.as_features() for e in examples])


def run_trainer(
    config: TrainConfig,
    trainer_cls: type[SafeFTTrainer],
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    after_train: Callable[[SafeFTTrainer], None] | None = None,
    **trainer_kwargs: Any,
) -> SafeFTTrainer:
    """Train (resuming if a checkpoint exists), save the adapter, call ``after_train(trainer)`` on the
    main process (e.g. a quick evaluation while adapters are still separate), then save the merged model."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer = trainer_cls(
        model=model,
        args=training_arguments(config),
        train_dataset=examples_dataset(examples),
        data_collator=PaddingCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        **trainer_kwargs,
    )
    if trainer.is_world_process_zero():
        save_recipe(config, out / "recipe.yaml")
    trainer.train(resume_from_checkpoint=resume_checkpoint(config))
    if trainer.is_world_process_zero():
        (out / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        model = getattr(trainer.model, "module", trainer.model)
        is_lora = hasattr(model, "peft_config")
        if is_lora:
            model.save_pretrained(out / "adapter")
            tokenizer.save_pretrained(out / "adapter")
        if after_train is not None:
            after_train(trainer)
        if not is_lora:
            save_model(model, tokenizer, out / "merged")
        elif config.merge:
            save_model(model.merge_and_unload(), tokenizer, out / "merged")
        log.info("saved to %s", out)
    return trainer
