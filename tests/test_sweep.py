"""``safeft sweep``: points train and evaluate in their own processes, resume, refuse changed settings,
and the front/selection use the validation numbers only."""

from __future__ import annotations

import json

import yaml

from safeft.cli import main
from safeft.sweep import harm_and_over, pareto_front

from derta_tiny import tiny_recipe


def _sweep_file(tmp_path, tiny_model_dir, points):
    recipe = tiny_recipe(tmp_path, tiny_model_dir, max_steps=2, save_steps=10)
    prompts = tmp_path / "eval_prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": f"e{i}", "prompt": f"Name a color number {i}."}) + "\n" for i in range(3))
    )
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "judge": "keyword",
                "generation": {"max_new_tokens": 3, "batch_size": 4},
                "safety": [{"set": "jsonl", "path": str(prompts), "attacks": ["direct"]}],
                "over_refusal": [{"set": "jsonl", "path": str(prompts), "name": "benign"}],
            }
        )
    )
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "recipe": str(recipe),
                "output_dir": str(tmp_path / "sweep_out"),
                "overrides": {"check": {"before": False, "n": 2, "max_new_tokens": 3}},
                "points": points,
                "eval": {"suite": str(suite)},
            }
        )
    )
    return sweep


def test_sweep_runs_resumes_and_refuses_changed_settings(tmp_path, tiny_model_dir, capsys):
    points = [
        {"name": "low", "reference": "paper-like", "set": {"learning_rate": 1e-4}},
        {"name": "high", "set": {"learning_rate": 1e-2}},
    ]
    sweep = _sweep_file(tmp_path, tiny_model_dir, points)
    assert main(["sweep", "--config", str(sweep), "--jobs", "2"]) == 0
    out = tmp_path / "sweep_out"
    summary = json.loads((out / "sweep.json").read_text())
    assert [p["name"] for p in summary["points"]] == ["low", "high"]
    assert summary["selected"] in ("low", "high") and summary["front"]
    scores = {p["name"]: p["validation"]["score"] for p in summary["points"]}
    assert summary["selected"] == min(scores, key=scores.get)  # chosen on validation only
    for p in summary["points"]:
        assert "direct" in p["evaluation"]["attacks"] and "benign/all" in p["evaluation"]["over_refusal"]
        assert (out / p["name"] / "merged" / "config.json").is_file()
    assert (out / "front.png").stat().st_size > 1000
    assert "selected" in (out / "sweep.md").read_text()
    commands = (out / "low" / "sweep.log").read_text().count("\n$ ")
    # a second call skips finished points: no new command in their logs
    assert main(["sweep", "--config", str(sweep)]) == 0
    assert (out / "low" / "sweep.log").read_text().count("\n$ ") == commands
    # the same point name with other settings is refused, nothing is overwritten
    points[0]["set"] = {"learning_rate": 5e-4}
    sweep = _sweep_file(tmp_path, tiny_model_dir, points)
    capsys.readouterr()
    assert main(["sweep", "--config", str(sweep)]) == 2
    assert "trained with other settings" in capsys.readouterr().err


def test_pareto_front_keeps_the_points_nothing_beats_on_both_axes():
    points = [(0.1, 0.5), (0.2, 0.2), (0.3, 0.3), (0.5, 0.1), (0.1, 0.6)]
    assert pareto_front(points) == [0, 1, 3]
    v = {"compliant_direct": 0.2, "compliant_prefill": 0.4, "over_refusal": 0.1}
    assert harm_and_over(v) == (0.1, 0.30000000000000004)


def test_baselines_are_reported_but_never_selected_or_on_the_front(tmp_path, monkeypatch):
    import safeft.sweep as sweep_mod
    from safeft.sweep import PointSpec, SweepConfig, run_sweep

    def fake_validation(folder):
        over, harm = {"vanilla": (0.0, 0.0), "a": (0.2, 0.1), "b": (0.5, 0.05)}[folder.name]
        return {"compliant_direct": harm, "compliant_prefill": harm, "non_refusal_direct": harm,
                "non_refusal_prefill": harm, "repetitive_direct": 0.0, "repetitive_prefill": 0.0,
                "over_refusal": over, "over_refusal_edgy": over, "over_refusal_everyday": over,
                "n": {"harmful_direct": 10}, "score": over + harm}  # fmt: skip

    def fake_point(config, point, root):
        return {"name": point.name, "settings": point.set, "reference": point.reference,
                "baseline": point.baseline, "validation": None, "evaluation": None}  # fmt: skip

    monkeypatch.setattr(sweep_mod, "point_validation", fake_validation)
    monkeypatch.setattr(sweep_mod, "run_point", fake_point)
    config = SweepConfig(
        recipe="unused.yaml",
        output_dir=str(tmp_path),
        points=[PointSpec("vanilla", baseline=True), PointSpec("a"), PointSpec("b")],
    )
    summary = run_sweep(config)
    assert summary["selected"] == "a"  # vanilla has the lowest score but is a baseline
    assert summary["front"] == ["a", "b"]
    assert "baseline" in (tmp_path / "sweep.md").read_text() and (tmp_path / "front.png").is_file()
