"""``AsFTArguments``: ``transformers.TrainingArguments`` plus the settings of AsFT's objective (TRL's
pattern, as ``SFTConfig`` is for ``SFTTrainer``).

``AsFTTrainer`` reads them from ``trainer.args``; the penalty itself (bound to the model's LoRA layers
and a direction, :func:`safeft.asft.trainer.bind_penalty`) is passed as ``penalty=``, the way TRL's
trainers take a ``peft_config``::

    args, = HfArgumentParser(AsFTArguments).parse_args_into_dataclasses()   # --penalty_lambda 1 ...
    AsFTTrainer(model=model, args=args, penalty=penalty, train_dataset=rows, data_collator=collator)

A recipe (``AsFTConfig``) builds the same arguments for ``safeft train``; the fields are defined once, here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from transformers import TrainingArguments

from safeft.config import ConfigError


@dataclass
class AsFTObjectiveSettings:
    """Weights of the penalty terms (math in :mod:`safeft.asft.trainer`) and the StepLR factor."""

    penalty_lambda: float = field(
        default=1.0, metadata={"help": "weight of the AsFT penalty (0: plain LoRA)"}
    )
    anti_direction_lambda: float = field(
        default=0.0, metadata={"help": "weight of sum_l relu(-<dW, V_k>/||V_k||)^2 (0: plain AsFT)"}
    )
    lr_step_gamma: float = field(
        default=0.85, metadata={"help": "lr_scheduler_type step: lr *= gamma after each epoch"}
    )

    def validate_objective(self, step_lr: bool) -> None:
        if self.penalty_lambda < 0:
            raise ConfigError(f"penalty_lambda must be >= 0 (0 = plain LoRA), got {self.penalty_lambda}")
        if self.anti_direction_lambda < 0:
            raise ConfigError(f"anti_direction_lambda must be >= 0, got {self.anti_direction_lambda}")
        if step_lr and not 0 < self.lr_step_gamma <= 1:
            raise ConfigError(f"lr_step_gamma must be in (0, 1], got {self.lr_step_gamma}")

    def objective_settings(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(AsFTObjectiveSettings)}


@dataclass
class AsFTArguments(AsFTObjectiveSettings, TrainingArguments):
    """``TrainingArguments`` + AsFT's objective settings; invalid values fail when the object is built."""

    step_lr: bool = field(
        default=False,
        metadata={
            "help": "the official code's StepLR: lr *= lr_step_gamma after every epoch, no warmup (replaces "
            "lr_scheduler_type)"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_objective(self.step_lr)
        if self.step_lr and self.warmup_steps:
            raise ConfigError("step_lr (StepLR) has no warmup: set warmup_steps 0")
