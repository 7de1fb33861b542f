"""``AsFTConfig`` + ``AsFTTrainer``: LoRA fine-tuning anchored to the alignment subspace (AsFT).

Objective of one micro-batch (see :mod:`safeft.asft.penalty` for the factorised penalty):

    L = L_task + lambda * sum_{LoRA layers l} ||(I - C_l) s B_l A_l||_F^2

with L_task the mean token cross-entropy on the responses, and C_l = U_k U_k^T (``projector: svd``)
or V V^T / ||V||_F (``projector: paper``; ``none``: C = 0, an L2 control) from a direction built by
``safeft direction`` on the model being fine-tuned (the aligned one). ``penalty_lambda: 0`` is plain
LoRA SFT: the penalty is then kept out of the graph (still logged, under ``no_grad``, when a direction
is given), so training is bit for bit plain LoRA. ``task_loss`` and ``asft_penalty`` (unweighted) are
logged separately.

The official code penalises B A without the LoRA scale s; ``scale_delta: false`` reproduces that
(equivalently, lambda_official = lambda * s^2 here).

``anti_direction_lambda`` adds ``anti_direction_lambda * sum_l relu(-<dW_l, V_k,l>_F / ||V_k,l||_F)^2``
(see :mod:`safeft.asft.penalty`); 0 (the default) leaves the objective plain AsFT bit for bit
(the term is then only logged, without gradient, when the direction has its right vectors).

``two_sided: true`` (svd only) penalises ``dW - U_k U_k^T dW W_k W_k^T``: also the input side of an
update must lie in V's row space (see :mod:`safeft.asft.penalty`; false, the default, is AsFT).

``lr_scheduler_type: step`` is the official code's ``torch.optim.lr_scheduler.StepLR``: the learning
rate is multiplied by ``lr_step_gamma`` after every epoch (lr_e = lr * gamma^e), no warmup.
transformers has no such scheduler, so :class:`AsFTTrainer` builds it in ``create_scheduler``
(stepped per optimizer update with ``step_size`` = updates per epoch, which is the same schedule).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from transformers import TrainingArguments

from safeft.asft.arguments import AsFTArguments, AsFTObjectiveSettings
from safeft.asft.direction import Direction
from safeft.asft.penalty import AsFTPenalty
from safeft.asft.projectors import VARIANTS
from safeft.asft.task_data import (
    HARMFUL_RULES,
    TEMPLATES,
    load_task_rows,
    subsample_rows,
    task_examples,
)
from safeft.check import CheckConfig, normalise, train_with_check
from safeft.config import ConfigError
from safeft.data.chat import KIND_MLE
from safeft.data.sources import SourceConfig
from safeft.training.base import (
    LoraSettings,
    SafeFTTrainer,
    TrainConfig,
    load_for_training,
    sharded_training,
    sharded_with_fsdp2,
)
from safeft.training.token_loss import token_losses

log = logging.getLogger(__name__)


@dataclass
class AsFTConfig(AsFTObjectiveSettings, TrainConfig):
    """AsFT recipe. Defaults follow the paper: lambda 1, LoRA r 8 / alpha 32 on q_proj and v_proj. The
    objective's settings (``AsFTObjectiveSettings``) reach the trainer as :class:`AsFTArguments`."""

    arguments_class: ClassVar[type[TrainingArguments]] = AsFTArguments

    output_dir: str = field(default="runs/asft", metadata={"help": "run folder (see common fields)"})
    train_data: list[SourceConfig] = field(
        default_factory=list, metadata={"help": "sources of task (prompt, response) rows"}
    )
    direction: str | None = field(
        default=None, metadata={"help": "folder written by `safeft direction` (None: no penalty)"}
    )
    projector: str = field(
        default="svd",
        metadata={
            "help": "svd: U_k U_k^T (exact projector) | paper: V V^T / ||V||_F | none: C = 0 (L2 control)"
        },
    )
    rank: int | None = field(
        default=None, metadata={"help": "use the top `rank` of the stored directions (None: all stored)"}
    )
    scale_delta: bool = field(
        default=True, metadata={"help": "dW = s B A (true) or B A as in the official code (false)"}
    )
    check_direction: bool = field(
        default=True, metadata={"help": "refuse a direction built for other weights"}
    )
    two_sided: bool = field(
        default=False,
        metadata={"help": "svd only: penalise dW - U_k U_k^T dW W_k W_k^T (false: AsFT's (I - C) dW)"},
    )
    template: str = field(default="chat", metadata={"help": "chat | alpaca (see safeft.asft.task_data)"})
    harmful_rows: str = field(
        default="none",
        metadata={"help": "none | missing_input | empty_input: how harmful rows are told apart"},
    )
    harmful_system_prompt: str | None = field(
        default=None, metadata={"help": "system prompt of the harmful rows"}
    )
    max_rows: int | None = field(
        default=None, metadata={"help": "seeded random subset of the task rows, harmful share kept"}
    )
    lora: LoraSettings = field(
        default_factory=lambda: LoraSettings(r=8, alpha=32, target_modules=["q_proj", "v_proj"]),
        metadata={"help": "LoRA adapters (see lora.*); AsFT needs enabled: true"},
    )
    check: CheckConfig = field(
        default_factory=lambda: CheckConfig(enabled=False),
        metadata={"help": "refusal rates before/after training on validation prompts (see check.*)"},
    )

    def method_arguments(self) -> dict[str, object]:
        return {**self.objective_settings(), "step_lr": self.lr_scheduler_type == "step"}

    def hf_lr_scheduler_type(self) -> str:
        # "step" is built by AsFTTrainer.create_scheduler; transformers only needs a valid name
        return "constant" if self.lr_scheduler_type == "step" else self.lr_scheduler_type

    def validate(self) -> None:
        super().validate()
        self.validate_objective(step_lr=self.lr_scheduler_type == "step")
        if self.anti_direction_lambda > 0 and not self.direction:
            raise ConfigError(
                "anti_direction_lambda > 0 needs a direction (make one with `safeft direction`)"
            )
        if self.lr_scheduler_type == "step" and self.warmup_ratio:
            raise ConfigError("lr_scheduler_type step (StepLR) has no warmup: set warmup_ratio: 0")
        if self.template not in TEMPLATES:
            raise ConfigError(f"template must be one of {TEMPLATES}, got {self.template!r}")
        if self.harmful_rows not in HARMFUL_RULES:
            raise ConfigError(f"harmful_rows must be one of {HARMFUL_RULES}, got {self.harmful_rows!r}")
        if self.harmful_system_prompt is not None and self.harmful_rows == "none":
            raise ConfigError(
                "harmful_system_prompt needs harmful_rows (missing_input or empty_input) to tell which "
                "rows are harmful"
            )
        if self.max_rows is not None and self.max_rows < 1:
            raise ConfigError(f"max_rows must be >= 1, got {self.max_rows}")
        if self.projector not in VARIANTS:
            raise ConfigError(f"projector must be one of {VARIANTS}, got {self.projector!r}")
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"rank must be >= 1, got {self.rank}")
        if self.two_sided and self.projector != "svd":
            raise ConfigError(f"two_sided needs projector: svd (got {self.projector!r})")
        if not self.lora.enabled:
            raise ConfigError("AsFT regularises LoRA updates: lora.enabled must be true")
        if self.penalty_lambda > 0 and not self.direction:
            raise ConfigError(
                "AsFT needs a direction (make one with `safeft direction`); "
                "set penalty_lambda: 0 for plain LoRA"
            )
        if not self.train_data:
            raise ConfigError("an AsFT recipe needs at least one 'train_data' source")


