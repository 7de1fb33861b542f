"""The model-making stages of the demo, each a thin call into safeft's own APIs.

``original`` (the embedded GGUF de-quantised once and saved as safetensors, so every later load takes
a fraction of a second), ``self_distill`` (:func:`safeft.derta.trainer.self_distilled_pairs`),
``derta`` / ``vanilla_sft`` (:func:`safeft.derta.trainer.train_derta`), ``direction``
(:func:`safeft.asft.build.compute_direction`), ``task_lora`` / ``task_asft``
(:func:`safeft.asft.trainer.train_asft`) and ``safelora`` (:func:`safeft.asft.safelora.safelora_project`).
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

from safeft.check import CheckConfig
from safeft.config import ConfigError
from safeft.data.sources import SourceConfig
from safeft.demo.config import DemoConfig
from safeft.demo.data import FILES
from safeft.training.base import LoraSettings

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ASFT_TARGETS = ["q_proj", "v_proj"]
DISTILLED = "helpful_distilled.jsonl"


def save_original(config: DemoConfig, folder: Path) -> dict[str, Any]:
    """Load ``config.model`` (the embedded GGUF by default) and save it as a plain model folder."""
    from safeft.models import load_model_and_tokenizer, resolve_model, save_model

    model, tokenizer = load_model_and_tokenizer(config.model)
    save_model(model, tokenizer, folder / "model")
    n_params = sum(p.numel() for p in model.parameters())
    del model
    gc.collect()
    return {"source": resolve_model(config.model).describe(), "parameters": n_params}


def self_distill(config: DemoConfig, folder: Path, model_dir: Path, data: Path) -> dict[str, Any]:
    """The original model answers the self-distillation prompts; refusals, loops and empty answers are
    dropped. The cache is keyed by the fingerprint of ``config.model`` (``original/model`` is that model
    saved as safetensors, the same weights), so the demo shares it with ``safeft train`` and the sweep."""
    from safeft.data.sources import load_prompts
    from safeft.models import load_model_and_tokenizer, model_fingerprint
    from safeft.training.self_distill import self_distill as distill

    prompts = load_prompts(SourceConfig(path=str(data / FILES["self_distill_prompts"]), fields={"id": "id"}))
    model, tokenizer = load_model_and_tokenizer(str(model_dir))
    result = distill(
        model,
        tokenizer,
        prompts,
        fingerprint=model_fingerprint(config.model),
        max_new_tokens=config.data.self_distill_max_new_tokens,
        batch_size=config.data.self_distill_batch_size,
    )
    with (folder / DISTILLED).open("w", encoding="utf-8") as f:
        for p in result.pairs:
            f.write(json.dumps({"prompt": p.prompt, "response": p.response, "origin": p.origin}) + "\n")
    del model
    gc.collect()
    return result.as_dict()


def train_alignment(
    config: DemoConfig, folder: Path, model_dir: Path, data: Path, distilled: Path, derta: bool
) -> dict[str, Any]:
    """DeRTa (``derta=True``) or the vanilla safety-SFT baseline on the same triples and helpful rows.
    DeRTa's harmful answers are ``align.harmful_answers`` (the original model's own by default,
    generated from ``model_dir``, cached); vanilla SFT trains on (q, refusal) and never on them, but keeps
    the same harmful questions (those the model answered). Both arms share the loss options."""
    from safeft.derta.trainer import DeRTaConfig, train_derta

    a = config.align
    safety = [SourceConfig(path=str(data / FILES["train_safety"]))]
    questions = data / FILES["train_questions"]
    if questions.is_file() and questions.stat().st_size > 0:  # prompts only: the model's answers or none
        safety.append(SourceConfig(path=str(questions), fields={"prompt": "prompt", "harmful_response": ""}))
    helpful = [SourceConfig(path=str(data / FILES["train_helpful"]))] if a.helpful_qa else []
    if (distilled / DISTILLED).stat().st_size > 0:
        helpful.append(SourceConfig(path=str(distilled / DISTILLED)))
    if not helpful:
        raise ConfigError(
            f"stage 1 has no helpful rows: {distilled / DISTILLED} is empty and align.helpful_qa is off"
        )
    cfg = DeRTaConfig(
        model=str(model_dir),
        output_dir=str(folder),
        safety=safety,
        helpful=helpful,
        # vanilla SFT never trains on h, but keeps the questions DeRTa keeps (safeft.derta.trainer)
        harmful_answers=a.harmful_answers,
        self_distill_max_new_tokens=config.data.self_distill_max_new_tokens,
        prefix=derta,
        rto=derta,
        rto_keep_ratio=a.rto_keep_ratio,
        loss_weighting=a.loss_weighting,
        rto_weight=a.rto_weight,
        decision_weight=a.decision_weight,
        guard_weight=a.guard_weight,
        refusal_guard_weight=a.refusal_guard_weight,
        prefix_zero_fraction=a.prefix_zero_fraction,
        helpful_ratio=a.helpful_per_triple,
        lora=LoraSettings(r=a.lora_r, alpha=a.lora_alpha, target_modules=list(ALL_LINEAR)),
        learning_rate=a.learning_rate,
        num_train_epochs=a.epochs,
        per_device_train_batch_size=a.batch_size,
        gradient_accumulation_steps=a.grad_accum,
        max_length=a.max_length,
        logging_steps=5,
        save_steps=a.save_steps,
        seed=config.seed,
        check=CheckConfig(enabled=False),  # the eval harness evaluates every model afterwards
    )
    result = train_derta(cfg)
    gc.collect()
    return {"rows": result["data"]["rows"], "steps": _last_step(folder)}


def compute_alignment_direction(
    config: DemoConfig, folder: Path, aligned: Path, original: Path
) -> dict[str, Any]:
    """V = W_DeRTa - W_original on the layers AsFT fine-tunes (top-k, plus Safe LoRA's own factor)."""
    from safeft.asft.build import DirectionRequest, compute_direction

    direction = compute_direction(
        DirectionRequest(
            aligned=str(aligned),
            unaligned=str(original),
            targets=list(ASFT_TARGETS),
            rank=config.task.direction_rank,
            paper=True,
        )
    )
    direction.save(folder)
    s = direction.summary()
    return {"layers": s["n_layers"], "energy_k_mean": round(s["energy_k_mean"], 4)}


def train_task(
    config: DemoConfig,
    folder: Path,
    aligned: Path,
    data: Path,
    direction: Path,
    penalty_lambda: float,
    projector: str = "svd",
) -> dict[str, Any]:
    """LoRA on the contaminated task from the DeRTa model: plain (lambda 0), AsFT (lambda > 0, ``svd``)
    or its control (lambda > 0, ``none``: C = 0, the penalty is lambda ||s B A||^2 whatever the direction).
    The direction is bound in every run, so the logs show how far the update leaves the safety basin."""
    from safeft.asft.trainer import AsFTConfig, train_asft

    t = config.task
    cfg = AsFTConfig(
        model=str(aligned),
        output_dir=str(folder),
        train_data=[SourceConfig(path=str(data / FILES["task_train"]))],
        direction=str(direction),
        penalty_lambda=penalty_lambda,
        projector=projector,
        lora=LoraSettings(r=t.lora_r, alpha=t.lora_alpha, target_modules=list(ASFT_TARGETS)),
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        per_device_train_batch_size=t.batch_size,
        max_length=t.max_length,
        logging_steps=5,
        save_steps=t.save_steps,
        seed=config.seed,
    )
    result = train_asft(cfg)
    gc.collect()
    return {"rows": result["n_examples"], "steps": _last_step(folder), "penalty": _last_penalty(folder)}


def safe_lora(config: DemoConfig, folder: Path, adapter: Path, direction: Path) -> dict[str, Any]:
    """Safe LoRA's post-hoc projection of the plain-LoRA adapter (its own C = V V^T / ||V||_F)."""
    from safeft.asft.direction import Direction
    from safeft.asft.safelora import safelora_project

    decisions = safelora_project(
        adapter, Direction.load(direction), folder / "adapter", threshold=config.task.safelora_threshold
    )
    return {"layers": len(decisions), "projected": sum(d.projected for d in decisions)}


def _train_log(folder: Path) -> list[dict]:
    path = folder / "train_log.json"
    return json.loads(path.read_text()) if path.is_file() else []


def _last_step(folder: Path) -> int | None:
    steps = [row["step"] for row in _train_log(folder) if "step" in row]
    return max(steps) if steps else None


def _last_penalty(folder: Path) -> float | None:
    values = [row["asft_penalty"] for row in _train_log(folder) if "asft_penalty" in row]
    return values[-1] if values else None
