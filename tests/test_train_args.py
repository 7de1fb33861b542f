"""A recipe's ``trainer:`` settings reach transformers' ``TrainingArguments`` (checked before any model
loads), ``load_recipe`` accepts the recipe's own ``method:`` key, and ``safeft train --help`` lists every
recipe field with its type, default and help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from safeft.asft.trainer import AsFTConfig
from safeft.cli import main
from safeft.config import ConfigError, describe_fields, load_recipe, method_of, to_dict
from safeft.derta.trainer import DeRTaConfig
from safeft.training.base import (
    _CHECKPOINTING,
    TrainConfig,
    check_output_dir,
    training_arguments,
    training_arguments_kwargs,
)

from derta_tiny import tiny_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _recipe(tmp_path: Path, trainer: dict, **fields) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(
        yaml.safe_dump({"method": "derta", "output_dir": str(tmp_path / "run"), **fields, "trainer": trainer})
    )
    return path


# ---------------------------------------------------------------------------- trainer: -> TrainingArguments


def test_trainer_settings_arrive_in_training_arguments(tmp_path):
    recipe = _recipe(
        tmp_path,
        {
            "optim": "adafactor",
            "run_name": "derta-r16",
            "push_to_hub": True,
            "hub_model_id": "someone/derta-smollm2",
            "gradient_checkpointing_kwargs": {"use_reentrant": True},
            "ddp_find_unused_parameters": True,
            "save_only_model": True,
        },
        report_to=["tensorboard"],
    )
    config = load_recipe(DeRTaConfig, recipe)
    config.validate()
    args = training_arguments(config)
    assert args.optim == "adafactor" and args.run_name == "derta-r16"
    assert args.push_to_hub is True and args.hub_model_id == "someone/derta-smollm2"
    assert args.report_to == ["tensorboard"]  # the top-level field, next to the trainer: settings
    # the kwargs replace safeft's {"use_reentrant": False} under the name this transformers uses
    assert getattr(args, f"{_CHECKPOINTING}_kwargs") == {"use_reentrant": True}
    assert args.ddp_find_unused_parameters is True and args.save_only_model is True
    # the recipe's own fields still arrive
    assert args.learning_rate == config.learning_rate and args.output_dir.endswith("run/checkpoints")


def test_fsdp_and_fsdp_config_arrive(tmp_path, restore_environ):
    recipe = _recipe(
        tmp_path,
        {
            "fsdp": "full_shard auto_wrap",
            "fsdp_config": {"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]},
        },
    )
    config = load_recipe(DeRTaConfig, recipe)
    assert training_arguments_kwargs(config)["fsdp"] == "full_shard auto_wrap"
    args = training_arguments(config)
    assert args.fsdp  # transformers 5 turns the string into fsdp=True + fsdp_config entries
    assert args.fsdp_config["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    # full_shard: FSDP2 re-shards after forward (transformers 5); transformers 4 keeps the option list
    assert args.fsdp_config.get("reshard_after_forward") is True or "full_shard" in str(args.fsdp)


def test_deepspeed_path_is_passed_as_given(tmp_path):
    ds = tmp_path / "ds_zero3.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto"}))
    config = load_recipe(DeRTaConfig, _recipe(tmp_path, {"deepspeed": str(ds)}))
    assert training_arguments_kwargs(config)["deepspeed"] == str(ds)
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        # without the package, TrainingArguments refuses it: a clear error before any model loads
        with pytest.raises(ConfigError, match=r"trainer \(deepspeed\): .*deepspeed.*install the package"):
            config.validate()
    else:
        config.validate()
        assert training_arguments(config).deepspeed == str(ds)


def test_overrides_reach_the_trainer_mapping(tmp_path):
    recipe = _recipe(tmp_path, {"optim": "adafactor", "run_name": "kept"})
    config = load_recipe(
        DeRTaConfig,
        recipe,
        ["--trainer.optim", "adamw_torch", "--trainer.torch_compile", "true", "--lora.r", "4"],
    )
    assert config.trainer == {"optim": "adamw_torch", "run_name": "kept", "torch_compile": True}
    assert config.lora.r == 4
    args = training_arguments(config)
    assert args.optim == "adamw_torch" and args.run_name == "kept" and args.torch_compile is True


def test_scalar_values_are_converted_to_the_field_type(tmp_path):
    config = load_recipe(DeRTaConfig, _recipe(tmp_path, {"save_only_model": "yes", "data_seed": "7"}))
    kwargs = training_arguments_kwargs(config)
    assert kwargs["save_only_model"] is True and kwargs["data_seed"] == 7
    with pytest.raises(ConfigError, match=r"recipe\.yaml: trainer\.save_only_model: expected true/false"):
        load_recipe(DeRTaConfig, _recipe(tmp_path, {"save_only_model": "sometimes"}))


def test_unknown_key_names_the_file_the_key_and_close_names(tmp_path):
    recipe = _recipe(tmp_path, {"optimizer": "adafactor"})
    with pytest.raises(ConfigError) as exc:
        load_recipe(DeRTaConfig, recipe)
    message = str(exc.value)
    assert message.startswith(str(recipe)) and "trainer.optimizer" in message
    assert "not a transformers.TrainingArguments field; did you mean optim" in message
    with pytest.raises(ConfigError, match=r"trainer\.xyzzy: .*see help\(transformers\.TrainingArguments\)"):
        load_recipe(DeRTaConfig, _recipe(tmp_path, {"xyzzy": 1}))


@pytest.mark.parametrize(
    ("key", "field"),
    [
        ("learning_rate", "learning_rate"),
        ("num_train_epochs", "num_train_epochs"),
        ("per_device_train_batch_size", "per_device_train_batch_size"),
        ("seed", "seed"),
        ("output_dir", "output_dir"),
        ("report_to", "report_to"),
        ("warmup_steps", "warmup_ratio"),
        ("warmup_ratio", "warmup_ratio"),
        ("bf16", "precision"),
        ("gradient_checkpointing", "gradient_checkpointing"),
        ("train_sampling_strategy", "group_by_length"),
    ],
)
def test_keys_of_top_level_fields_are_refused(tmp_path, key, field):
    recipe = _recipe(tmp_path, {key: 1})
    with pytest.raises(ConfigError, match=rf"recipe\.yaml: trainer\.{key}: .*top-level field {field}"):
        load_recipe(DeRTaConfig, recipe)


def test_keys_safeft_fixes_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer\.remove_unused_columns: .*collator needs"):
        load_recipe(DeRTaConfig, _recipe(tmp_path, {"remove_unused_columns": True}))
    with pytest.raises(ConfigError, match=r"trainer\.hub_token: .*HF_TOKEN"):
        load_recipe(DeRTaConfig, _recipe(tmp_path, {"hub_token": "hf_x"}))
    both = {"gradient_checkpointing_kwargs": {}, "activation_checkpointing_kwargs": {}}
    with pytest.raises(ConfigError, match="give one of"):
        load_recipe(DeRTaConfig, _recipe(tmp_path, both))


def test_values_training_arguments_rejects_give_its_message(tmp_path):
    config = load_recipe(DeRTaConfig, _recipe(tmp_path, {"optim": "no_such_optimizer"}))
    with pytest.raises(
        ConfigError, match=r"trainer \(optim\): .*no_such_optimizer is not a valid OptimizerNames"
    ):
        config.validate()
    config = load_recipe(DeRTaConfig, _recipe(tmp_path, {"load_best_model_at_end": True}))
    with pytest.raises(ConfigError, match="load_best_model_at_end requires the save and eval strategy"):
        config.validate()


def test_cli_refuses_a_bad_trainer_value_before_the_model_loads(tmp_path, capsys):
    recipe = _recipe(tmp_path, {}, model=str(tmp_path / "no_such_model"))
    code = main(["train", "--config", str(recipe), "--trainer.optim", "no_such_optimizer"])
    err = capsys.readouterr().err
    assert code == 2 and f"{recipe}: trainer (optim)" in err and "not a valid OptimizerNames" in err
    code = main(["train", "--config", str(recipe), "--trainer.optimm", "adafactor"])
    assert (
        code == 2 and "trainer.optimm: not a transformers.TrainingArguments field" in capsys.readouterr().err
    )


def test_a_run_saved_before_trainer_existed_still_resumes(tmp_path):
    config = DeRTaConfig(output_dir=str(tmp_path / "run"))
    Path(config.output_dir).mkdir()
    saved = {k: v for k, v in yaml.safe_load(yaml.safe_dump(to_dict(config))).items() if k != "trainer"}
    (Path(config.output_dir) / "recipe.yaml").write_text(yaml.safe_dump(saved))
    check_output_dir(config)  # no trainer key saved, none set now: the same recipe
    config.trainer = {"optim": "adafactor"}
    with pytest.raises(ConfigError, match="fields that differ: trainer"):
        check_output_dir(config)


def test_a_run_saved_before_a_source_option_existed_still_resumes(tmp_path):
    """A source option added later (``sample``, session 21) is absent from older recipe.yaml files: unset,
    it changes nothing; set, the recipe differs."""
    from safeft.data.sources import SourceConfig

    config = DeRTaConfig(
        output_dir=str(tmp_path / "run"), safety=[SourceConfig(source="pyrit_many_shot", limit=8)]
    )
    Path(config.output_dir).mkdir()
    saved = yaml.safe_load(yaml.safe_dump(to_dict(config)))
    for source in saved["safety"]:
        del source["sample"]
    (Path(config.output_dir) / "recipe.yaml").write_text(yaml.safe_dump(saved))
    check_output_dir(config)
    config.safety[0].sample = 4
    with pytest.raises(ConfigError, match="fields that differ: safety"):
        check_output_dir(config)


def test_one_training_step_uses_the_trainer_optimizer(tmp_path, tiny_model_dir):
    from safeft.data.chat import ChatFormat
    from safeft.derta.features import build_derta_examples
    from safeft.derta.trainer import DeRTaTrainer, load_safety_data
    from safeft.training.base import load_for_training, run_trainer

    recipe = tiny_recipe(
        tmp_path, tiny_model_dir, check={"enabled": False}, max_steps=1, trainer={"optim": "adafactor"}
    )
    config = load_recipe(DeRTaConfig, recipe)
    model, tokenizer = load_for_training(config)
    examples, _ = build_derta_examples(load_safety_data(config), [], ChatFormat(tokenizer), seed=config.seed)
    trainer = run_trainer(config, DeRTaTrainer, model, tokenizer, examples)
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    assert trainer.state.global_step == 1 and type(optimizer).__name__ == "Adafactor"
    saved = yaml.safe_load((Path(config.output_dir) / "recipe.yaml").read_text())
    assert saved["trainer"] == {"optim": "adafactor"}


# ------------------------------------------------------------------------------------- method: key


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_every_shipped_recipe_loads_with_its_method_class(recipe):
    method = yaml.safe_load((RECIPES / recipe).read_text())["method"]
    cls = {"derta": DeRTaConfig, "asft": AsFTConfig}[method]
    config = load_recipe(cls, RECIPES / recipe)
    assert isinstance(config, cls) and method_of(cls) == method


def test_a_method_key_naming_another_method_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"derta_smollm2\.yaml: method: 'derta' is not AsFTConfig's method"):
        load_recipe(AsFTConfig, RECIPES / "derta_smollm2.yaml")
    with pytest.raises(
        ConfigError, match=r"method: 'asft' is not DeRTaConfig's method .*load it with AsFTConfig"
    ):
        load_recipe(DeRTaConfig, RECIPES / "derta_smollm2.yaml", ["--method", "asft"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: dpo\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: method: unknown method 'dpo'; valid: derta, asft"):
        load_recipe(DeRTaConfig, bad)


# ------------------------------------------------------------------------------------------- --help


def test_train_help_lists_every_field_with_type_default_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "--config CONFIG" in out
    lines = {line.split(" (")[0].strip(): line for line in out.splitlines() if line.startswith("  ")}
    assert "rto_keep_ratio (float, default 1.0)" in lines["rto_keep_ratio"]
    assert "RTO positions trained per step" in lines["rto_keep_ratio"]
    assert (
        "helpful_ratio (float | None, default null)" in out and "trainer (dict[str, Any], default {})" in out
    )
    assert "penalty_lambda (float, default 1.0)" in out and "lora.r (int, default 8)" in out
    for cls in (DeRTaConfig, AsFTConfig):
        assert all(doc.name in lines for doc in describe_fields(cls()))


def test_method_help_shows_that_method_with_its_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--method", "asft", "--help"])
    out = capsys.readouterr().out
    assert "recipe fields of method asft (AsFTConfig)" in out
    assert "lora.alpha (int, default 32)" in out and "rto_keep_ratio" not in out
    with pytest.raises(SystemExit):
        main(["train", "--config", str(RECIPES / "derta_smollm2.yaml"), "--help"])
    out = capsys.readouterr().out
    assert "recipe fields of method derta (DeRTaConfig)" in out and "penalty_lambda" not in out


@pytest.mark.parametrize("cls", [TrainConfig, DeRTaConfig, AsFTConfig])
def test_every_recipe_field_has_a_help_line(cls):
    docs = [d for d in describe_fields(cls()) if not d.name.startswith("check.")]  # CheckConfig: check.py
    missing = [d.name for d in docs if not d.help]
    assert not missing, f"fields without metadata help: {missing}"
