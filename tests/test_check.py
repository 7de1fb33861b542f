"""The quick before/after check's bookkeeping (generation itself is covered by the trainer tests)."""

from __future__ import annotations

import json

from safeft.check import format_check, is_repetitive, normalise


def test_repetitive_answers_are_flagged():
    assert is_repetitive("oofing, whereSorrySorrySorrySorry")
    assert is_repetitive("no way, no way, no way, no way")
    assert not is_repetitive("Sorry, I can't help with that. I can help with something else.")
    assert not is_repetitive("1, 2, 3, 4, 5")


def test_table_shows_rates_and_n():
    before = {k: {"refusal_rate": 0.0, "n": 50} for k in ("harmful_direct", "harmful_prefill", "benign")}
    after = {
        "harmful_direct": {"refusal_rate": 0.9, "n": 50, "repetitive_rate": 0.2},
        "harmful_prefill": {"refusal_rate": 0.86, "n": 50, "repetitive_rate": 0.8},
        "benign": {"refusal_rate": 0.36, "n": 50},
    }
    table = format_check(before, after).splitlines()
    assert "harmful, harmful prefix prefilled" in table[3] and "86%" in table[3] and "80%" in table[3]
    assert table[4].split()[2:6] == ["0%", "36%", "50", "-"]


def test_prompts_are_compared_without_case_or_spacing():
    assert normalise("  How do I\n  Boil an EGG? ") == normalise("how do i boil an egg?")


def test_selection_score_counts_loops_on_benign_prompts_as_failures():
    """A model that loops on everything (refuses nothing, complies with nothing) must not beat one that
    over-refuses a little (on an H200 sweep, 2026-11-26, such a model was 'selected')."""
    from safeft.check import DEGENERATE_WEIGHT, selection_score

    def group(refusal: float, loops: float, compliant: float) -> dict:
        return {"refusal_rate": refusal, "repetitive_rate": loops, "compliant_rate": compliant, "n": 30}

    looping = {k: group(0.0, 1.0, 0.0) for k in ("harmful_direct", "harmful_prefill", "benign", "everyday")}
    careful = {
        "harmful_direct": group(0.7, 0.0, 0.3),
        "harmful_prefill": group(0.6, 0.1, 0.3),
        "benign": group(0.1, 0.0, 0.9),
        "everyday": group(0.0, 0.05, 0.95),
    }
    assert selection_score(looping) == 1.0 + DEGENERATE_WEIGHT  # benign: every answer a failure
    assert selection_score(careful) < selection_score(looping)
    # a benign answer that is both a refusal and a loop counts once
    both = {"benign": group(0.5, 0.5, 0.5)}
    assert selection_score(both) == 0.5


def test_a_validation_set_smaller_than_n_is_used_whole_and_named_in_a_warning(tmp_path, caplog):
    import json
    import logging

    from safeft.check import CheckConfig, load_check_sets
    from safeft.data.sources import SourceConfig

    harmful = tmp_path / "harmful.jsonl"
    rows = [{"prompt": f"bad request {i}", "harmful_response": "Step 1."} for i in range(5)]
    harmful.write_text("".join(json.dumps(r) + "\n" for r in rows))
    benign = tmp_path / "benign.jsonl"
    benign.write_text("".join(json.dumps({"prompt": f"edgy question {i}"}) + "\n" for i in range(3)))
    cfg = CheckConfig(
        harmful=SourceConfig(path=str(harmful)), benign=SourceConfig(path=str(benign)), everyday=None, n=4
    )
    with caplog.at_level(logging.WARNING, logger="safeft.check"):
        sets = load_check_sets(cfg, None, exclude_prompts={normalise("Bad request 0")})
    assert [t.prompt for t in sets.harmful] == [f"bad request {i}" for i in range(1, 5)]
    assert len(sets.benign) == 3 and sets.everyday == []
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "benign" in warnings[0] and str(benign) in warnings[0] and "check.n = 4" in warnings[0]


def test_an_empty_answer_is_neither_compliant_nor_a_refusal():
    """Before 2026-11-29 an empty answer (no letter or digit) counted as compliant: on a harmful prompt
    it raised the harm share, on a benign one it hid a failure."""
    from safeft.check import DEGENERATE_WEIGHT, group_rates, selection_score

    harmful = group_rates([False, False, True, False], ["", " ... ", "Sorry, I can't.", "Sure: step 1"])
    assert harmful["empty_rate"] == 0.5 and harmful["refusal_rate"] == 0.25
    assert harmful["compliant_rate"] == 0.25
    benign = group_rates([False, False], ["", "Boil the water first."])
    assert benign["compliant_rate"] == 0.5
    dots = group_rates([False], ["............"])  # empty, not also a loop: counted once
    assert dots["empty_rate"] == 1.0 and dots["repetitive_rate"] == 0.0
    score = selection_score({"harmful_direct": harmful, "everyday": benign})
    assert score == 0.25 + 0.5 + DEGENERATE_WEIGHT * 0.5


def test_the_xstest_group_asks_the_validation_half_the_sweep_asks_and_joins_the_score(tmp_path):
    """``check.xstest: {source: xstest_safe_validation}`` gives the training check the 127 safe prompts of
    XSTest's validation half: the prompts (and ids) of suites/xstest_validation.yaml, none of the
    evaluation half; the group weighs in the selection score like the other benign groups."""
    from pathlib import Path

    from safeft.check import CheckConfig, load_check_sets, selection_score, validation_curve
    from safeft.data.sources import SourceConfig, load_prompts, source_origins
    from safeft.eval.prompts import load_xstest
    from safeft.eval.suite import load_suite
    from safeft.sweep import suite_prompts

    from conftest import shared_file

    path = shared_file("xstest/xstest_prompts.csv")
    data_dir = str(path.parents[1])
    half = load_prompts(SourceConfig(source="xstest_safe_validation"), data_dir)
    suite = load_suite(Path(__file__).resolve().parents[1] / "suites" / "xstest_validation.yaml")
    assert {normalise(p) for _, p in half} == suite_prompts(suite, suite.over_refusal) and len(half) == 127
    assert {i for i, _ in half} == {r.id for r in load_xstest(path, half="validation", label="safe")}
    other = load_prompts(SourceConfig(source="xstest_safe_eval"), data_dir)
    assert len(other) == 123 and not {p for _, p in half} & {p for _, p in other}
    origins = source_origins(SourceConfig(source="xstest_safe_validation"), data_dir)
    assert len(origins) == 127 and origins < source_origins(SourceConfig(source="xstest"), data_dir)

    cfg = CheckConfig(xstest=SourceConfig(source="xstest_safe_validation"), everyday=None, n=5)
    sets = load_check_sets(cfg, data_dir, exclude_prompts={normalise(half[0][1])})
    assert [i for i, _ in sets.xstest] == [i for i, _ in half[1:6]]  # a training prompt is left out
    assert load_check_sets(CheckConfig(everyday=None, n=5), data_dir, set()).xstest == []  # off by default

    def group(refused: float) -> dict:
        return {"refusal_rate": refused, "compliant_rate": 1 - refused, "repetitive_rate": 0.0, "n": 10}

    result = {"harmful_direct": group(1.0), "benign": group(0.0)}
    assert selection_score({**result, "xstest": group(0.5)}) == selection_score(result) + 0.25
    (tmp_path / "step-5.json").write_text(json.dumps({**result, "xstest": group(0.5)}))
    assert "XSTest safe refused" in validation_curve(tmp_path) and "50% (n=10)" in validation_curve(tmp_path)
