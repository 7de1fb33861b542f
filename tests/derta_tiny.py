"""Helpers shared by the trainer tests: a tiny DeRTa recipe on placeholder data (no harmful text)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def write_tiny_data(root: Path) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    safety = root / "safety.jsonl"
    helpful = root / "helpful.jsonl"
    benign = root / "benign.jsonl"
    with safety.open("w") as f:
        for i in range(12):
            words = " ".join(f"step{j}" for j in range(8 + i))
            f.write(json.dumps({"q": f"placeholder request {i}?", "h": f"Sure. {words}."}) + "\n")
    with helpful.open("w") as f:
        for i in range(8):
            f.write(json.dumps({"prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}."}) + "\n")
    with benign.open("w") as f:
        for i in range(3):
            f.write(json.dumps({"prompt": f"How do I boil {i} eggs?"}) + "\n")
    return {"safety": str(safety), "helpful": str(helpful), "benign": str(benign)}


def tiny_recipe(tmp: Path, model_dir: Path, **overrides) -> Path:
    files = write_tiny_data(tmp / "data")
    recipe = {
        "method": "derta",
        "model": str(model_dir),
        "output_dir": str(tmp / "run"),
        "safety": [{"path": files["safety"], "fields": {"prompt": "q", "harmful_response": "h"}}],
        "helpful": [{"path": files["helpful"]}],
        "rto_keep_ratio": 0.5,
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "learning_rate": 1e-2,
        "per_device_train_batch_size": 4,
        "max_steps": 4,
        "logging_steps": 1,
        "save_steps": 2,
        "max_length": 64,
        "check": {
            "n": 3,
            "max_new_tokens": 4,
            "harmful": {"path": files["safety"], "fields": {"prompt": "q", "harmful_response": "h"}},
            "benign": {"path": files["benign"]},
        },
    }
    recipe.update(overrides)
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path
