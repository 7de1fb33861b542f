"""``AsFTConfig`` + ``AsFTTrainer``: LoRA fine-tuning anchored to the alignment subspace (AsFT).

Objective of one micro-batch (see :mod:`safeft.asft.penalty` for the factorised penalty):

    L = L_task + lambda * sum_{LoRA layers l} ||(I - C_l) s B_l A_l||_F^2

with L_task the mean token cross-entropy on the responses, and C_l = U_k U_k^T (``projector: svd``)
or V V^T / ||V||_F (``projector: paper``) from a direction built by ``safeft direction`` on the model
being fine-tuned (the aligned one). ``penalty_lambda: 0`` is plain LoRA SFT: the penalty is then kept
out of the graph (still logged, under ``no_grad``, when a direction is given), so training is bit for
bit plain LoRA. ``task_loss`` and ``asft_penalty`` (unweighted) are logged separately.

The official code penalises B A without the LoRA scale s; ``scale_delta: false`` reproduces that
(equivalently, lambda_official = lambda * s^2 here).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from safeft.asft.direction import Direction
from safeft.asft.penalty import AsFTPenalty
from safeft.asft.projectors import VARIANTS
from safeft.asft.task_data import load_task_pairs, task_examples
from safeft.check import CheckConfig, normalise, train_with_check
from safeft.config import ConfigError
from safeft.data.chat import KIND_MLE
from safeft.data.sources import SourceConfig
from safeft.training.base import LoraSettings, SafeFTTrainer, TrainConfig, load_for_training
from safeft.training.token_loss import token_losses

log = logging.getLogger(__name__)


@dataclass
class AsFTConfig(TrainConfig):
    """AsFT recipe. Defaults follow the paper: lambda 1, LoRA r 8 / alpha 32 on q_proj and v_proj."""

    output_dir: str = "runs/asft"
    train_data: list[SourceConfig] = field(default_factory=list)
    direction: str | None = None  # folder written by `safeft direction`
    penalty_lambda: float = 1.0
    projector: str = "svd"  # svd: U_k U_k^T (exact projector) | paper: V V^T / ||V||_F
    rank: int | None = None  # use the top `rank` of the stored directions (None: all stored)
    scale_delta: bool = True  # dW = s B A (true) or B A as in the official code (false)
    check_direction: bool = True  # refuse a direction built for other weights
    lora: LoraSettings = field(
        default_factory=lambda: LoraSettings(r=8, alpha=32, target_modules=["q_proj", "v_proj"])
    )
    check: CheckConfig = field(default_factory=lambda: CheckConfig(enabled=False))

    def validate(self) -> None:
        super().validate()
        if self.penalty_lambda < 0:
            raise ConfigError(f"penalty_lambda must be >= 0 (0 = plain LoRA), got {self.penalty_lambda}")
        if self.projector not in VARIANTS:
            raise ConfigError(f"projector must be one of {VARIANTS}, got {self.projector!r}")
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"rank must be >= 1, got {self.rank}")
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
    """Task cross-entropy plus ``penalty_lambda`` times the AsFT penalty (if a penalty is bound)."""

    def __init__(self, *args, asft_config: AsFTConfig, penalty: AsFTPenalty | None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.asft_config = asft_config
        self.penalty = penalty

    def compute_objective(self, model, inputs):
        select = inputs["kinds"] == KIND_MLE
        losses, _ = token_losses(
            model, inputs["input_ids"], inputs["attention_mask"], inputs["targets"], select
        )
        task_loss = losses.mean()
        metrics: dict[str, float | torch.Tensor | None] = {"task_loss": task_loss.detach()}
        lam = self.asft_config.penalty_lambda
        if self.penalty is None:
            return task_loss, metrics
        if lam == 0.0:
            with torch.no_grad():
                metrics["asft_penalty"] = self.penalty()
            return task_loss, metrics
        penalty = self.penalty()
        metrics["asft_penalty"] = penalty.detach()
        return task_loss + lam * penalty.to(task_loss.dtype), metrics


def bind_penalty(model: torch.nn.Module, config: AsFTConfig) -> AsFTPenalty | None:
    """The penalty of ``config.direction`` on ``model``'s LoRA layers (None without a direction)."""
    if not config.direction:
        return None
    direction = Direction.load(config.direction)
    penalty = AsFTPenalty(
        model,
        direction,
        variant=config.projector,
        rank=config.rank,
        check_weights=config.check_direction,
        use_lora_scale=config.scale_delta,
    )
    log.info(
        "AsFT: %s projector on %d LoRA layers, lambda %g, direction %s",
        config.projector,
        penalty.n_layers,
        config.penalty_lambda,
        config.direction,
    )
    return penalty


def train_asft(config: AsFTConfig) -> dict:
    """Load, bind the direction, build task rows, train, save adapter + merged; optional refusal check."""
    config.validate()
    model, tokenizer = load_for_training(config)
    penalty = bind_penalty(model, config)
    pairs = load_task_pairs(config.train_data, config.data_dir)
    examples = task_examples(pairs, tokenizer, config.max_length, config.system_prompt)
    log.info("AsFT: %d training rows from %d pairs", len(examples), len(pairs))

    before, after, _ = train_with_check(
        config,
        AsFTTrainer,
        model,
        tokenizer,
        examples,
        {normalise(p.prompt) for p in pairs},
        asft_config=config,
        penalty=penalty,
    )
    return {"before": before, "after": after, "n_examples": len(examples)}
