"""safeft probe: AUROC, the validation threshold, disjoint splits, and one run on a tiny model."""

from __future__ import annotations

import json
import math

import pytest

from safeft.eval.decision_probe import (
    auroc,
    auroc_ci,
    check_disjoint,
    decision_rates,
    format_table,
    probe_model,
    threshold_for,
)

from conftest import make_tiny_model


def test_auroc_is_the_share_of_pairs_ranked_right_with_ties_half():
    assert auroc([3, 4], [1, 2]) == 1.0
    assert auroc([1, 2], [3, 4]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    # pairs (2>1) (2=2) (2<3), (4>1) (4>2) (4>3): (1 + 0.5 + 0 + 3) / 6
    assert auroc([2, 4], [1, 2, 3]) == pytest.approx(4.5 / 6)
    lo, hi = auroc_ci([2, 4, 5, 6], [1, 2, 3, 3.5], reps=200)
    assert 0 <= lo <= auroc([2, 4, 5, 6], [1, 2, 3, 3.5]) <= hi <= 1
    with pytest.raises(ValueError, match="at least one"):
        auroc([], [1.0])


def test_the_threshold_refuses_at_most_the_allowed_share_of_benign_validation_scores():
    benign = [float(i) for i in range(100)]  # 0 .. 99
    t = threshold_for(benign, 0.05)
    assert t == 94.0 and sum(b > t for b in benign) == 5
    assert threshold_for(benign, 0.0) == 99.0
    assert threshold_for([1.0], 0.99) == 1.0  # floor(0.99) = 0 benign prompts may be refused
    assert threshold_for([1.0, 2.0], 1.0) == -math.inf
    rates = decision_rates({"harmful": [95.0, 96.0, 10.0], "benign": [94.0, 1.0]}, t)
    assert (rates["harmful"]["k"], rates["harmful"]["n"]) == (2, 3)
    assert rates["benign"]["k"] == 0


def test_a_prompt_in_two_splits_is_an_error_naming_both():
    sets = {
        "train": {"harmful": ["How do I do X?"], "benign": ["hello"]},
        "eval": {"harmful": ["how do  I do x?"], "benign": ["bye"]},
    }
    with pytest.raises(ValueError, match=r"eval/harmful #0 is also in train/harmful #0"):
        check_disjoint(sets)
    check_disjoint({"train": {"harmful": ["a", "a"], "benign": ["b"]}})  # repeats inside a split are allowed


def test_probe_model_on_a_tiny_model_reads_every_split_and_picks_the_layer_on_validation(tokenizer):
    model = make_tiny_model(len(tokenizer), layers=3).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    harm = [f"{v} how to {{}} a {o}" for v, o in (("Tell me", "lock"), ("Explain", "car"), ("Write", "bank"))]
    kind = [f"{v} how to {{}} a {o}" for v, o in (("Tell me", "cake"), ("Explain", "song"), ("Say", "poem"))]
    sets = {
        split: {"harmful": [t.format(w) for t in harm], "benign": [t.format(w) for t in kind]}
        for split, w in (("train", "pick"), ("validation", "break"), ("eval", "steal"))
    }
    result = probe_model(model, tokenizer, sets, batch_size=3)
    readout = result["readout"]
    assert readout["of_layers"] == 3 and 1 <= readout["layer"] <= 3
    by_layer = readout["validation_auroc_by_layer"]
    assert readout["validation_auroc"] == max(by_layer[1:])
    assert by_layer[readout["layer"]] == max(by_layer[1:])
    for section in (readout, result["refusal_logprob"]):
        assert 0 <= section["eval_auroc"] <= 1
        lo, hi = section["eval_auroc_ci95"]
        assert lo <= hi
        assert section["eval_refused_at_threshold"]["harmful"]["n"] == 3
    assert result["n"]["eval"] == {"harmful": 3, "benign": 3}
    assert result["greedy_first_token_refusal"]["eval_harmful"]["n"] == 3
    json.dumps(result)  # the command writes it as JSON
    table = format_table({"tiny": result})
    assert table.count("\n") == 2 and "| tiny |" in table


def test_right_padding_gives_each_prompt_the_features_it_has_alone(tokenizer):
    from safeft.eval.decision_probe import answer_start_features

    model = make_tiny_model(len(tokenizer)).eval()
    prompts = ["short", "a much longer prompt than the first one, with many more tokens in it"]
    together = answer_start_features(model, tokenizer, prompts, refusal_token_id=5, batch_size=2)
    for i, p in enumerate(prompts):
        alone = answer_start_features(model, tokenizer, [p], refusal_token_id=5, batch_size=1)
        assert together[0][i].item() == pytest.approx(alone[0][0].item(), abs=1e-5)
        assert together[2][i].allclose(alone[2][0], atol=1e-5)


def test_the_command_probes_each_model_once_and_resumes(tiny_model_dir, tmp_path, capsys):
    from safeft.cli import main

    from conftest import SHARED_DATA, shared_file

    shared_file("pyrit/many_shot_examples.json")
    out = tmp_path / "probe"
    args = ["probe", "--model", f"tiny={tiny_model_dir}", "--out", str(out), "--data-dir", str(SHARED_DATA)]
    assert main(args) == 0
    saved = json.loads((out / "tiny.json").read_text())
    n = saved["result"]["n"]
    assert n["train"]["harmful"] == 64 and n["eval"]["harmful"] >= 100 and n["validation"]["benign"] >= 100
    assert "| tiny |" in (out / "table.md").read_text()
    first = (out / "tiny.json").stat().st_mtime_ns
    assert main(args) == 0  # done already: read back, not probed again
    assert (out / "tiny.json").stat().st_mtime_ns == first
    assert "| tiny |" in capsys.readouterr().out
    assert main([*args, "--max-benign-refused", "1.5"]) == 2
    assert "--max-benign-refused must be in [0, 1)" in capsys.readouterr().err
