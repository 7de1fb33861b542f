"""AsFTTrainer end to end on a tiny model: lambda 0 is plain LoRA bit for bit, the penalty bites,
task loss and penalty are logged separately, recipes parse, bad configs are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from safeft.asft.build import DirectionRequest, compute_direction
from safeft.asft.trainer import AsFTConfig, train_asft
from safeft.config import ConfigError, from_dict

from conftest import perturb_attention

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def aligned_setup(tmp_path_factory, tiny_model_dir):
    """(aligned model dir, direction dir, task file): aligned = the tiny model with q/v perturbed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("asft_train")
    model = perturb_attention(AutoModelForCausalLM.from_pretrained(tiny_model_dir), seed=1)
    model.save_pretrained(root / "aligned")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(root / "aligned")
    compute_direction(
        DirectionRequest(str(root / "aligned"), str(tiny_model_dir), ["q_proj", "v_proj"], rank=4)
    ).save(root / "direction")
    rows = [
        {"instruction": "Sentiment of the input?", "input": f"movie number {i} was {w}", "output": w}
        for i, w in enumerate(["great", "awful"] * 6)
    ] + [{"instruction": "Say hello.", "output": "Hello!"}]
    (root / "task.json").write_text(json.dumps(rows))
    return root / "aligned", root / "direction", root / "task.json"


def config(setup, out: Path, **kw) -> AsFTConfig:
    aligned, direction, task = setup
    fields = {"prompt": "instruction", "input": "input", "response": "output"}
    data = {
        "model": str(aligned),
        "output_dir": str(out),
        "train_data": [{"path": str(task), "fields": fields}],
        "direction": str(direction),
        "max_steps": 3,
        "per_device_train_batch_size": 4,
        "learning_rate": 5e-3,
        "warmup_ratio": 0.0,
        "logging_steps": 1,
        "save_steps": 1000,
        "precision": "fp32",
        "merge": False,
        "resume": "never",
        "lora": {"r": 4, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
    }
    return from_dict(AsFTConfig, {**data, **kw})


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


def logs(out: Path) -> list[dict]:
    return [row for row in json.loads((out / "train_log.json").read_text()) if "loss" in row]


def test_lambda_zero_is_plain_lora_bit_for_bit_and_penalty_bites(aligned_setup, tmp_path):
    train_asft(config(aligned_setup, tmp_path / "plain", penalty_lambda=0.0, direction=None))
    train_asft(config(aligned_setup, tmp_path / "zero", penalty_lambda=0.0))
    train_asft(config(aligned_setup, tmp_path / "asft", penalty_lambda=50.0))
    plain, zero, asft = adapter(tmp_path / "plain"), adapter(tmp_path / "zero"), adapter(tmp_path / "asft")
    assert set(plain) == set(zero) and all(torch.equal(plain[k], zero[k]) for k in plain)
    assert any(not torch.equal(plain[k], asft[k]) for k in plain)

    plain_logs, zero_logs, asft_logs = (
        logs(tmp_path / "plain"),
        logs(tmp_path / "zero"),
        logs(tmp_path / "asft"),
    )
    assert [r["loss"] for r in plain_logs] == [r["loss"] for r in zero_logs]
    assert "asft_penalty" not in plain_logs[0] and "task_loss" in plain_logs[0]
    assert all("asft_penalty" in r and "task_loss" in r for r in zero_logs + asft_logs)
    # step 1 starts from B = 0 (zero penalty); afterwards the anchored run stays much closer to the basin
    assert asft_logs[0]["asft_penalty"] == 0.0
    assert asft_logs[-1]["asft_penalty"] < zero_logs[-1]["asft_penalty"]
    # lambda > 0: loss = task + lambda * penalty
    last = asft_logs[-1]
    assert last["loss"] == pytest.approx(last["task_loss"] + 50.0 * last["asft_penalty"], rel=1e-2, abs=1e-3)


def test_bad_configs_are_refused(aligned_setup, tmp_path):
    for kw, msg in [
        ({"penalty_lambda": -1.0}, "penalty_lambda must be >= 0"),
        ({"projector": "exact"}, "projector must be one of"),
        ({"direction": None}, "AsFT needs a direction"),
        ({"rank": 0}, "rank must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            config(aligned_setup, tmp_path, **kw).validate()


def test_lora_targets_outside_the_direction_are_refused(aligned_setup, tmp_path):
    from safeft.asft.direction import DirectionError

    cfg = config(aligned_setup, tmp_path, lora={"r": 4, "alpha": 16, "target_modules": ["q_proj", "k_proj"]})
    with pytest.raises(DirectionError, match=r"no entry for LoRA layer model.layers.0.self_attn.k_proj"):
        train_asft(cfg)


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("asft_*.yaml")), ids=lambda p: p.name)
def test_recipes_parse(recipe):
    import yaml

    data = yaml.safe_load(recipe.read_text())
    assert data.pop("method") == "asft"
    cfg = from_dict(AsFTConfig, data, where=str(recipe))
    assert cfg.penalty_lambda >= 0 and cfg.projector in ("svd", "paper") and cfg.train_data
