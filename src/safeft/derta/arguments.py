"""``DeRTaArguments``: ``transformers.TrainingArguments`` plus DeRTa's loss settings (TRL's pattern, as
``SFTConfig`` is for ``SFTTrainer``).

``DeRTaTrainer`` reads its objective's settings from ``trainer.args``, so it runs from any script that
builds the arguments itself, e.g. parsed with ``HfArgumentParser``::

    args, = HfArgumentParser(DeRTaArguments).parse_args_into_dataclasses()   # --decision_weight 0.3 ...
    DeRTaTrainer(model=model, args=args, train_dataset=rows, data_collator=collator).train()

The rows come from :func:`safeft.derta.features.build_derta_examples`. A recipe (``DeRTaConfig``, which
also names the data, the model and LoRA) builds the same arguments for ``safeft train``; the fields below
are defined once, here, and shared by both.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from transformers import TrainingArguments

from safeft.config import ConfigError

LOSS_WEIGHTINGS = ("token_mean", "weighted")


@dataclass
class DeRTaLossSettings:
    """The settings of :func:`safeft.derta.loss.derta_loss` (the math is in that module's docstring)."""

    rto_keep_ratio: float = field(
        default=1.0,
        metadata={"help": "RTO positions trained per step; 1.0: official LoRA, 0.05: official full FT"},
    )
    loss_weighting: str = field(
        default="token_mean", metadata={"help": "token_mean (official) | weighted (L_MLE + rto_weight L_RTO)"}
    )
    rto_weight: float = field(default=1.0, metadata={"help": "weight of L_RTO with loss_weighting weighted"})
    decision_weight: float = field(
        default=0.0,
        metadata={
            "help": "w of an added w * L_first: the mean loss of each row's first supervised token (the "
            "answer's first token, or the switch to the refusal); 0 = off (a safeft option, not in the paper)"
        },
    )

    guard_weight: float = field(
        default=0.0,
        metadata={
            "help": "g of an added g * L_guard: unlikelihood of the refusal token at the answer positions of "
            "helpful rows (no 'Sorry' inside a benign answer); 0 = off (a safeft option, not in the paper)"
        },
    )
    refusal_guard_weight: float = field(
        default=0.0,
        metadata={
            "help": "g_r of an added g_r * L_refusal_guard: unlikelihood of the refusal token inside each "
            "MLE refusal after its first token, end of turn included (no second 'Sorry' once the model has "
            "refused); 0 = off (a safeft option, not in the paper)"
        },
    )

    def validate_loss(self) -> None:
        if not 0.0 < self.rto_keep_ratio <= 1.0:
            raise ConfigError(f"rto_keep_ratio must be in (0, 1], got {self.rto_keep_ratio}")
        if self.decision_weight < 0:
            raise ConfigError(f"decision_weight must be >= 0, got {self.decision_weight}")
        if self.guard_weight < 0:
            raise ConfigError(f"guard_weight must be >= 0, got {self.guard_weight}")
        if self.refusal_guard_weight < 0:
            raise ConfigError(f"refusal_guard_weight must be >= 0, got {self.refusal_guard_weight}")
        if self.rto_weight < 0:
            raise ConfigError(f"rto_weight must be >= 0, got {self.rto_weight}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ConfigError(f"loss_weighting must be token_mean or weighted, got {self.loss_weighting!r}")

    def loss_settings(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(DeRTaLossSettings)}


@dataclass
class DeRTaArguments(DeRTaLossSettings, TrainingArguments):
    """``TrainingArguments`` + the DeRTa loss settings; invalid values fail when the object is built."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_loss()