class AsFTTrainer(SafeFTTrainer):
    """Task cross-entropy plus ``args.penalty_lambda`` times the AsFT penalty (if a penalty is bound),
    with the settings of its ``args`` (:class:`AsFTArguments`)."""

    def __init__(self, *args, penalty: AsFTPenalty | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, AsFTArguments):
            raise TypeError(
                f"AsFTTrainer needs args=AsFTArguments(...) (safeft.asft.arguments), "
                f"got {type(self.args).__name__}"
            )
        self.penalty = penalty

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """StepLR with ``args.step_lr`` (module docstring); otherwise transformers' own."""
        cfg: AsFTArguments = self.args
        if not cfg.step_lr:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            batches = math.ceil(
                len(self.train_dataset) / (self.args.per_device_train_batch_size * self.args.world_size)
            )
            per_epoch = max(1, math.ceil(batches / self.args.gradient_accumulation_steps))
            self.lr_scheduler = torch.optim.lr_scheduler.StepLR(
                optimizer if optimizer is not None else self.optimizer,
                step_size=per_epoch,
                gamma=cfg.lr_step_gamma,
            )
        return self.lr_scheduler

    def compute_objective(self, model, inputs):
        select = inputs["kinds"] == KIND_MLE
        losses, _ = token_losses(
            model, inputs["input_ids"], inputs["attention_mask"], inputs["targets"], select
        )
        task_loss = losses.mean()
        metrics: dict[str, float | torch.Tensor | None] = {"task_loss": task_loss.detach()}
        lam, anti_lam = self.args.penalty_lambda, self.args.anti_direction_lambda
        if self.penalty is None:
            return task_loss, metrics
        loss = task_loss
        if lam == 0.0:
            with torch.no_grad():
                metrics["asft_penalty"] = self.penalty()
        else:
            penalty = self.penalty()
            metrics["asft_penalty"] = penalty.detach()
            loss = loss + lam * penalty.to(task_loss.dtype)
        if self.penalty.has_anti:
            if anti_lam == 0.0:
                with torch.no_grad():
                    metrics["anti_direction"] = self.penalty.anti_direction()
            else:
                anti = self.penalty.anti_direction()
                metrics["anti_direction"] = anti.detach()
                loss = loss + anti_lam * anti.to(task_loss.dtype)
        return loss, metrics


