"""DeRTaTrainer end to end on a tiny random model: outputs, metrics, resume, bad recipes."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import yaml
from safetensors.torch import load_file

from safeft.cli import main
from safeft.models import load_model_and_tokenizer

from derta_tiny import tiny_recipe


def test_train_writes_adapter_merged_model_metrics_and_check(tmp_path, tiny_model_dir, capsys):
    recipe = tiny_recipe(tmp_path, tiny_model_dir)
    assert main(["train", "--config", str(recipe)]) == 0
    run = tmp_path / "run"
    for name in (
        "adapter/adapter_model.safetensors",
        "merged/config.json",
        "recipe.yaml",
        "data_stats.json",
        "check_before.jsonl",
        "check_after.jsonl",
        "split.json",
        "train_log.json",
    ):
        assert (run / name).exists(), name
    log = json.loads((run / "train_log.json").read_text())
    steps = [e for e in log if "loss" in e]
    assert len(steps) == 4
    # each part is logged separately (a step whose batch holds no RTO row logs no rto_loss)
    assert all("mle_loss" in e or "rto_loss" in e for e in steps)
    assert any({"rto_loss", "rto_accuracy"} <= set(e) for e in steps)
    assert any("mle_loss" in e for e in steps)
    stats = json.loads((run / "data_stats.json").read_text())
    assert stats["rows"] == {"prefix": 12, "rto": 12, "helpful": 8}
    # the check prompts never overlap the training prompts
    split = json.loads((run / "split.json").read_text())
    assert split["check_harmful"] == [] and len(split["check_benign"]) == 3
    printed = capsys.readouterr().out
    assert "benign-but-edgy (over-refusal)" in printed and "everyday instructions" in printed
    check = json.loads((run / "check_after.json").read_text())
    assert check["everyday"]["n"] == 3 and 0.0 <= check["selection_score"] <= 3.0
    # LoRA moved the weights: merged != original
    original, _ = load_model_and_tokenizer(tiny_model_dir)
    merged, _ = load_model_and_tokenizer(run / "merged")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(original.state_dict()[q], merged.state_dict()[q])
    assert torch.equal(
        original.state_dict()["model.embed_tokens.weight"], merged.state_dict()["model.embed_tokens.weight"]
    )
    assert "lora_B" in " ".join(load_file(run / "adapter/adapter_model.safetensors"))


def test_a_recipe_with_the_guard_trains_with_it(tmp_path, tiny_model_dir):
    recipe = tiny_recipe(
        tmp_path,
        tiny_model_dir,
        guard_weight=0.5,
        refusal_guard_weight=0.25,
        check={"enabled": False},
        max_steps=2,
        per_device_train_batch_size=32,  # every batch holds the 8 helpful rows
    )
    assert main(["train", "--config", str(recipe)]) == 0
    steps = [e for e in json.loads((tmp_path / "run" / "train_log.json").read_text()) if "loss" in e]
    # logged on every step (p(refusal) of a random model is ~1/|V|, so the logged value rounds to ~0)
    assert len(steps) == 2 and all(e.get("guard_loss", -1) >= 0 for e in steps)
    assert any(e.get("refusal_guard_loss", -1) >= 0 for e in steps)  # logged where a refusal row is in
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert (saved["guard_weight"], saved["refusal_guard_weight"]) == (0.5, 0.25)


def test_a_negative_refusal_guard_weight_is_a_config_error():
    from safeft.config import ConfigError
    from safeft.derta.arguments import DeRTaLossSettings

    with pytest.raises(ConfigError, match="refusal_guard_weight must be >= 0"):
        DeRTaLossSettings(refusal_guard_weight=-1.0).validate_loss()


def test_interrupted_run_resumes_from_its_last_checkpoint(tmp_path, tiny_model_dir, caplog):
    recipe = tiny_recipe(tmp_path, tiny_model_dir, max_steps=2, check={"enabled": False})
    assert main(["train", "--config", str(recipe)]) == 0
    run = tmp_path / "run"
    assert (run / "checkpoints/checkpoint-2").is_dir()
    caplog.set_level(logging.INFO)
    assert main(["train", "--config", str(recipe), "--max_steps", "4"]) == 0
    assert any("resuming from" in r.message and "checkpoint-2" in r.message for r in caplog.records)
    log = json.loads((run / "train_log.json").read_text())
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3, 4]  # steps 1-2 come from the checkpoint
    assert (run / "checkpoints/checkpoint-4").is_dir()


def test_select_best_keeps_the_adapter_of_the_best_validated_checkpoint(tmp_path, tiny_model_dir):
    recipe = tiny_recipe(tmp_path, tiny_model_dir)
    assert main(["train", "--config", str(recipe), "--check.select", "best"]) == 0
    run = tmp_path / "run"
    history = json.loads((run / "validation.json").read_text())
    assert [h["step"] for h in history] == [2, 4]
    best = min(history, key=lambda h: h["score"])
    after = json.loads((run / "check_after.json").read_text())
    assert after["selected_step"] == best["step"]
    kept = load_file(run / "adapter/adapter_model.safetensors")
    best_weights = load_file(run / "best_adapter/adapter_model.safetensors")
    assert kept.keys() == best_weights.keys()
    assert all(torch.equal(kept[k], best_weights[k]) for k in kept)
    curve = (run / "validation.md").read_text().splitlines()  # the per-step validation curve
    assert curve[0].startswith("| step | compliant direct | compliant pre-filled |")
    assert [line.split(" | ")[0] for line in curve[2:]] == ["| 2", "| 4"]
    assert all(line.endswith(f"{h['score']:.3f} |") for line, h in zip(curve[2:], history, strict=True))


def test_held_out_prompts_must_not_be_trained_on(tmp_path, tiny_model_dir, capsys):
    recipe = tiny_recipe(tmp_path, tiny_model_dir)
    helpful = tmp_path / "data/helpful.jsonl"
    code = main(["train", "--config", str(recipe), "--held_out", f"[{{path: {helpful}}}]"])
    assert code == 2
    err = capsys.readouterr().err
    assert "held_out source file" in err and "8 prompt(s) are also training prompts" in err
    assert not (tmp_path / "run").exists()  # failed before the model loaded or anything was written


def test_held_out_twins_from_the_same_record_fail_unless_allowed(tmp_path):
    """A contrast-pair file holds a harmful question and its benign twin in one row: holding out the
    harmful column while training on the benign one is refused (the rows share their record)."""
    from safeft.data.records import DataError
    from safeft.data.sources import SourceConfig, load_helpful_pairs
    from safeft.derta.trainer import DeRTaConfig, check_held_out

    pairs = tmp_path / "pairs.jsonl"
    rows = [{"harmful": f"how do I break lock {i}", "benign": f"how do I fix lock {i}", "answer": "ok"}
            for i in range(4)]  # fmt: skip
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"prompt": "hello", "response": "hi"}) + "\n")
    held = SourceConfig(source="file", path=str(pairs), fields={"prompt": "harmful"})
    twin = SourceConfig(source="file", path=str(pairs), fields={"prompt": "benign", "response": "answer"})
    cfg = DeRTaConfig(held_out=[held])
    helpful = load_helpful_pairs(twin) + load_helpful_pairs(SourceConfig(source="file", path=str(other)))
    prompts = {h.prompt for h in helpful}
    with pytest.raises(DataError, match=r"4 training row\(s\) come from the same record .*pairs.jsonl:1"):
        check_held_out(cfg, prompts, {h.origin for h in helpful})
    check_held_out(cfg, prompts, {h.origin for h in helpful[4:]})  # the unrelated file passes
    cfg.allow_held_out_twins = True
    check_held_out(cfg, prompts, {h.origin for h in helpful})


def test_bad_recipes_fail_with_clear_messages(tmp_path, tiny_model_dir, capsys):
    recipe = tiny_recipe(tmp_path, tiny_model_dir)
    assert main(["train", "--config", str(recipe), "--rto_keep_ratio", "0"]) == 2
    assert "rto_keep_ratio must be in (0, 1]" in capsys.readouterr().err
    assert main(["train", "--config", str(recipe), "--lora.target_modules", "nope_proj"]) == 2
    assert "match no module" in capsys.readouterr().err
    assert main(["train", "--config", str(recipe), "--model", "not-a-model"]) == 2
    assert "unknown model 'not-a-model'" in capsys.readouterr().err
    assert main(["train", "--config", str(recipe), "--no_such_field", "1"]) == 2
    assert "unknown field(s) ['no_such_field']" in capsys.readouterr().err


@pytest.mark.slow
def test_derta_recipe_runs_on_the_embedded_model(tmp_path):
    """A few real steps on SmolLM2 with the shipped recipe and the shared data files."""
    from conftest import shared_file

    data_dir = shared_file("pyrit/many_shot_examples.json").parents[1]
    code = main(
        [
            "train",
            "--config",
            "recipes/derta_smollm2.yaml",
            "--output_dir",
            str(tmp_path / "run"),
            "--data_dir",
            str(data_dir),
            "--max_steps",
            "3",
            "--self_distill",
            "[]",
            "--check.n",
            "4",
            "--check.max_new_tokens",
            "8",
            "--max_length",
            "128",
        ]
    )
    assert code == 0
    check = json.loads((tmp_path / "run/check_after.json").read_text())
    assert check["harmful_direct"]["n"] == 4 and check["benign"]["n"] == 4


def test_full_fine_tuning_without_lora(tmp_path, tiny_model_dir):
    recipe = tiny_recipe(tmp_path, tiny_model_dir, max_steps=2, check={"enabled": False})
    assert main(["train", "--config", str(recipe), "--lora.enabled", "false"]) == 0
    run = tmp_path / "run"
    assert not (run / "adapter").exists() and (run / "merged/config.json").is_file()
    original, _ = load_model_and_tokenizer(tiny_model_dir)
    trained, _ = load_model_and_tokenizer(run / "merged")
    # every weight matrix is trainable in full fine-tuning: the embeddings move too
    name = "model.embed_tokens.weight"
    assert not torch.equal(original.state_dict()[name], trained.state_dict()[name])
