"""The shipped DeRTa recipes: like-for-like baselines, the official LoRA values, and held-out sets that no
training row uses (checked on the real data the set-up installs, no model needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from safeft.check import normalise
from safeft.config import from_dict
from safeft.data.sources import load_helpful_pairs
from safeft.derta.trainer import DeRTaConfig, check_held_out, load_safety_data, self_distill_prompts

from conftest import shared_file

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _point_settings(cfg) -> dict:
    """Each run of a sweep (point x seed) -> its settings (overrides, then the point's own)."""
    from safeft.sweep import expand_points, flatten

    return {p.name: {**flatten(cfg.overrides), **flatten(p.set)} for p in expand_points(cfg)}


def _load(name: str) -> tuple[dict, DeRTaConfig]:
    data = yaml.safe_load((RECIPES / name).read_text())
    fields = {k: v for k, v in data.items() if k != "method"}
    return data, from_dict(DeRTaConfig, fields, where=name)


@pytest.mark.parametrize(
    ("derta_file", "vanilla_file"),
    [
        ("derta_smollm2.yaml", "derta_vanilla_sft_smollm2.yaml"),
        ("derta_smollm2_onpolicy.yaml", "derta_vanilla_sft_smollm2_onpolicy.yaml"),
    ],
)
def test_vanilla_baseline_matches_the_derta_recipe_row_for_row(derta_file, vanilla_file):
    derta, _ = _load(derta_file)
    vanilla, _ = _load(vanilla_file)
    differ = sorted(k for k in set(derta) | set(vanilla) if derta.get(k) != vanilla.get(k))
    assert differ == ["output_dir", "prefix", "rto"]
    assert (vanilla["prefix"], vanilla["rto"]) == (False, False)


def test_vanilla_baseline_of_the_selection_has_its_rows_and_no_safeft_terms():
    """Session 24's vanilla baseline: the selected `_d03_dna_look_g3` recipe but for the vanilla switches,
    safeft's loss terms off and the first headline seed."""
    derta, _ = _load("derta_smollm2_onpolicy_alpaca_howto_z67_d03_dna_look_g3.yaml")
    vanilla, _ = _load("vanilla_sft_smollm2_dna_look.yaml")
    differ = sorted(k for k in set(derta) | set(vanilla) if derta.get(k) != vanilla.get(k))
    assert differ == ["decision_weight", "guard_weight", "output_dir", "prefix", "rto", "seed"]
    assert [vanilla[k] for k in ("prefix", "rto", "decision_weight", "guard_weight", "seed")] == [
        False,
        False,
        0.0,
        0.0,
        2,
    ]


def test_official_lora_recipe_carries_the_cited_values():
    derta, _ = _load("derta_smollm2.yaml")
    official, cfg = _load("derta_official_lora_smollm2.yaml")
    assert cfg.rto_keep_ratio == 1.0 and cfg.helpful_ratio == 20.0 and cfg.learning_rate == 1e-4
    assert (cfg.lora.r, cfg.lora.alpha, cfg.warmup_ratio, cfg.weight_decay) == (96, 16, 0.0, 0.0)
    assert cfg.num_train_epochs == 2 and cfg.loss_weighting == "token_mean" and not cfg.group_by_length
    # same data as safeft's recipe: only the training set-up differs
    for key in ("safety", "helpful", "self_distill", "self_distill_limit", "held_out", "check", "seed"):
        assert official[key] == derta[key], key


@pytest.mark.parametrize(
    ("name", "n_triples"),
    [
        ("derta_smollm2.yaml", 16),
        ("derta_official_lora_smollm2.yaml", 16),
        ("derta_smollm2_onpolicy.yaml", 64),
        ("derta_smollm2_onpolicy_h20.yaml", 64),
    ],
)
def test_recipes_validate_and_never_train_on_their_held_out_sets(name, n_triples):
    _, cfg = _load(name)
    if cfg.data_dir:  # the recipe's ../shared/data, found from any working directory
        cfg.data_dir = str(shared_file("asft_pku").parent)
    cfg.validate()
    assert cfg.held_out, "a shipped recipe names the evaluation splits it must not train on"
    triples = load_safety_data(cfg)
    helpful = [h for s in cfg.helpful for h in load_helpful_pairs(s, cfg.data_dir)]
    prompts = self_distill_prompts(cfg)
    assert len(triples) == n_triples and len(prompts) > 100
    check_held_out(
        cfg,
        {normalise(t.prompt) for t in triples}
        | {normalise(h.prompt) for h in helpful}
        | {normalise(p) for _, p in prompts},
        {t.origin for t in triples} | {h.origin for h in helpful},
    )


def test_the_seeds_sweeps_fourth_round_combines_rounds_2_and_3_and_selects_within_the_targets():
    """Round 4: howto_train's prompts + 2/3 empty-prefix rows, checked on every everyday validation prompt;
    every run also scored on the step-by-step requests, and only settings within #8's over-refusal
    targets (everyday <= 5%, edgy <= 15%) can be selected."""
    seeds = yaml.safe_load((RECIPES.parent / "sweeps" / "derta_smollm2_seeds.yaml").read_text())
    points = {p["name"]: p["set"] for p in seeds["points"]}
    howto = {k: v for k, v in points["t64_nt_self_alpaca_howto"].items() if k != "check"}
    assert points["t64_nt_self_alpaca_howto_z67"] == {**howto, "prefix_zero_fraction": 0.6667}
    assert seeds["validation_suites"] == [{"suite": "../suites/steps_validation.yaml", "group": "everyday"}]
    assert seeds["selection"] == {"max_over_refusal": {"everyday": 0.05, "benign": 0.15}}
    from safeft.sweep import load_sweep

    config, _ = load_sweep(RECIPES.parent / "sweeps" / "derta_smollm2_seeds.yaml")  # the suite is valid there
    assert config.validation_suites[0].suite.endswith("suites/steps_validation.yaml")


def test_the_seeds_sweeps_vanilla_baseline_has_the_selected_settings_rows():
    """#8 compares pre-filled ASR with vanilla safety SFT on the same data: the baseline point is the
    selected _howto_z67 but for prefix / rto, and is never selectable."""
    seeds = yaml.safe_load((RECIPES.parent / "sweeps" / "derta_smollm2_seeds.yaml").read_text())
    points = {p["name"]: p for p in seeds["points"]}
    vanilla = points["vanilla_alpaca_howto"]
    assert vanilla["baseline"] is True
    selected = points["t64_nt_self_alpaca_howto_z67"]["set"]
    assert vanilla["set"] == {**selected, "prefix": False, "rto": False}
    from safeft.sweep import load_sweep

    config, _ = load_sweep(RECIPES.parent / "sweeps" / "derta_smollm2_seeds.yaml")
    assert [p.name for p in config.points if p.baseline] == ["vanilla_alpaca_howto"]


def test_the_reproduction_sweep_retrains_the_selected_setting_unchanged():
    """sweeps/derta_smollm2_repro.yaml retrains _howto_z67 (and its vanilla baseline) with today's refusal
    keying: same points, seeds, base recipe, overrides, check, validation and evaluation suites as the
    seeds sweep, only the folder differs."""
    sweeps = RECIPES.parent / "sweeps"
    seeds = yaml.safe_load((sweeps / "derta_smollm2_seeds.yaml").read_text())
    repro = yaml.safe_load((sweeps / "derta_smollm2_repro.yaml").read_text())
    by_name = {p["name"]: p for p in seeds["points"]}
    assert repro["points"] == [by_name["t64_nt_self_alpaca_howto_z67"], by_name["vanilla_alpaca_howto"]]
    assert repro["output_dir"] != seeds["output_dir"]
    same = ("recipe", "overrides", "seeds", "eval", "validation_tasks", "validation_suites", "selection")
    assert {k: repro[k] for k in same} == {k: seeds[k] for k in same}
    from safeft.sweep import load_sweep

    load_sweep(sweeps / "derta_smollm2_repro.yaml")


def test_the_decision_recipe_is_the_selected_recipe_plus_the_decision_term():
    z67, _ = _load("derta_smollm2_onpolicy_alpaca_howto_z67.yaml")
    d1, _ = _load("derta_smollm2_onpolicy_alpaca_howto_z67_d1.yaml")
    differ = sorted(k for k in set(z67) | set(d1) if z67.get(k) != d1.get(k))
    assert differ == ["decision_weight", "output_dir"] and d1["decision_weight"] == 1.0
    d03, _ = _load("derta_smollm2_onpolicy_alpaca_howto_z67_d03.yaml")
    differ = sorted(k for k in set(z67) | set(d03) if z67.get(k) != d03.get(k))
    assert differ == ["decision_weight", "output_dir"] and d03["decision_weight"] == 0.3


def test_the_guard_recipe_is_the_guard_sweeps_selected_point():
    """recipes/..._d03_dna_look_g3.yaml = the sweep's base recipe + its overrides + the selected point, and
    differs from `_d03`'s recipe only where the point does."""
    from safeft.sweep import load_sweep

    sweeps = RECIPES.parent / "sweeps"
    config, _ = load_sweep(sweeps / "derta_smollm2_guard.yaml")
    point = next(p for p in config.points if p.name == "t64_nt_self_alpaca_howto_z67_d03_dna_look_g3")
    sweep = yaml.safe_load((sweeps / "derta_smollm2_guard.yaml").read_text())
    base, _ = _load("derta_smollm2.yaml")
    raw_point = next(p for p in sweep["points"] if p["name"] == point.name)
    trained = {**base, **sweep["overrides"], **raw_point["set"]}
    trained["check"] = {**base["check"], **sweep["overrides"]["check"]}
    recipe, _ = _load("derta_smollm2_onpolicy_alpaca_howto_z67_d03_dna_look_g3.yaml")
    recipe["check"] = {**recipe["check"], "before": False}  # the sweep skips the before-check to save time
    assert sorted(k for k in set(trained) | set(recipe) if trained.get(k) != recipe.get(k)) == ["output_dir"]
    d03, _ = _load("derta_smollm2_onpolicy_alpaca_howto_z67_d03.yaml")
    recipe, _ = _load("derta_smollm2_onpolicy_alpaca_howto_z67_d03_dna_look_g3.yaml")
    differ = sorted(k for k in set(d03) | set(recipe) if d03.get(k) != recipe.get(k))
    assert differ == ["guard_weight", "held_out", "output_dir", "safety", "self_distill"]


def test_the_decision_sweep_is_the_selected_setting_plus_the_decision_term_only():
    sweeps = RECIPES.parent / "sweeps"
    repro = yaml.safe_load((sweeps / "derta_smollm2_repro.yaml").read_text())
    decision = yaml.safe_load((sweeps / "derta_smollm2_decision.yaml").read_text())
    selected = repro["points"][0]
    by_weight = {p["set"]["decision_weight"]: p for p in decision["points"]}
    assert sorted(by_weight) == [0.3, 1.0]
    for weight, point in by_weight.items():
        assert point["set"] == {**selected["set"], "decision_weight": weight}
    assert by_weight[1.0]["name"] == selected["name"] + "_d1"
    same = ("recipe", "overrides", "seeds", "eval", "validation_tasks", "validation_suites", "selection")
    assert {k: decision[k] for k in same} == {k: repro[k] for k in same}
    assert decision["output_dir"] != repro["output_dir"]
    from safeft.sweep import load_sweep

    load_sweep(sweeps / "derta_smollm2_decision.yaml")


def test_the_xstest_sweep_reuses_the_trained_settings_and_adds_lookalike_rows_to_d1_only():
    """sweeps/derta_smollm2_xstest.yaml scores the settings trained before (their points unchanged, so
    their runs can be reused) with XSTest's validation half as a third benign group under a 15% limit, and
    trains one new point: _d1 with lookalike_train self-distilled and XSTest held out."""
    from safeft.sweep import load_sweep

    sweeps = RECIPES.parent / "sweeps"
    config, _ = load_sweep(sweeps / "derta_smollm2_xstest.yaml")  # also: no validation prompt is reported
    repro, _ = load_sweep(sweeps / "derta_smollm2_repro.yaml")
    decision, _ = load_sweep(sweeps / "derta_smollm2_decision.yaml")

    new = _point_settings(config)
    for old in (_point_settings(repro), _point_settings(decision)):
        for name, values in old.items():
            assert new[name] == values, name
    look = {p.name: p.set for p in config.points}["t64_nt_self_alpaca_howto_z67_d1_look"]
    d1 = {p.name: p.set for p in decision.points}["t64_nt_self_alpaca_howto_z67_d1"]
    assert {k for k in look if look[k] != d1.get(k)} == {"self_distill", "held_out"}
    assert look["self_distill"] == [*d1["self_distill"], {"source": "lookalike_train"}]
    assert look["held_out"] == [*config.overrides["held_out"], {"source": "xstest"}]
    assert [(s.suite.split("/")[-1], s.group) for s in config.validation_suites] == [
        ("steps_validation.yaml", "everyday"),
        ("xstest_validation.yaml", "xstest"),
    ]
    assert config.selection.max_over_refusal == {"everyday": 0.05, "benign": 0.15, "xstest": 0.15}


def test_the_sst2_sweep_reuses_the_xstest_sweeps_settings_and_adds_sentiment_rows_to_d03():
    """sweeps/derta_smollm2_sst2.yaml (session 20) scores the xstest sweep's settings unchanged (their runs
    are linked, not retrained) under the same rule, and trains `_d03` + 100 self-distilled sst2_train
    prompts, and that point + lookalike_train with XSTest held out."""
    from safeft.sweep import load_sweep

    sweeps = RECIPES.parent / "sweeps"
    config, _ = load_sweep(sweeps / "derta_smollm2_sst2.yaml")
    xstest, _ = load_sweep(sweeps / "derta_smollm2_xstest.yaml")

    new = _point_settings(config)
    for name, values in _point_settings(xstest).items():
        assert new[name] == values, name
    points = {p.name: p.set for p in config.points}
    d03 = points["t64_nt_self_alpaca_howto_z67_d03"]
    sst2 = points["t64_nt_self_alpaca_howto_z67_d03_sst2"]
    look = points["t64_nt_self_alpaca_howto_z67_d03_sst2_look"]
    assert {k for k in sst2 if sst2[k] != d03.get(k)} == {"self_distill"}
    assert sst2["self_distill"] == [*d03["self_distill"], {"source": "sst2_train", "limit": 100}]
    assert {k for k in look if look[k] != sst2.get(k)} == {"self_distill", "held_out"}
    assert look["self_distill"] == [*sst2["self_distill"], {"source": "lookalike_train"}]
    assert look["held_out"] == [*config.overrides["held_out"], {"source": "xstest"}]
    assert config.validation_suites == xstest.validation_suites and config.selection == xstest.selection
    assert config.output_dir != xstest.output_dir


def test_the_vanilla_decision_sweep_adds_the_term_to_vanilla_as_a_control_only():
    """sweeps/derta_smollm2_vanilla_decision.yaml (session 21) scores the xstest sweep's settings unchanged
    (linked runs) and trains one control: vanilla safety SFT's rows with `_d03`'s decision weight, a
    baseline (never selected)."""
    from safeft.sweep import load_sweep

    sweeps = RECIPES.parent / "sweeps"
    config, _ = load_sweep(sweeps / "derta_smollm2_vanilla_decision.yaml")
    xstest, _ = load_sweep(sweeps / "derta_smollm2_xstest.yaml")

    old, new = _point_settings(xstest), _point_settings(config)
    assert set(new) - set(old) == {"vanilla_alpaca_howto_d03_seed2", "vanilla_alpaca_howto_d03_seed3"}
    for name in set(new) & set(old):
        assert new[name] == old[name], name
    points = {p.name: p for p in config.points}
    control, vanilla = points["vanilla_alpaca_howto_d03"], points["vanilla_alpaca_howto"]
    d03 = points["t64_nt_self_alpaca_howto_z67_d03"]
    assert control.baseline and vanilla.baseline and not d03.baseline
    assert {k for k in control.set if control.set[k] != vanilla.set.get(k)} == {"decision_weight"}
    assert control.set["decision_weight"] == d03.set["decision_weight"] == 0.3
    assert config.validation_suites == xstest.validation_suites and config.selection == xstest.selection
    assert config.eval == xstest.eval and config.output_dir != xstest.output_dir


def test_the_guard_sweep_adds_only_the_guard_to_the_questions_sweeps_front_point():
    """sweeps/derta_smollm2_guard.yaml (session 22) scores the questions sweep's settings unchanged
    (linked runs) and trains `_d03_dna_look` with guard_weight 1 and 3, nothing else changed, and (added
    later) `_g3` with more Do-Not-Answer questions."""
    from safeft.sweep import load_sweep

    sweeps = RECIPES.parent / "sweeps"
    config, _ = load_sweep(sweeps / "derta_smollm2_guard.yaml")
    questions, _ = load_sweep(sweeps / "derta_smollm2_questions.yaml")
    old, new = _point_settings(questions), _point_settings(config)
    for name in set(new) & set(old):
        assert new[name] == old[name], name
    points = {p.name: p for p in config.points}
    look = points["t64_nt_self_alpaca_howto_z67_d03_dna_look"]
    added = {p.name for p in config.points} - {p.name for p in questions.points}
    more = "t64_nt_self_alpaca_howto_z67_d03_dna48_look_g3"
    assert added == {f"{look.name}_g1", f"{look.name}_g3", more}
    for name in added - {more}:
        point = points[name]
        assert {k for k in point.set if point.set[k] != look.set.get(k)} == {"guard_weight"}
        assert not point.baseline
    assert [points[f"{look.name}_g{g}"].set["guard_weight"] for g in (1, 3)] == [1.0, 3.0]
    # the later point: `_g3` with 16 PyRIT + 48 Do-Not-Answer safety rows
    g3 = points[f"{look.name}_g3"]
    assert {k for k in points[more].set if points[more].set[k] != g3.set.get(k)} == {"safety"}
    assert [(s["source"], s.get("limit"), s.get("sample")) for s in points[more].set["safety"]] == [
        ("pyrit_many_shot", 16, None),
        ("donotanswer_malicious", None, 48),
    ]
    assert config.validation_suites == questions.validation_suites and config.selection == questions.selection
    assert config.eval == questions.eval and config.output_dir != questions.output_dir


@pytest.mark.parametrize(
    ("recipe_file", "point_name"),
    [
        ("derta_smollm2_onpolicy.yaml", "t64_nt_self"),
        ("derta_smollm2_onpolicy_h20.yaml", "t64_nt_self_h20_alpaca"),
        ("derta_smollm2_onpolicy_alpaca.yaml", "t64_nt_self_alpaca"),
    ],
)
def test_the_onpolicy_recipes_are_the_follow_up_sweeps_points(recipe_file, point_name):
    """An on-policy recipe = the sweep's base recipe + overrides + its point (t64_nt_self: the selection)."""
    sweep = yaml.safe_load((RECIPES.parent / "sweeps/derta_smollm2_diverse.yaml").read_text())
    base, _ = _load("derta_smollm2.yaml")
    point = next(p for p in sweep["points"] if p["name"] == point_name)
    trained = {**base, **sweep["overrides"], **point["set"]}
    trained["check"] = {**base["check"], **sweep["overrides"]["check"]}
    recipe, _ = _load(recipe_file)
    recipe["check"] = {**recipe["check"], "before": False}  # the sweep skips the before-check to save time
    differ = sorted(k for k in set(trained) | set(recipe) if trained.get(k) != recipe.get(k))
    assert differ == ["output_dir"]


def test_the_triples_sweep_changes_t64_nt_self_in_one_setting_per_point():
    """sweeps/derta_smollm2_triples.yaml asks two questions of the selected point: each of its points must
    be t64_nt_self (same base recipe, overrides, evaluation and validation tasks) but for one setting."""
    sweeps = RECIPES.parent / "sweeps"
    diverse = yaml.safe_load((sweeps / "derta_smollm2_diverse.yaml").read_text())
    triples = yaml.safe_load((sweeps / "derta_smollm2_triples.yaml").read_text())
    for key in ("recipe", "overrides", "eval", "validation_tasks"):
        assert triples[key] == diverse[key], key
    selected = next(p for p in diverse["points"] if p["name"] == "t64_nt_self")["set"]
    points = {p["name"]: p["set"] for p in triples["points"]}
    assert points["t64_nt_self_seed1"] == {**selected, "seed": 1}
    rows_65_128 = [{"source": "pyrit_many_shot", "offset": 64, "limit": 64}]
    assert points["t64b_nt_self"] == {**selected, "safety": rows_65_128}


def test_the_seeds_sweep_retrains_the_two_best_diverse_points_unchanged_but_for_validation_size():
    """sweeps/derta_smollm2_seeds.yaml compares t64_nt_self and t64_nt_self_alpaca on fresh seeds: their
    settings, evaluation and validation tasks must be the diverse sweep's; only check.n grows (30 -> 150)."""
    sweeps = RECIPES.parent / "sweeps"
    diverse = yaml.safe_load((sweeps / "derta_smollm2_diverse.yaml").read_text())
    seeds = yaml.safe_load((sweeps / "derta_smollm2_seeds.yaml").read_text())
    for key in ("recipe", "eval", "validation_tasks"):
        assert seeds[key] == diverse[key], key
    bigger_check = {**diverse["overrides"]["check"], "n": 150}
    assert seeds["overrides"] == {**diverse["overrides"], "check": bigger_check}
    earlier = {p["name"]: p["set"] for p in diverse["points"]}
    points = {p["name"]: p["set"] for p in seeds["points"]}
    round_1 = ("t64_nt_self", "t64_nt_self_alpaca")
    assert {name: points[name] for name in round_1} == {name: earlier[name] for name in round_1}
    assert seeds["seeds"] == [2, 3]  # seeds 0 and 1 ran before (diverse, triples): not in the choice


def test_the_seeds_sweeps_second_round_changes_only_the_share_of_empty_prefixes():
    """Round 2 of sweeps/derta_smollm2_seeds.yaml: t64_nt_self_alpaca with prefix_zero_fraction 2/3 and 1.0
    (1/3 everywhere before), so the comparison isolates that one knob."""
    seeds = yaml.safe_load((RECIPES.parent / "sweeps" / "derta_smollm2_seeds.yaml").read_text())
    points = {p["name"]: p["set"] for p in seeds["points"]}
    selected = points["t64_nt_self_alpaca"]
    assert "prefix_zero_fraction" not in selected
    assert yaml.safe_load((RECIPES / "derta_smollm2.yaml").read_text())["prefix_zero_fraction"] == 0.3333
    assert points["t64_nt_self_alpaca_z67"] == {**selected, "prefix_zero_fraction": 0.6667}
    assert points["t64_nt_self_alpaca_z100"] == {**selected, "prefix_zero_fraction": 1.0}


def test_the_seeds_sweeps_third_round_adds_only_the_howto_prompts_and_keeps_the_validation_set():
    """Round 3: t64_nt_self_alpaca plus the howto_train prompts; its check reads the same 110 everyday
    validation prompts as rounds 1-2 (the step-by-step template added later is measured apart)."""
    seeds = yaml.safe_load((RECIPES.parent / "sweeps" / "derta_smollm2_seeds.yaml").read_text())
    points = {p["name"]: p["set"] for p in seeds["points"]}
    selected = points["t64_nt_self_alpaca"]
    assert points["t64_nt_self_alpaca_howto"] == {
        **selected,
        "self_distill": [*selected["self_distill"], {"source": "howto_train"}],
        "check": {"everyday": {"source": "everyday_validation", "limit": 110}},
    }
    from safeft.data.everyday import everyday_prompts

    assert [pid for pid, _ in everyday_prompts("validation")[:110]] == [
        pid for pid, _ in everyday_prompts("validation") if not pid.startswith("everyday:t30:")
    ]


@pytest.mark.parametrize(
    ("recipe_file", "point_name"),
    [
        ("derta_smollm2_onpolicy_alpaca_z67.yaml", "t64_nt_self_alpaca_z67"),
        ("derta_smollm2_onpolicy_alpaca_howto.yaml", "t64_nt_self_alpaca_howto"),
        ("derta_smollm2_onpolicy_alpaca_howto_z67.yaml", "t64_nt_self_alpaca_howto_z67"),
    ],
)
def test_the_seed_rounds_recipes_are_their_sweep_points(recipe_file, point_name):
    """A recipe of rounds 2-4 = the seeds sweep's base recipe + overrides + its point, but for its folder and
    its check, which validates on every installed prompt (check.n 150, no limit on the everyday set)."""
    sweep = yaml.safe_load((RECIPES.parent / "sweeps/derta_smollm2_seeds.yaml").read_text())
    base, _ = _load("derta_smollm2.yaml")
    point = next(p for p in sweep["points"] if p["name"] == point_name)
    trained = {**base, **sweep["overrides"], **point["set"]}
    recipe, _ = _load(recipe_file)
    differ = sorted(k for k in set(trained) | set(recipe) if trained.get(k) != recipe.get(k))
    assert differ == ["check", "output_dir"]
    assert recipe["check"] == {**base["check"], "n": 150}


def test_the_questions_sweep_changes_only_the_safety_rows_of_d03():
    """sweeps/derta_smollm2_questions.yaml (session 21): the settings of the xstest and vanilla-decision
    sweeps unchanged (linked runs), `_d03` with Do-Not-Answer questions in place of half its PyRIT triples
    (`_dna`), and that point with lookalike_train and XSTest held out (`_dna_look`)."""
    from safeft.sweep import load_sweep

    sweeps = RECIPES.parent / "sweeps"
    config, _ = load_sweep(sweeps / "derta_smollm2_questions.yaml")
    control, _ = load_sweep(sweeps / "derta_smollm2_vanilla_decision.yaml")
    old, new = _point_settings(control), _point_settings(config)
    assert set(old) < set(new)
    for name in old:
        assert new[name] == old[name], name
    points = {p.name: p.set for p in config.points}
    d03 = points["t64_nt_self_alpaca_howto_z67_d03"]
    dna = points["t64_nt_self_alpaca_howto_z67_d03_dna"]
    look = points["t64_nt_self_alpaca_howto_z67_d03_dna_look"]
    assert {k for k in dna if dna[k] != d03.get(k)} == {"safety"}
    assert dna["safety"] == [
        {"source": "pyrit_many_shot", "limit": 32},
        {"source": "donotanswer_malicious", "sample": 32},
    ]
    assert {k for k in look if look[k] != dna.get(k)} == {"self_distill", "held_out"}
    assert look["self_distill"] == [*dna["self_distill"], {"source": "lookalike_train"}]
    assert look["held_out"] == [*config.overrides["held_out"], {"source": "xstest"}]
    assert config.validation_suites == control.validation_suites and config.selection == control.selection
    assert config.eval == control.eval and config.output_dir != control.output_dir