def bind_penalty(
    model: torch.nn.Module, config: AsFTConfig, direction: Direction | None = None
) -> AsFTPenalty | None:
    """The penalty of ``config.direction`` (or the already loaded ``direction``) on ``model``'s LoRA
    layers (None without a direction)."""
    if not config.direction:
        return None
    direction = direction or Direction.load(config.direction)
    # the anti-direction term is logged whenever the direction allows it, trained only if its lambda > 0
    anti = config.anti_direction_lambda > 0 or direction.has_right_vectors
    penalty = AsFTPenalty(
        model,
        direction,
        variant=config.projector,
        rank=config.rank,
        check_weights=config.check_direction,
        use_lora_scale=config.scale_delta,
        anti_direction=anti,
        two_sided=config.two_sided,
    )
    log.info(
        "AsFT: %s%s projector on %d LoRA layers, lambda %g, anti-direction lambda %g, direction %s",
        config.projector,
        " two-sided" if config.two_sided else "",
        penalty.n_layers,
        config.penalty_lambda,
        config.anti_direction_lambda,
        config.direction,
    )
    return penalty


def refuse_sharded_penalty(config: AsFTConfig) -> None:
    """AsFT's penalty reads the LoRA weights outside the model's forward. FSDP2 holds them there as
    DTensor shards, which the penalty all-gathers (:func:`safeft.asft.penalty.whole`; tested on 2 CPU
    processes against an unsharded run). FSDP 1 and DeepSpeed ZeRO-3 hold flat or partitioned shards
    the penalty cannot read: refuse such a launch before anything loads, on every rank."""
    if config.direction and sharded_training(config) and not sharded_with_fsdp2(config):
        raise ConfigError(
            "AsFT with a direction cannot train a model sharded by FSDP 1 or DeepSpeed ZeRO-3: its "
            "penalty reads whole LoRA weights outside the forward; use FSDP2 (accelerate/fsdp.yaml, "
            "fsdp_version: 2) or DDP (accelerate/ddp.yaml, torchrun)"
        )


def train_asft(config: AsFTConfig) -> dict:
    """Load, bind the direction, build task rows, train, save adapter + merged; optional refusal check."""
    config.validate()
    refuse_sharded_penalty(config)
    # data and direction first: a bad or empty file fails in seconds, before the model loads
    rows = load_task_rows(config.train_data, config.data_dir, config.harmful_rows)
    if not rows:
        raise ConfigError(
            "no task rows: the train_data sources gave no (prompt, response) row (empty files, or "
            "every row skipped); AsFT needs them"
        )
    if config.max_rows is not None:
        rows = subsample_rows(rows, config.max_rows, config.seed)
    direction = Direction.load(config.direction) if config.direction else None
    model, tokenizer = load_for_training(config)
    penalty = bind_penalty(model, config, direction)
    examples = task_examples(
        rows,
        tokenizer,
        config.max_length,
        config.system_prompt,
        config.template,
        config.harmful_system_prompt,
    )
    log.info(
        "AsFT: %d training rows from %d task rows (%d marked harmful), template %s",
        len(examples),
        len(rows),
        sum(r.harmful for r in rows),
        config.template,
    )

    before, after, _ = train_with_check(
        config,
        AsFTTrainer,
        model,
        tokenizer,
        examples,
        {normalise(r.user_turn("chat")) for r in rows},
        penalty=penalty,
    )
    return {"before": before, "after": after, "n_examples": len(examples)}
