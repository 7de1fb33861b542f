"""``DeRTaArguments`` / ``AsFTArguments`` are ``transformers.TrainingArguments`` (TRL's pattern): parsed by
``HfArgumentParser`` with help text, checked when built, built by the recipes for ``safeft train``, and
enough to run ``DeRTaTrainer`` from a user's own script without a recipe."""

from __future__ import annotations

import pytest
from transformers import HfArgumentParser, TrainingArguments

from safeft.asft.arguments import AsFTArguments
from safeft.asft.trainer import AsFTConfig, AsFTTrainer
from safeft.config import ConfigError, load_recipe
from safeft.derta.arguments import DeRTaArguments
from safeft.derta.trainer import DeRTaConfig, DeRTaTrainer
from safeft.training.base import training_arguments

from derta_tiny import tiny_recipe

pytestmark = pytest.mark.usefixtures("restore_environ")


def test_the_method_arguments_are_training_arguments_parsed_from_the_command_line(tmp_path):
    parser = HfArgumentParser(DeRTaArguments)
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--decision_weight", "0.3", "--loss_weighting", "weighted",
         "--rto_weight", "0.3", "--learning_rate", "5e-4", "--optim", "adafactor", "--use_cpu", "true"]
    )  # fmt: skip
    assert isinstance(args, TrainingArguments)
    assert (args.decision_weight, args.loss_weighting, args.rto_weight, args.rto_keep_ratio) == (
        0.3,
        "weighted",
        0.3,
        1.0,
    )
    assert args.learning_rate == 5e-4 and args.optim == "adafactor"  # TrainingArguments' own fields work
    helps = {a.dest: a.help for a in parser._actions}
    assert "first supervised token" in helps["decision_weight"] and "official" in helps["rto_keep_ratio"]

    (asft,) = HfArgumentParser(AsFTArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--penalty_lambda", "10", "--step_lr", "true", "--use_cpu", "true"]
    )
    assert (asft.penalty_lambda, asft.anti_direction_lambda, asft.step_lr, asft.lr_step_gamma) == (
        10.0,
        0.0,
        True,
        0.85,
    )


@pytest.mark.parametrize(
    ("cls", "bad", "message"),
    [
        (DeRTaArguments, {"rto_keep_ratio": 0.0}, "rto_keep_ratio must be in"),
        (DeRTaArguments, {"loss_weighting": "sum"}, "loss_weighting must be token_mean or weighted"),
        (DeRTaArguments, {"decision_weight": -1.0}, "decision_weight must be >= 0"),
        (DeRTaArguments, {"rto_weight": -0.1}, "rto_weight must be >= 0"),
        (DeRTaArguments, {"guard_weight": -1.0}, "guard_weight must be >= 0"),
        (AsFTArguments, {"penalty_lambda": -1.0}, "penalty_lambda must be >= 0"),
        (AsFTArguments, {"step_lr": True, "lr_step_gamma": 1.5}, "lr_step_gamma must be in"),
        (AsFTArguments, {"step_lr": True, "warmup_steps": 3}, "StepLR.*no warmup"),
    ],
)
def test_bad_values_fail_when_the_arguments_are_built(tmp_path, cls, bad, message):
    with pytest.raises(ConfigError, match=message):
        cls(output_dir=str(tmp_path), use_cpu=True, **bad)


def test_recipes_build_their_methods_arguments(tmp_path, tiny_model_dir):
    config = load_recipe(DeRTaConfig, tiny_recipe(tmp_path, tiny_model_dir, decision_weight=0.3))
    args = training_arguments(config)
    assert type(args) is DeRTaArguments
    assert (args.rto_keep_ratio, args.decision_weight) == (config.rto_keep_ratio, 0.3) == (0.5, 0.3)
    assert args.learning_rate == config.learning_rate

    asft = AsFTConfig(
        output_dir=str(tmp_path / "asft"),
        train_data=[{"path": "unused.jsonl"}],
        penalty_lambda=0.0,
        lr_scheduler_type="step",
        lr_step_gamma=0.5,
        warmup_ratio=0.0,
    )
    args = training_arguments(asft)
    assert type(args) is AsFTArguments and args.step_lr and args.lr_step_gamma == 0.5
    assert args.lr_scheduler_type == "constant"  # StepLR is built by AsFTTrainer, not by transformers


def test_a_trainer_without_its_method_arguments_is_refused(tmp_path, tiny_model_dir):
    from safeft.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(tiny_model_dir)
    plain = TrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    with pytest.raises(TypeError, match=r"DeRTaTrainer needs args=DeRTaArguments"):
        DeRTaTrainer(model=model, args=plain)
    with pytest.raises(TypeError, match=r"AsFTTrainer needs args=AsFTArguments"):
        AsFTTrainer(model=model, args=plain)


def test_derta_trainer_runs_from_a_script_without_a_recipe(tmp_path, tiny_model_dir):
    """The README's "DeRTa in your own script" path: rows from build_derta_examples, arguments built by
    hand, transformers' own Trainer loop; the loss settings of args are the ones used."""
    from safeft.data.chat import ChatFormat
    from safeft.data.records import HelpfulPair, SafetyTriple
    from safeft.derta.features import build_derta_examples
    from safeft.models import load_model_and_tokenizer
    from safeft.training.base import PaddingCollator, examples_dataset

    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    triples = [
        SafetyTriple(
            f"harmful question {i}?", f"Step one of harm {i}, then more.", "Sorry, I can't.", f"t:{i}"
        )
        for i in range(4)
    ]
    helpful = [HelpfulPair(f"benign question {i}?", f"A helpful answer {i}.", f"h:{i}") for i in range(4)]
    rows, _ = build_derta_examples(triples, helpful, ChatFormat(tokenizer), seed=0, guard=True)
    args = DeRTaArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        decision_weight=0.5,
        guard_weight=1.0,
        loss_weighting="weighted",
        rto_weight=0.3,
        logging_steps=1,
        report_to="none",
        remove_unused_columns=False,
        save_strategy="no",
        use_cpu=True,
    )
    trainer = DeRTaTrainer(
        model=model,
        args=args,
        train_dataset=examples_dataset(rows),
        data_collator=PaddingCollator(tokenizer.pad_token_id),
    )
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert trainer.state.global_step == 2 and len(logged) == 2
    assert all("first_loss" in e and "guard_loss" in e for e in logged)  # the weights > 0 came from args


def test_recipes_still_take_dict_trainer_settings_after_a_script_parsed_training_arguments():
    """HfArgumentParser rewrites TrainingArguments' Field.type in place (``dict | str`` -> ``str``); the
    recipe's trainer: check reads the declared annotations, so a later recipe in the process is unaffected."""
    from safeft.training.base import trainer_extras

    HfArgumentParser(DeRTaArguments)
    HfArgumentParser(TrainingArguments)
    extras = trainer_extras({"fsdp_config": {"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}})
    assert extras == {"fsdp_config": {"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}}
    assert trainer_extras({"torch_compile": "true"}) == {"torch_compile": True}
