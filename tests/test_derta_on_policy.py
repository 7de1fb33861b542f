"""On-policy harmful answers (``harmful_answers``): which triples get the model's own answer, caching,
and the recipe end to end on a tiny random model (placeholder data, no harmful text)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from safeft.cli import main
from safeft.config import ConfigError
from safeft.data.records import SafetyTriple
from safeft.derta.on_policy import on_policy_triples, with_model_answers
from safeft.derta.trainer import DeRTaConfig
from safeft.models import load_model_and_tokenizer

from derta_tiny import tiny_recipe

TRIPLES = [
    SafetyTriple(f"request {i}?", f"dataset answer {i} a b c", f"Sorry {i}.", f"f:{i}") for i in range(3)
]


def test_self_replaces_answers_the_model_gave_and_keeps_the_dataset_answer_otherwise():
    answers = {"f:0": "model answer zero", "f:2": "model answer two"}
    out, stats = with_model_answers(TRIPLES, answers, "self", Counter({"refusal": 1}))
    assert [t.harmful_response for t in out] == [
        "model answer zero",
        "dataset answer 1 a b c",
        "model answer two",
    ]
    assert [t.refusal for t in out] == [t.refusal for t in TRIPLES]  # the refusal is the triple's
    assert [t.prompt for t in out] == [t.prompt for t in TRIPLES]
    assert out[0].origin == "f:0 (model's answer)" and out[1].origin == "f:1"
    assert stats.as_dict() == {
        "mode": "self",
        "model_answers": 2,
        "dataset_answers": 1,
        "dropped_model_answers": {"refusal": 1},
    }


def test_both_adds_one_triple_per_model_answer_and_dataset_changes_nothing():
    answers = {"f:1": "model answer one"}
    out, stats = with_model_answers(TRIPLES, answers, "both")
    assert out[:3] == TRIPLES and len(out) == 4
    assert out[3].prompt == "request 1?" and out[3].harmful_response == "model answer one"
    assert (stats.model_answers, stats.dataset_answers) == (1, 3)
    same, stats = with_model_answers(TRIPLES, answers, "dataset")
    assert same == TRIPLES and stats.model_answers == 0
    with pytest.raises(ValueError, match="harmful_answers must be one of"):
        with_model_answers(TRIPLES, answers, "mine")


def test_model_answers_are_generated_once_and_cached(tmp_path, tiny_model_dir, monkeypatch):
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir)
    # a usable answer for every prompt, whatever the random model says, so the mapping is checked too
    monkeypatch.setattr("safeft.training.self_distill.drop_reason", lambda answer: None)
    kwargs = {"fingerprint": "tiny", "max_new_tokens": 5, "cache_dir": str(tmp_path)}
    first, stats = on_policy_triples(model, tokenizer, TRIPLES, "self", **kwargs)
    assert stats.model_answers == 3 and stats.dataset_answers == 0
    assert all(t.origin.endswith("(model's answer)") for t in first)
    assert all(not t.harmful_response.startswith("dataset answer") for t in first)
    cache = tmp_path / "self_distill" / "tiny.jsonl"
    assert len(cache.read_text().splitlines()) == 3
    again, _ = on_policy_triples(model, tokenizer, TRIPLES, "self", **kwargs)
    assert again == first and len(cache.read_text().splitlines()) == 3  # nothing generated anew


def test_recipe_trains_on_the_models_own_harmful_answers(tmp_path, tiny_model_dir, monkeypatch):
    # the random model's words are no refusal, but may repeat: only empty answers are dropped here
    monkeypatch.setattr(
        "safeft.training.self_distill.drop_reason", lambda answer: None if answer.strip() else "empty"
    )
    recipe = tiny_recipe(
        tmp_path,
        tiny_model_dir,
        harmful_answers="both",
        cache_dir=str(tmp_path / "cache"),
        check={"enabled": False},
    )
    assert main(["train", "--config", str(recipe)]) == 0
    stats = json.loads((tmp_path / "run" / "data_stats.json").read_text())
    answers = stats["harmful_answers"]
    own = answers["model_answers"]
    assert answers["mode"] == "both" and answers["dataset_answers"] == 12 and own >= 1
    assert own + sum(answers["dropped_model_answers"].values()) == 12
    assert stats["rows"]["rto"] == 12 + own and stats["rows"]["prefix"] == 12 + own
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert sum("(model's answer)" in o for o in split["train_safety"]) == own


def test_unknown_harmful_answers_is_a_clear_error():
    with pytest.raises(ConfigError, match="harmful_answers must be one of dataset, self, both, got 'own'"):
        DeRTaConfig(harmful_answers="own").validate()


def test_vanilla_safety_sft_generates_no_harmful_answer(tmp_path, tiny_model_dir):
    cache = tmp_path / "cache"
    recipe = tiny_recipe(
        tmp_path,
        tiny_model_dir,
        harmful_answers="self",
        prefix=False,
        rto=False,
        cache_dir=str(cache),
        check={"enabled": False},
        max_steps=1,
    )
    assert main(["train", "--config", str(recipe)]) == 0
    stats = json.loads((tmp_path / "run" / "data_stats.json").read_text())
    assert stats["harmful_answers"]["model_answers"] == 0 and "rto" not in stats["rows"]
    assert not (cache / "self_distill").exists()  # nothing was generated


PROMPT_ONLY = [SafetyTriple(f"question {i}?", "", f"Sorry {i}.", f"dna:{i}") for i in range(3)]


def test_prompt_only_triples_take_the_models_answer_or_are_dropped():
    answers = {"dna:0": "model answer zero", "f:1": "model answer one"}
    out, stats = with_model_answers([*TRIPLES, *PROMPT_ONLY], answers, "self", Counter({"refusal": 2}))
    assert [t.origin for t in out] == ["f:0", "f:1 (model's answer)", "f:2", "dna:0 (model's answer)"]
    assert all(t.harmful_response for t in out)
    assert stats.as_dict() == {
        "mode": "self",
        "model_answers": 2,
        "dataset_answers": 2,
        "dropped_model_answers": {"refusal": 2, "no answer, prompt only": 2},
    }
    both, stats = with_model_answers([*TRIPLES, *PROMPT_ONLY], answers, "both")
    assert len(both) == 3 + 2 and all(t.harmful_response for t in both)  # no empty dataset copy
    assert (stats.model_answers, stats.dataset_answers) == (2, 3)


def test_a_prompt_only_source_needs_the_models_answers(tmp_path, tiny_model_dir, capsys):
    """harmful_answers: dataset on a source without harmful answers is refused before any training."""
    prompts = tmp_path / "questions.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"placeholder question {i}?"}) + "\n" for i in range(4)))
    recipe = tiny_recipe(
        tmp_path,
        tiny_model_dir,
        safety=[{"path": str(prompts), "fields": {"prompt": "prompt", "harmful_response": ""}}],
        check={"enabled": False},
    )
    assert main(["train", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "questions.jsonl" in err and "needs harmful_answers: self" in err
    assert not (tmp_path / "run" / "adapter").exists()


def test_vanilla_safety_sft_keeps_the_triples_derta_keeps(tmp_path, tiny_model_dir, monkeypatch):
    """On a prompts-only source DeRTa drops the prompts whose model answer is unusable; vanilla safety SFT
    with the same recipe trains on the same prompts (from the same cached answers), not on every row."""
    # the "model" answers each question with its own words; those of questions 1 and 3 count as refusals
    monkeypatch.setattr(
        "safeft.eval.generation.HFGenerator.generate",
        lambda self, conversations: [f"Answer: {c.messages[-1]['content']}" for c in conversations],
    )
    monkeypatch.setattr(
        "safeft.training.self_distill.drop_reason",
        lambda answer: "refusal" if answer.endswith(("question 1?", "question 3?")) else None,
    )
    questions = tmp_path / "questions.jsonl"
    rows = [json.dumps({"prompt": f"placeholder question {i}?"}) + "\n" for i in range(4)]
    questions.write_text("".join(rows))
    kept = {}
    for name, derta in (("derta", True), ("vanilla", False)):
        recipe = tiny_recipe(
            tmp_path / name,
            tiny_model_dir,
            output_dir=str(tmp_path / name / "run"),
            safety=[{"path": str(questions), "fields": {"prompt": "prompt", "harmful_response": ""}}],
            harmful_answers="self",
            prefix=derta,
            rto=derta,
            cache_dir=str(tmp_path / "cache"),
            check={"enabled": False},
            max_steps=1,
        )
        assert main(["train", "--config", str(recipe)]) == 0
        stats = json.loads((tmp_path / name / "run" / "data_stats.json").read_text())
        dropped = stats["harmful_answers"]["dropped_model_answers"]
        assert dropped == {"refusal": 2, "no answer, prompt only": 2}
        split = json.loads((tmp_path / name / "run" / "split.json").read_text())
        kept[name] = sorted(split["train_safety"])
    assert kept["derta"] == kept["vanilla"] and len(kept["derta"]) == 2
