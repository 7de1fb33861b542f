"""What every safeft training method shares: the common config, a ``transformers.Trainer`` subclass
that logs a method's own metrics, LoRA set-up, checkpoint resume, and saving adapter + merged model.

A method (DeRTa, AsFT) subclasses :class:`TrainConfig` for its fields and :class:`SafeFTTrainer`,
implementing only ``compute_objective(model, inputs) -> (loss, metrics)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import json
import logging
import math
import os
import shutil
import types
import typing
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import datasets
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from safeft.config import ConfigError, convert_value, save_recipe, to_dict
from safeft.data.chat import IGNORE, KIND_NONE, Example
from safeft.models import (
    DEFAULT_MODEL,
    LoadOptionError,
    LoadOptions,
    load_model_and_tokenizer,
    resolve_dtype,
    save_model,
)

log = logging.getLogger(__name__)


@dataclass
class LoraSettings:
    """PEFT LoRA: ``dW = (alpha / r) B A`` on each module named in ``target_modules``."""

    enabled: bool = field(
        default=True, metadata={"help": "train LoRA adapters (false: full fine-tuning of every weight)"}
    )
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: int = field(default=16, metadata={"help": "LoRA alpha; the update is scaled by alpha / r"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "module names (last part) that get adapters"},
    )


@dataclass
class TrainConfig:
    """Fields common to every training recipe (TRL-style: one flat dataclass per method). Any other
    ``transformers.TrainingArguments`` goes in ``trainer:`` (checked when the recipe is read). The
    trainer gets ``arguments_class(**training_arguments_kwargs(config), **config.method_arguments())``:
    a method whose trainer reads its own settings from ``args`` (DeRTa, AsFT) names its
    ``TrainingArguments`` subclass and the fields it adds."""

    arguments_class: ClassVar[type[TrainingArguments]] = TrainingArguments

    model: str = field(
        default=DEFAULT_MODEL, metadata={"help": "model: safeft's name, a hub id or a local folder"}
    )
    chat_template: str | None = field(
        default=None, metadata={"help": "Jinja chat template (text or file); None: the tokenizer's"}
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "system prompt of every training conversation"}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "let transformers run code from the model's repository"}
    )
    output_dir: str = field(
        default="runs/train",
        metadata={"help": "run folder: checkpoints/, adapter/, merged/, recipe.yaml, logs"},
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "where named data sources look first, e.g. ../shared/data"}
    )
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "LoRA adapters (see lora.*)"})
    learning_rate: float = field(default=2e-4, metadata={"help": "peak learning rate"})
    num_train_epochs: float = field(
        default=1.0, metadata={"help": "passes over the training rows (when max_steps is -1)"}
    )
    max_steps: int = field(
        default=-1, metadata={"help": "optimizer steps to train; -1: num_train_epochs epochs"}
    )
    per_device_train_batch_size: int = field(
        default=8, metadata={"help": "rows per micro-batch on each device"}
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    warmup_ratio: float = field(
        default=0.03, metadata={"help": "linear warmup: share of the steps (< 1) or a number of steps"}
    )
    lr_scheduler_type: str = field(
        default="cosine", metadata={"help": "transformers scheduler: cosine, linear, constant, ..."}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay of the optimizer"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0: no clipping)"})
    max_length: int = field(
        default=512, metadata={"help": "tokens per training row (longer answers are cut)"}
    )
    precision: str = field(
        default="auto", metadata={"help": "auto | bf16 | fp32 ; auto = bf16 on GPUs that have it, else fp32"}
    )
    group_by_length: bool = field(
        default=False, metadata={"help": "batch rows of similar length (false: random, as official DeRTa)"}
    )
    logging_steps: int = field(default=5, metadata={"help": "log every N optimizer steps"})
    save_steps: int = field(default=50, metadata={"help": "save a checkpoint every N optimizer steps"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept in output_dir/checkpoints"})
    seed: int = field(default=42, metadata={"help": "seed of data order, LoRA init and sampling"})
    resume: str = field(
        default="auto",
        metadata={"help": "auto (newest checkpoint in output_dir, if any) | never | a checkpoint path"},
    )
    overwrite: bool = field(
        default=False, metadata={"help": "start afresh in an output_dir that holds a run with another recipe"}
    )
    merge: bool = field(
        default=True, metadata={"help": "also save merged/ (LoRA merged into the base weights)"}
    )
    report_to: list[str] = field(
        default_factory=list, metadata={"help": "loggers: tensorboard, wandb, ... ([]: none)"}
    )
    dataloader_num_workers: int = field(
        default=0, metadata={"help": "data loader processes (0: the main process)"}
    )
    # Real-scale loading (see safeft.models.LoadOptions and the README's "Real scale" section).
    dtype: str = field(
        default="auto",
        metadata={"help": "weights: auto | bf16 | fp16 | fp32; auto = fp32 on CPU or without LoRA"},
    )
    device_map: str | None = field(
        default=None, metadata={"help": "auto: split one model over the GPUs; None: the Trainer places it"}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "eager | sdpa | flash_attention_2 | ..."}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations in backward (less memory)"}
    )
    load_in_4bit: bool = field(
        default=False, metadata={"help": "QLoRA: NF4 base weights (pip install 'safeft[qlora]', CUDA only)"}
    )
    revision: str | None = field(
        default=None, metadata={"help": "hub ids: branch, tag or commit the weights are pinned to"}
    )
    trainer: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "more transformers.TrainingArguments, passed as given: optim, deepspeed, fsdp, ..."
        },
    )

    def __post_init__(self) -> None:
        trainer_extras(self.trainer)  # names and types: a bad key fails while the recipe is read

    def load_options(self) -> LoadOptions:
        """How the model is loaded; ``dtype: auto`` means bf16/fp16 on a CUDA GPU for LoRA runs and fp32
        otherwise (full fine-tuning keeps fp32 master weights; the Trainer's autocast does the rest)."""
        dtype = self.dtype
        if dtype == "auto" and (not self.lora.enabled or resolve_dtype("auto") == torch.float16):
            dtype = "fp32"  # fp16 weights need fp16 AMP; auto stays on the safe side
        return LoadOptions(dtype, self.device_map, self.attn_implementation, self.load_in_4bit)

    def validate_loading(self) -> None:
        """Checks of the real-scale loading fields, each naming the field and what it accepts."""
        try:
            self.load_options().validate()
        except LoadOptionError as exc:
            raise ConfigError(str(exc)) from None
        if self.dtype == "fp16" and not self.lora.enabled:
            raise ConfigError(
                "dtype fp16 needs LoRA (fp16 AMP cannot update fp16 weights); use bf16 or fp32 for "
                "full fine-tuning"
            )
        if self.load_in_4bit and not self.lora.enabled:
            raise ConfigError("load_in_4bit (QLoRA) trains LoRA adapters only; set lora.enabled: true")
        if self.device_map and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(
                f"device_map {self.device_map!r} splits one model over devices; it does not mix with "
                "multi-process training (torchrun / accelerate launch): leave device_map unset"
            )

    def check_trainer(self) -> None:
        """Build this recipe's ``TrainingArguments`` once when it has ``trainer:`` settings, so a value
        transformers rejects fails before the model loads, as a ConfigError with transformers' message."""
        if not self.trainer:
            return
        kwargs = training_arguments_kwargs(self)
        try:
            TrainingArguments(**kwargs)  # the base class: its checks are the ones a trainer: key can fail
        except Exception as exc:  # whatever TrainingArguments raises on the settings it was given
            hint = " (install the package it names)" if isinstance(exc, ImportError) else ""
            raise ConfigError(
                f"trainer ({', '.join(sorted(self.trainer))}): transformers.TrainingArguments rejects these "
                f"settings: {type(exc).__name__}: {' '.join(str(exc).split())}{hint}"
            ) from None

    def method_arguments(self) -> dict[str, Any]:
        """The fields ``arguments_class`` adds to ``TrainingArguments``, from this recipe."""
        return {}

    def hf_lr_scheduler_type(self) -> str:
        """The ``lr_scheduler_type`` handed to ``TrainingArguments``. A method whose trainer builds its
        own scheduler in ``create_scheduler`` (AsFT's ``step``) overrides this with a name transformers
        accepts."""
        return self.lr_scheduler_type

    def validate(self) -> None:
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.max_length < 8:
            raise ConfigError(f"max_length must be >= 8, got {self.max_length}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.lora.enabled and self.lora.r < 1:
            raise ConfigError(f"lora.r must be >= 1, got {self.lora.r}")
        if self.lora.enabled and self.lora.alpha <= 0:
            raise ConfigError(
                f"lora.alpha must be > 0 (the update is scaled by alpha / r), got {self.lora.alpha}"
            )
        if self.max_steps <= 0 and not self.num_train_epochs > 0:
            raise ConfigError(
                f"num_train_epochs must be > 0 (or max_steps > 0), got {self.num_train_epochs}: "
                "nothing would train"
            )
        if self.max_steps == 0:
            raise ConfigError("max_steps must be > 0, or -1 to train num_train_epochs epochs; got 0")
        for name in ("gradient_accumulation_steps", "per_device_train_batch_size", "save_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.validate_loading()
        self.check_trainer()


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
    """Right-pads ``input_ids`` / ``targets`` / ``kinds`` (and ``avoid`` / ``avoid_in_refusal``, where the
    rows have them) to the longest row of the batch."""

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
        padded = ["targets", "kinds"]
        for column in ("avoid", "avoid_in_refusal"):
            if column in rows[0]:
                batch[column] = torch.full((n, longest), IGNORE, dtype=torch.long)
                padded.append(column)
        for i, r in enumerate(rows):
            m = len(r["input_ids"])
            batch["input_ids"][i, :m] = torch.as_tensor(r["input_ids"])
            batch["attention_mask"][i, :m] = 1
            for key in padded:
                batch[key][i, :m] = torch.as_tensor(r[key])
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


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first and the other ranks after it (a no-op in a single process), so
    work that writes a shared file (self-distillation's cache) is done once."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield
        return
    with distributed_state().main_process_first():
        yield


#: seconds a rank waits at a barrier for the others (transformers' ``ddp_timeout`` default): rank 0
#: alone self-distils, checks and saves while the other ranks wait
DDP_TIMEOUT_S = 1800


def distributed_state() -> Any:
    """accelerate's ``PartialState``. The first call sets up torchrun's process group (gloo on the CPU)
    with :data:`DDP_TIMEOUT_S` as its timeout (torch's default for NCCL is 10 minutes, too short for a
    self-distillation on rank 0); later calls, the Trainer's included, share that group."""
    from datetime import timedelta

    from accelerate import PartialState

    return PartialState(cpu=not has_accelerator(), timeout=timedelta(seconds=DDP_TIMEOUT_S))


def wait_for_everyone() -> None:
    """A barrier over the processes of a distributed run (a no-op in a single process): the ranks that
    are done wait there until rank 0 has written the run's files."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        distributed_state().wait_for_everyone()


def _zero_stage(deepspeed: Any) -> int | None:
    """The ZeRO stage of a DeepSpeed config (a dict or a JSON file's path); None when it names none."""
    if isinstance(deepspeed, (str, os.PathLike)) and Path(deepspeed).is_file():
        try:
            deepspeed = json.loads(Path(deepspeed).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return None
    stage = deepspeed.get("zero_optimization", {}).get("stage") if isinstance(deepspeed, dict) else None
    return stage if isinstance(stage, int) else None


def sharded_training(config: TrainConfig) -> bool:
    """Whether this run will shard the model over its processes: ``accelerate launch`` with FSDP or
    DeepSpeed ZeRO-3, or the recipe's ``trainer:`` with ``fsdp`` or a ZeRO-3 ``deepspeed`` config.
    accelerate shards only on accelerators (on the CPU such a run trains with DDP)."""
    env, extras = os.environ, getattr(config, "trainer", None) or {}
    fsdp = env.get("ACCELERATE_USE_FSDP", "false").lower() == "true" or bool(extras.get("fsdp"))
    launched_zero3 = env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" and (
        env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"
        or _zero_stage(env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")) == 3
    )
    return has_accelerator() and (fsdp or launched_zero3 or _zero_stage(extras.get("deepspeed")) == 3)


def sharded_with_fsdp2(config: TrainConfig) -> bool:
    """Whether an FSDP run shards with FSDP2 (``fully_shard``, DTensor parameters): ``accelerate launch``
    with ``fsdp_version: 2`` (it exports FSDP_VERSION; 1 by default) or the recipe's ``trainer: {fsdp:
    ...}``, whose ``fsdp_config.version`` transformers defaults to 2."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return os.environ.get("FSDP_VERSION", "1") == "2"
    extras = getattr(config, "trainer", None) or {}
    return bool(extras.get("fsdp")) and int((extras.get("fsdp_config") or {}).get("version", 2)) == 2


def load_for_training(config: TrainConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model (with LoRA adapters if enabled) and tokenizer of a recipe."""
    config.validate()
    check_output_dir(config)
    set_seed(config.seed)
    model, tokenizer = load_model_and_tokenizer(
        config.model,
        chat_template=config.chat_template,
        trust_remote_code=config.trust_remote_code,
        options=config.load_options(),
        revision=config.revision,
    )
    if config.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        # fp32 norms/head, input grads on; checkpointing itself is switched on by the Trainer
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
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


_CHECKPOINTING = (
    "activation_checkpointing"
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    else "gradient_checkpointing"
)


#: TrainingArguments keys a recipe sets through its own top-level fields (key -> the field to use); also
#: names older transformers had, so that a recipe written for them gets the same answer
OWNED_BY_FIELDS: dict[str, str] = {
    **{
        name: name
        for name in (
            *("output_dir", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size"),
            *("gradient_accumulation_steps", "warmup_ratio", "lr_scheduler_type", "weight_decay"),
            *("max_grad_norm", "logging_steps", "save_steps", "save_total_limit", "seed", "report_to"),
            *("dataloader_num_workers", "group_by_length", "gradient_checkpointing"),
        )
    },
    "warmup_steps": "warmup_ratio (a share of the steps below 1, a number of steps from 1)",
    "bf16": "precision (auto | bf16 | fp32)",
    "fp16": "dtype (fp16 weights train with fp16 mixed precision) and precision",
    "activation_checkpointing": "gradient_checkpointing",
    "train_sampling_strategy": "group_by_length",
    "resume_from_checkpoint": "resume",
    "overwrite_output_dir": "overwrite",
}

#: TrainingArguments keys safeft does not let a recipe set (key -> why)
FIXED_BY_SAFEFT: dict[str, str] = {
    "remove_unused_columns": "safeft's collator needs the columns the Trainer would drop (targets, kinds)",
    "length_column_name": "safeft's rows keep their lengths in the 'length' column",
    "hub_token": "a recipe is saved in output_dir/recipe.yaml; log in with `hf auth login` or set HF_TOKEN",
}

#: the two spellings of the gradient-checkpointing kwargs (transformers >= 5 renamed them)
_CHECKPOINTING_KWARGS = ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")


def training_argument_fields() -> dict[str, dataclasses.Field]:
    """The ``TrainingArguments`` fields a caller may pass, by name."""
    return {f.name: f for f in dataclasses.fields(TrainingArguments) if f.init}


@functools.cache
def training_argument_types() -> dict[str, Any]:
    """The declared type of each ``TrainingArguments`` field, read from its annotations: ``Field.type``
    is not used because ``HfArgumentParser`` rewrites it in place (``dict | str`` fields become ``str``)
    once any script in the process has parsed a ``TrainingArguments`` class."""
    return typing.get_type_hints(TrainingArguments)


def _check_trainer_key(key: Any, fields: dict[str, dataclasses.Field]) -> None:
    """Refuse a ``trainer:`` key that TrainingArguments lacks, a top-level field sets, or safeft fixes."""
    if not isinstance(key, str):
        raise ConfigError(f"trainer: keys are TrainingArguments names, got {key!r}")
    if key in OWNED_BY_FIELDS:
        raise ConfigError(
            f"trainer.{key}: the recipe sets it with its top-level field {OWNED_BY_FIELDS[key]}; "
            "write that field at the top level (or override it with --FIELD VALUE), not under trainer"
        )
    if key in FIXED_BY_SAFEFT:
        raise ConfigError(f"trainer.{key}: safeft sets it and it cannot be changed: {FIXED_BY_SAFEFT[key]}")
    if key not in fields:
        close = difflib.get_close_matches(key, list(fields) + list(OWNED_BY_FIELDS), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see help(transformers.TrainingArguments)"
        raise ConfigError(f"trainer.{key}: not a transformers.TrainingArguments field; {hint}")


def _scalar(annotation: Any) -> bool:
    """True for ``bool``/``int``/``float``/``str`` and their ``X | None``: types a value is converted to."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    args = typing.get_args(annotation) if union else (annotation,)
    kinds = [a for a in args if a is not type(None)]
    return len(kinds) == 1 and kinds[0] in (bool, int, float, str)


def trainer_extras(trainer: dict[str, Any]) -> dict[str, Any]:
    """A recipe's ``trainer:`` mapping as ``TrainingArguments`` keyword arguments: each key checked
    (:func:`_check_trainer_key`), scalar values converted to the field's type (``--trainer.torch_compile
    true``), the gradient-checkpointing kwargs under the name this transformers uses."""
    fields = training_argument_fields()
    if sum(k in trainer for k in _CHECKPOINTING_KWARGS) > 1:
        raise ConfigError(f"trainer: give one of {' or '.join(_CHECKPOINTING_KWARGS)} (the same setting)")
    extras: dict[str, Any] = {}
    for key, value in trainer.items():
        _check_trainer_key(key, fields)
        annotation = training_argument_types()[key]
        converted = convert_value(value, annotation, f"trainer.{key}") if _scalar(annotation) else value
        extras[f"{_CHECKPOINTING}_kwargs" if key in _CHECKPOINTING_KWARGS else key] = converted
    return extras


def training_arguments(config: TrainConfig, **overrides: Any) -> TrainingArguments:
    """The ``TrainingArguments`` of a recipe, of the method's class (:func:`training_arguments_kwargs`, then
    the method's own fields), ``overrides`` last."""
    kwargs = {**training_arguments_kwargs(config), **config.method_arguments(), **overrides}
    return config.arguments_class(**kwargs)


def training_arguments_kwargs(config: TrainConfig) -> dict[str, Any]:
    """What the recipe's fields set, then its ``trainer:`` settings (which may replace safeft's choices
    of save_strategy, ddp_find_unused_parameters, disable_tqdm, use_cpu and the checkpointing kwargs)."""
    kwargs: dict[str, Any] = {
        "output_dir": str(Path(config.output_dir) / "checkpoints"),
        "learning_rate": config.learning_rate,
        "num_train_epochs": config.num_train_epochs,
        "max_steps": config.max_steps,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "warmup_steps": config.warmup_ratio,
        "lr_scheduler_type": config.hf_lr_scheduler_type(),
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "bf16": use_bf16(config.precision) and config.load_options().dtype != "fp16",
        "fp16": config.load_options().dtype == "fp16" and torch.cuda.is_available(),
        # transformers >= 5.x renames gradient_checkpointing to activation_checkpointing
        _CHECKPOINTING: config.gradient_checkpointing,
        f"{_CHECKPOINTING}_kwargs": {"use_reentrant": False},
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
    return {**kwargs, **trainer_extras(config.trainer)}


@contextlib.contextmanager
def whole_model_loading() -> Iterator[None]:
    """Inside a ZeRO-3 run, ``from_pretrained`` partitions every model it loads (``zero.Init``) while the
    Trainer's DeepSpeed config is alive; rank 0's unsharded copy for the check and ``merged/`` must be
    whole (seen on an H200: merging LoRA into size-0 partitions failed). transformers keeps that config
    in a module-level weak reference with no public getter, hence the private name."""
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def load_whole_base(config: TrainConfig) -> PreTrainedModel:
    """The base model re-loaded whole and unquantised in the training dtype, on the CPU."""
    options = config.load_options()
    plain = LoadOptions(options.dtype, None, options.attn_implementation, load_in_4bit=False)
    with whole_model_loading():
        model, _ = load_model_and_tokenizer(
            config.model,
            chat_template=config.chat_template,
            trust_remote_code=config.trust_remote_code,
            options=plain,
            revision=config.revision,
        )
    return model


def merge_adapter_into_base(config: TrainConfig, adapter_dir: str | Path) -> PreTrainedModel:
    """The base model re-loaded unquantised in the training dtype (on the CPU) with the saved adapter
    merged in: what a QLoRA run saves as ``merged/`` (merging into NF4 weights would round them)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_whole_base(config), str(adapter_dir)).merge_and_unload()


#: recipe fields that may change between an interrupted run and its resumption
RESUMABLE_FIELDS = frozenset(
    {
        *("output_dir", "resume", "overwrite", "max_steps", "num_train_epochs", "logging_steps"),
        *("save_steps", "save_total_limit", "report_to", "dataloader_num_workers", "check"),
    }
)


def _without_unset_new_keys(current: Any, saved: Any) -> Any:
    """``current`` without the nested keys that ``saved`` lacks while they are unset (None): a source
    option added after a run was saved (e.g. ``sample``) does not make its recipe differ."""
    if isinstance(current, dict) and isinstance(saved, dict):
        return {
            k: _without_unset_new_keys(v, saved.get(k))
            for k, v in current.items()
            if k in saved or v is not None
        }
    if isinstance(current, list) and isinstance(saved, list) and len(current) == len(saved):
        return [_without_unset_new_keys(c, s) for c, s in zip(current, saved, strict=True)]
    return current


def check_output_dir(config: TrainConfig) -> None:
    """Refuse to start in an ``output_dir`` whose ``recipe.yaml`` differs from ``config`` (another
    recipe or other data would silently resume or mix with the old run), unless ``overwrite: true``
    (the old checkpoints are deleted and training starts afresh) or ``resume`` names a checkpoint.
    Fields in :data:`RESUMABLE_FIELDS` (step budget, logging...) may differ."""
    saved_path = Path(config.output_dir) / "recipe.yaml"
    if not saved_path.is_file() or (config.resume not in ("auto", "never")):
        return
    import yaml

    try:
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        saved = {}
    current = yaml.safe_load(yaml.safe_dump(to_dict(config)))
    # a field newer than the saved recipe (e.g. trainer) counts as unchanged while it has its default
    default = yaml.safe_load(yaml.safe_dump(to_dict(type(config)())))
    differ = sorted(
        k
        for k in set(saved) | set(current)
        if k not in RESUMABLE_FIELDS
        and saved.get(k, default.get(k)) != _without_unset_new_keys(current.get(k), saved.get(k))
    )
    if not differ:
        return
    if config.overwrite:
        log.warning("%s held another recipe's run (%s): starting afresh", config.output_dir, differ)
        if int(os.environ.get("RANK", "0")) == 0:
            shutil.rmtree(Path(config.output_dir) / "checkpoints", ignore_errors=True)
        return
    raise ConfigError(
        f"output_dir {config.output_dir} holds a run made with another recipe (fields that differ: "
        f"{', '.join(differ)}); pass --overwrite true to start afresh there (its checkpoints are deleted), "
        "--resume CHECKPOINT to continue one anyway, or choose another --output_dir"
    )


def resume_checkpoint(config: TrainConfig) -> str | None:
    if config.resume == "never" or config.overwrite:
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


def gathered_weights(model: torch.nn.Module, accelerator: Any = None) -> dict[str, torch.Tensor]:
    """The full (unsharded) trainable weights of a model sharded by FSDP 1/2 or DeepSpeed ZeRO-3, on the
    CPU of rank 0 (an empty dict on the other ranks). A collective: every rank must call it. FSDP goes
    through ``torch.distributed.checkpoint`` (frozen base weights are not gathered: a LoRA run moves only
    its adapters); ZeRO-3 through ``accelerator.get_state_dict`` (``zero3_save_16bit_model: true``)."""
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        trainable = {n.removeprefix("module.") for n, p in model.named_parameters() if p.requires_grad}
        state = accelerator.get_state_dict(model)
        return {k: v for k, v in state.items() if k in trainable}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    return get_model_state_dict(model, options=options)


def rebuilt_model(config: TrainConfig, weights: dict[str, torch.Tensor]) -> PreTrainedModel:
    """An unsharded copy of a trained model on the CPU: the base re-loaded in the training dtype
    (unquantised), LoRA added as for training, then ``weights`` (:func:`gathered_weights`) loaded in.
    Fails when a gathered name is not in the copy or a trainable weight of the copy was not gathered."""
    model = load_whole_base(config)
    with whole_model_loading():  # PEFT, too, treats weights differently while ZeRO-3 is on
        if config.lora.enabled:
            model = add_lora(model, config.lora)
        result = model.load_state_dict(weights, strict=False)
    absent = [n for n, p in model.named_parameters() if p.requires_grad and n not in weights]
    if result.unexpected_keys or absent:
        raise RuntimeError(
            f"the gathered weights do not fit a re-loaded {config.model}: names it lacks "
            f"{result.unexpected_keys[:3]}, trainable weights not gathered {absent[:3]}"
        )
    return model


def trained_model(trainer: SafeFTTrainer, config: TrainConfig) -> PreTrainedModel | None:
    """The trained model, whole and unwrapped, on the main process; None on the others. Every rank must
    call it: a sharded model (FSDP, ZeRO-3) is gathered (:func:`gathered_weights`, a collective) and rank
    0 rebuilds an unsharded copy (:func:`rebuilt_model`) to check, save and merge."""
    from safeft.training.token_loss import is_sharded

    if not is_sharded(trainer.model_wrapped) and not is_sharded(trainer.model):
        return getattr(trainer.model, "module", trainer.model) if trainer.is_world_process_zero() else None
    weights = gathered_weights(trainer.model_wrapped, trainer.accelerator)
    if not trainer.is_world_process_zero():
        return None
    log.info("rebuilding the trained model on rank 0 from %d gathered weights", len(weights))
    return rebuilt_model(config, weights)


def save_run(
    config: TrainConfig,
    trainer: SafeFTTrainer,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    after_train: Callable[[SafeFTTrainer, PreTrainedModel], None] | None,
) -> None:
    """Main process only: ``train_log.json``, ``adapter/`` (LoRA), ``after_train(trainer, model)``, then
    ``merged/`` (LoRA merged in, or the fully fine-tuned weights)."""
    out = Path(config.output_dir)
    (out / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    is_lora = hasattr(model, "peft_config")
    if is_lora:
        model.save_pretrained(out / "adapter")
        tokenizer.save_pretrained(out / "adapter")
    if after_train is not None:
        after_train(trainer, model)
    if not is_lora:
        save_model(model, tokenizer, out / "merged")
    elif config.merge and config.load_in_4bit:
        save_model(merge_adapter_into_base(config, out / "adapter"), tokenizer, out / "merged")
    elif config.merge:
        save_model(model.merge_and_unload(), tokenizer, out / "merged")
    log.info("saved to %s", out)


def run_trainer(
    config: TrainConfig,
    trainer_cls: type[SafeFTTrainer],
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    after_train: Callable[[SafeFTTrainer, PreTrainedModel], None] | None = None,
    **trainer_kwargs: Any,
) -> SafeFTTrainer:
    """Train (resuming if a checkpoint exists), then on the main process save the adapter, call
    ``after_train(trainer, model)`` with the trained model whole and unwrapped (e.g. a quick evaluation
    while adapters are still separate) and save the merged model (:func:`save_run`). In a distributed
    run a sharded model is first gathered (:func:`trained_model`), and every rank returns only once
    rank 0 has saved."""
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
    trained = trained_model(trainer, config)
    if trained is not None:
        save_run(config, trainer, trained, tokenizer, after_train)
    trainer.accelerator.wait_for_everyone()
    return trainer
