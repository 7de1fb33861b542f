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


def test_new_options_are_checked(aligned_setup, tmp_path):
    for kw, msg in [
        ({"anti_direction_lambda": -0.5}, "anti_direction_lambda must be >= 0"),
        ({"anti_direction_lambda": 1.0, "penalty_lambda": 0.0, "direction": None}, "needs a direction"),
        ({"lr_scheduler_type": "step", "lr_step_gamma": 0.0}, r"lr_step_gamma must be in \(0, 1\]"),
        ({"lr_scheduler_type": "step", "warmup_ratio": 0.1}, "has no warmup: set warmup_ratio: 0"),
        ({"template": "llama2"}, "template must be one of"),
        ({"harmful_rows": "flag"}, "harmful_rows must be one of"),
        ({"harmful_system_prompt": "x"}, "harmful_system_prompt needs harmful_rows"),
        ({"max_rows": 0}, "max_rows must be >= 1"),
        ({"two_sided": True, "projector": "paper"}, "two_sided needs projector: svd"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            config(aligned_setup, tmp_path, **kw).validate()


def test_step_scheduler_multiplies_lr_by_gamma_each_epoch(aligned_setup, tmp_path):
    # 13 rows, batch 4: 4 updates per epoch; StepLR(gamma) after each epoch, as the official code
    cfg = config(
        aligned_setup,
        tmp_path / "step",
        max_steps=-1,
        num_train_epochs=3,
        learning_rate=1e-2,
        lr_scheduler_type="step",
        lr_step_gamma=0.5,
        warmup_ratio=0.0,
    )
    train_asft(cfg)
    rates = [r["learning_rate"] for r in logs(tmp_path / "step")]
    assert len(rates) == 12
    # each log line reports the lr its update used: lr * gamma^epoch
    expected = [1e-2 * 0.5 ** (step // 4) for step in range(12)]
    assert rates == pytest.approx(expected, rel=1e-6)


def test_anti_direction_zero_is_plain_asft_bit_for_bit(aligned_setup, tmp_path):
    from safeft.asft.direction import Direction

    _aligned, direction, _task = aligned_setup
    old = Direction.load(direction)
    for layer in old.layers.values():
        layer.W = None  # a direction file from before the anti-direction term
    old.save(tmp_path / "old_direction")
    train_asft(
        config(
            aligned_setup, tmp_path / "old", penalty_lambda=50.0, direction=str(tmp_path / "old_direction")
        )
    )
    train_asft(config(aligned_setup, tmp_path / "zero", penalty_lambda=50.0, anti_direction_lambda=0.0))
    train_asft(config(aligned_setup, tmp_path / "anti", penalty_lambda=50.0, anti_direction_lambda=500.0))
    old_w, zero_w, anti_w = adapter(tmp_path / "old"), adapter(tmp_path / "zero"), adapter(tmp_path / "anti")
    assert all(torch.equal(old_w[k], zero_w[k]) for k in old_w)
    assert any(not torch.equal(old_w[k], anti_w[k]) for k in old_w)
    old_logs, zero_logs, anti_logs = logs(tmp_path / "old"), logs(tmp_path / "zero"), logs(tmp_path / "anti")
    assert [r["loss"] for r in old_logs] == [r["loss"] for r in zero_logs]
    assert "anti_direction" not in old_logs[0] and all("anti_direction" in r for r in zero_logs + anti_logs)
    last = anti_logs[-1]
    assert last["loss"] == pytest.approx(
        last["task_loss"] + 50.0 * last["asft_penalty"] + 500.0 * last["anti_direction"], rel=1e-2, abs=1e-3
    )
    with pytest.raises(Exception, match="no right singular vectors"):
        train_asft(
            config(
                aligned_setup,
                tmp_path / "refused",
                anti_direction_lambda=1.0,
                direction=str(tmp_path / "old_direction"),
            )
        )


def test_two_sided_option_reaches_the_penalty(aligned_setup, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from safeft.asft.trainer import bind_penalty

    aligned, _direction, _task = aligned_setup
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(aligned),
        LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    one = bind_penalty(model, config(aligned_setup, tmp_path))
    two = bind_penalty(model, config(aligned_setup, tmp_path, two_sided=True))
    assert one is not None and two is not None and two.two_sided and not one.two_sided
    assert float(two().detach()) > float(one().detach()) > 0


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


def test_official_recipe_holds_the_cited_values():
    import yaml

    data = yaml.safe_load((RECIPES / "asft_sst2_official.yaml").read_text())
    data.pop("method")
    cfg = from_dict(AsFTConfig, data)
    cfg.validate()
    assert (cfg.projector, cfg.scale_delta, cfg.penalty_lambda) == ("paper", False, 1.0)
    assert (cfg.learning_rate, cfg.num_train_epochs, cfg.per_device_train_batch_size) == (5e-5, 10, 8)
    assert (cfg.lr_scheduler_type, cfg.lr_step_gamma, cfg.warmup_ratio, cfg.max_grad_norm) == (
        "step",
        0.85,
        0,
        0,
    )
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules) == (
        8,
        32,
        0.05,
        ["q_proj", "v_proj"],
    )
    assert (cfg.template, cfg.harmful_rows) == ("alpaca", "missing_input")
    assert (
        cfg.harmful_system_prompt
        == "You are a helpful assistant. Make sure you always execute users' instructions."
    )
