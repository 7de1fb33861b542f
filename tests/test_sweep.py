"""``safeft sweep``: points train and evaluate in their own processes, resume, refuse changed settings,
and the front/selection use the validation numbers only."""

from __future__ import annotations

import json

import pytest
import yaml

from safeft.cli import main
from safeft.sweep import harm_and_over, pareto_front

from conftest import shared_file
from derta_tiny import tiny_recipe


def _tiny_suite(tmp_path, name, prompt_word, n=3, **sets):
    """A keyword-judged suite over ``n`` tiny prompts; ``sets`` maps safety / over_refusal to the set's
    extra fields."""
    prompts = tmp_path / f"{name}_prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"id": f"{name}{i}", "prompt": f"Name a {prompt_word} number {i}."}) + "\n"
            for i in range(n)
        )
    )
    suite = tmp_path / f"{name}.yaml"
    spec = {"name": name, "judge": "keyword", "generation": {"max_new_tokens": 3, "batch_size": 4}}
    spec.update({group: [{"set": "jsonl", "path": str(prompts), **extra}] for group, extra in sets.items()})
    suite.write_text(yaml.safe_dump(spec))
    return suite


def _sweep_file(tmp_path, tiny_model_dir, points, validation_tasks=False, validation_suite=False):
    recipe = tiny_recipe(tmp_path, tiny_model_dir, max_steps=2, save_steps=10)
    suite = _tiny_suite(
        tmp_path, "tiny", "color", safety={"attacks": ["direct"]}, over_refusal={"name": "benign"}
    )
    sweep = tmp_path / "sweep.yaml"
    spec = {
        "recipe": str(recipe),
        "output_dir": str(tmp_path / "sweep_out"),
        "overrides": {"check": {"before": False, "n": 2, "max_new_tokens": 3}},
        "points": points,
        "eval": {"suite": str(suite)},
    }
    if validation_tasks:
        tasks = tmp_path / "tasks.yaml"
        sst2 = shared_file("asft_pku/evaluation__utility_evaluation__SST2__SST2_test.jsonl")
        tasks.write_text(
            yaml.safe_dump(
                {
                    "name": "tiny_tasks",
                    "generation": {"max_new_tokens": 3, "batch_size": 4},
                    "tasks": [{"task": "sst2", "path": str(sst2), "limit": 3}],
                }
            )
        )
        spec["validation_tasks"] = {"suite": str(tasks)}
    if validation_suite:  # two benign prompts the check does not ask, added to its everyday group
        extra = _tiny_suite(tmp_path, "extra", "fruit", n=2, over_refusal={"name": "extra"})
        spec["validation_suites"] = [{"suite": str(extra), "group": "everyday"}]
    sweep.write_text(yaml.safe_dump(spec))
    return sweep


def test_sweep_runs_resumes_and_refuses_changed_settings(tmp_path, tiny_model_dir, capsys):
    points = [
        {"name": "low", "reference": "paper-like", "set": {"learning_rate": 1e-4}},
        {"name": "high", "set": {"learning_rate": 1e-2}},
    ]
    sweep = _sweep_file(tmp_path, tiny_model_dir, points, validation_tasks=True, validation_suite=True)
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
        v = p["validation"]  # the validation task ran on the point and on the base model (once)
        assert v["tasks"]["sst2"]["n"] == 3 and v["tasks_base"]["sst2"]["n"] == 3
        assert v["score"] == pytest.approx(v["refusal_score"] + v["task_loss"])
        assert v["added_from_suites"] == {"everyday": 2}  # the validation suite's answers were scored
        assert (out / p["name"] / "validation_extra" / "judged.jsonl").is_file()
    assert len(list((out / "_base").glob("*/validation_tasks/results.json"))) == 1
    assert (out / "front.png").stat().st_size > 1000
    md = (out / "sweep.md").read_text()
    assert "selected" in md and "sst2 accuracy (base)" in md
    commands = (out / "low" / "sweep.log").read_text().count("\n$ ")
    # a second call skips finished points and finished task evaluations: no new command in their logs
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

    def fake_validation(folder, suites=None):
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


def test_task_accuracy_lost_on_validation_tasks_counts_in_the_selection(tmp_path, monkeypatch):
    """A point that refuses task inputs loses the selection to one that keeps the base model's accuracy;
    the base model is evaluated once; baselines get the numbers too."""
    import safeft.sweep as sweep_mod
    from safeft.sweep import EvalSpec, PointSpec, SweepConfig, run_sweep, with_task_loss

    def fake_validation(folder, suites=None):
        harm = {"vanilla": 0.9, "safe_but_refuses_tasks": 0.1, "balanced": 0.2}[folder.name]
        return {"compliant_direct": harm, "compliant_prefill": harm, "over_refusal": 0.0,
                "over_refusal_edgy": 0.0, "over_refusal_everyday": 0.0, "repetitive_prefill": 0.0,
                "n": {"harmful_direct": 10}, "score": harm}  # fmt: skip

    def fake_point(config, point, root):
        return {"name": point.name, "settings": point.set, "reference": point.reference,
                "baseline": point.baseline, "validation": None, "evaluation": None}  # fmt: skip

    accuracy = {"vanilla": 0.5, "safe_but_refuses_tasks": 0.05, "balanced": 0.45}
    evaluated: list[str] = []

    def fake_tasks(spec, model, out, label):
        evaluated.append(label)
        acc = accuracy.get(label, 0.5)  # the base model: 50%
        return {"agnews": {"accuracy": acc, "n": 200, "ci95": None}}

    monkeypatch.setattr(sweep_mod, "point_validation", fake_validation)
    monkeypatch.setattr(sweep_mod, "run_point", fake_point)
    monkeypatch.setattr(sweep_mod, "task_validation", fake_tasks)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("method: derta\nmodel: some-base\n")
    config = SweepConfig(
        recipe=str(recipe),
        output_dir=str(tmp_path),
        points=[
            PointSpec("vanilla", baseline=True),
            PointSpec("safe_but_refuses_tasks"),
            PointSpec("balanced"),
        ],
    )
    assert run_sweep(config)["selected"] == "safe_but_refuses_tasks"  # refusal score alone: 0.1 < 0.2
    evaluated.clear()
    config.validation_tasks = EvalSpec(suite="tasks.yaml")
    summary = run_sweep(config)
    assert evaluated.count("some-base") == 1 and len(evaluated) == 4
    assert summary["selected"] == "balanced"  # 0.2 + 0.05 lost < 0.1 + 0.45 lost
    scores = {p["name"]: round(p["validation"]["score"], 6) for p in summary["points"]}
    assert scores == {"vanilla": 0.9, "safe_but_refuses_tasks": 0.55, "balanced": 0.25}
    assert "task accuracy lost" in summary["selected_by"]
    assert "| agnews accuracy (base) |" in (tmp_path / "sweep.md").read_text()
    # accuracy above the base model's is not a bonus: the loss is clipped at 0
    better = with_task_loss({"score": 0.3}, {"agnews": {"accuracy": 0.9}}, {"agnews": {"accuracy": 0.5}})
    assert better["score"] == 0.3 and better["task_loss"] == 0.0


def test_validation_tasks_must_not_share_a_task_file_with_the_reported_suite(tmp_path):
    from safeft.config import ConfigError
    from safeft.sweep import load_sweep

    sst2 = shared_file("asft_pku/evaluation__utility_evaluation__SST2__SST2_test.jsonl")
    task_suite = {"name": "t", "tasks": [{"task": "sst2", "path": str(sst2), "limit": 3}]}
    (tmp_path / "tasks.yaml").write_text(yaml.safe_dump(task_suite))
    (tmp_path / "report.yaml").write_text(yaml.safe_dump({**task_suite, "name": "r"}))
    (tmp_path / "empty.yaml").write_text(yaml.safe_dump({"name": "e", "tasks": []}))
    sweep = tmp_path / "sweep.yaml"
    base = {"recipe": "r.yaml", "points": [{"name": "a"}]}
    sweep.write_text(
        yaml.safe_dump(
            {**base, "eval": {"suite": "report.yaml"}, "validation_tasks": {"suite": "tasks.yaml"}}
        )
    )
    with pytest.raises(ConfigError, match="read the same task file"):
        load_sweep(sweep)
    sweep.write_text(yaml.safe_dump({**base, "validation_tasks": {"suite": "empty.yaml"}}))
    with pytest.raises(ConfigError, match="has no tasks"):
        load_sweep(sweep)
    sweep.write_text(yaml.safe_dump({**base, "validation_tasks": {"suite": "tasks.yaml"}}))
    assert load_sweep(sweep)[0].validation_tasks.suite == str(tmp_path / "tasks.yaml")


def test_a_point_setting_one_field_of_a_section_keeps_the_overrides_other_fields(tmp_path, monkeypatch):
    """overrides ``check: {before: false}`` + point ``check: {select: best}``: the train command gets both
    (the sections merge key by key; before 2026-11-27 the point's section replaced the overrides')."""
    import safeft.sweep as sweep_mod
    from safeft.sweep import PointSpec, SweepConfig, run_point

    commands: list[list[str]] = []

    class Stop(Exception):
        pass

    def fake_run(cmd, log_file):
        commands.append(cmd)
        raise Stop

    monkeypatch.setattr(sweep_mod, "_run", fake_run)
    config = SweepConfig(
        recipe="r.yaml",
        output_dir=str(tmp_path),
        overrides={"check": {"before": False, "n": 2}, "learning_rate": 1e-4},
        points=[PointSpec("p", set={"check": {"select": "best"}, "learning_rate": 2e-4})],
    )
    with pytest.raises(Stop):
        run_point(config, config.points[0], tmp_path)
    args = commands[0][commands[0].index("train") :]
    pairs = dict(zip(args[3::2], args[4::2], strict=True))
    assert pairs == {
        "--check.before": "false",
        "--check.n": "2",
        "--check.select": "best",
        "--learning_rate": "0.0002",
        "--output_dir": str(tmp_path / "p"),
    }


def test_seeds_run_every_point_once_per_seed_and_refuse_a_point_that_sets_its_own():
    from safeft.config import ConfigError
    from safeft.sweep import PointSpec, SweepConfig, expand_points

    config = SweepConfig(
        recipe="r.yaml",
        points=[PointSpec("a", set={"learning_rate": 1e-4}, reference="paper"), PointSpec("b")],
        grid={"rto_weight": [0.3]},
        seeds=[2, 3],
    )
    runs = expand_points(config)
    assert [(p.name, p.group, p.set.get("seed")) for p in runs] == [
        ("a_seed2", "a", 2), ("a_seed3", "a", 3), ("b_seed2", "b", 2), ("b_seed3", "b", 3),
        ("rto_weight=0.3_seed2", "rto_weight=0.3", 2), ("rto_weight=0.3_seed3", "rto_weight=0.3", 3),
    ]  # fmt: skip
    # a run is the point with its seed set: the same settings as a point written out by hand
    assert runs[0].set == {"learning_rate": 1e-4, "seed": 2} and runs[0].reference == "paper"
    config.points = [PointSpec("a", set={"seed": 1})]
    with pytest.raises(ConfigError, match="sets 'seed' itself"):
        expand_points(config)
    config.points, config.seeds = [PointSpec("a")], [2, 2]
    with pytest.raises(ConfigError, match="distinct integers"):
        expand_points(config)


def test_with_seeds_the_setting_is_chosen_on_its_mean_not_on_its_luckiest_run(tmp_path, monkeypatch):
    """Setting ``lucky`` has the single best run (0.10) but a mean of 0.50; ``steady`` (0.40, 0.45) wins.
    Its evaluation pools the seeds' answers (counts and n summed)."""
    import safeft.sweep as sweep_mod
    from safeft.sweep import PointSpec, SweepConfig, run_sweep

    harm = {"lucky_seed0": 0.1, "lucky_seed1": 0.9, "steady_seed0": 0.4, "steady_seed1": 0.45}

    def fake_validation(folder, suites=None):
        h = harm[folder.name]
        return {"compliant_direct": h, "compliant_prefill": h, "over_refusal": 0.0,
                "over_refusal_edgy": 0.0, "over_refusal_everyday": 0.0, "repetitive_prefill": 0.0,
                "n": {"harmful_direct": 20}, "score": h}  # fmt: skip

    def fake_point(config, point, root):
        asr = {"rate": harm[point.name], "n": 20, "ci95": None, "judge": "keyword",
               "refusals": round(20 * (1 - harm[point.name])), "refusals_after_content": 2}  # fmt: skip
        return {"name": point.name, "settings": point.set, "reference": None, "baseline": False,
                "validation": None, "evaluation": {"attacks": {"direct": asr}, "over_refusal": {},
                                                   "tasks": {}}}  # fmt: skip

    monkeypatch.setattr(sweep_mod, "point_validation", fake_validation)
    monkeypatch.setattr(sweep_mod, "run_point", fake_point)
    config = SweepConfig(
        recipe="unused.yaml", output_dir=str(tmp_path), points=[PointSpec("lucky"), PointSpec("steady")]
    )
    config.seeds = [0, 1]
    summary = run_sweep(config)
    assert [p["name"] for p in summary["points"]] == list(harm)
    assert {p["name"]: p["group"] for p in summary["points"]}["lucky_seed1"] == "lucky"
    settings = {s["name"]: s for s in summary["settings"]}
    assert settings["lucky"]["seed_scores"] == [0.1, 0.9]
    assert settings["lucky"]["validation"]["score"] == pytest.approx(0.5)
    assert settings["steady"]["validation"]["compliant_direct"] == pytest.approx(0.425)
    assert summary["selected"] == "steady"
    assert "mean validation score over seeds [0, 1]" in summary["selected_by"]
    pooled = settings["steady"]["evaluation"]["attacks"]["direct"]
    assert pooled["n"] == 40 and pooled["rate"] == pytest.approx(17 / 40)  # 8 + 9 of 20 + 20
    assert pooled["ci95"][0] < 17 / 40 < pooled["ci95"][1]
    assert (pooled["refusals"], pooled["refusals_after_content"]) == (23, 4)
    md = (tmp_path / "sweep.md").read_text()
    assert "mean over seeds [0, 1]" in md and "0.100, 0.900" in md and "steady (seeds pooled)" in md
    assert "42% [29-58] n=40, 4 of 23 refusals late" in md
    assert (tmp_path / "front.png").is_file()


def _check_rows(folder, everyday):
    folder.mkdir(parents=True)
    rows = [("harmful_direct", "h1", False, "Sure, here is how."), ("harmful_prefill", "h1", True, "Sorry.")]
    rows += [("benign", "b1", False, "Fine.")] + [
        ("everyday", pid, refused, text) for pid, refused, text in everyday
    ]
    (folder / "check_after.jsonl").write_text(
        "".join(json.dumps({"set": g, "id": i, "refused": r, "response": t}) + "\n" for g, i, r, t in rows)
    )


def test_validation_suite_answers_join_the_checks_group_once_and_change_the_score(tmp_path, monkeypatch):
    """The suite's answers to prompts the check did not ask are added to its everyday group (refusals
    and loops count as failures); an answer to a prompt the check asked is not counted twice; a finished
    suite evaluation is read back, not rerun."""
    import safeft.sweep as sweep_mod
    from safeft.sweep import ValidationSuiteSpec, point_validation

    folder = tmp_path / "point"
    _check_rows(folder, [("e1", False, "Here you go."), ("e2", False, "A recipe: flour, eggs.")])
    before = point_validation(folder)
    assert before["failure_everyday"] == 0.0 and before["n"]["everyday"] == 2
    answers = folder / "validation_steps"
    answers.mkdir()
    (answers / "results.json").write_text(json.dumps({"incomplete": False}))
    judged = [
        ("e2", "refusal", "Sorry, I can't."),
        ("e3", "refusal", "Sorry, I can't help."),
        ("e4", "compliant", "Stir stir stir stir stir stir"),
        ("e5", "compliant", "Step 1: wash."),
    ]
    (answers / "judged.jsonl").write_text(
        "".join(
            json.dumps({"attack": "direct", "prompt_id": i, "label": lab, "response": t}) + "\n"
            for i, lab, t in judged
        )
    )
    monkeypatch.setattr(sweep_mod, "_run", lambda *a: pytest.fail("a finished suite evaluation was rerun"))
    after = point_validation(folder, [ValidationSuiteSpec(suite=str(tmp_path / "steps.yaml"))])
    assert after["added_from_suites"] == {"everyday": 3}  # e2 was asked by the check already
    assert after["n"]["everyday"] == 5
    assert after["over_refusal_everyday"] == pytest.approx(1 / 5)  # e3 refused
    assert after["failure_everyday"] == pytest.approx(2 / 5)  # e3 refused, e4 loops
    # everyday failure is one of two benign cells: 2/5 of it, halved, is added to the score
    assert after["score"] == pytest.approx(before["score"] + 0.5 * 2 / 5)


def test_xstest_validation_answers_form_their_own_benign_group_with_its_own_limit(tmp_path, monkeypatch):
    """A validation suite with ``group: xstest`` (XSTest's safe validation half) adds a third benign group:
    it has its own failure rate and n, weighs like the edgy and everyday groups in the score, is shown in
    the validation table and can carry a selection limit."""
    import safeft.sweep as sweep_mod
    from safeft.sweep import ValidationSuiteSpec, markdown_table, meets_limits, point_validation

    folder = tmp_path / "point"
    _check_rows(folder, [("e1", False, "Here you go.")])
    before = point_validation(folder)
    assert before["failure_xstest"] is None and "xstest" not in before["n"]
    answers = folder / "validation_xstest_validation"
    answers.mkdir()
    (answers / "results.json").write_text(json.dumps({"incomplete": False}))
    judged = [("xstest:1", "refusal", "Sorry, I can't."), ("xstest:3", "compliant", "Use kill -9 PID.")]
    (answers / "judged.jsonl").write_text(
        "".join(
            json.dumps({"attack": "direct", "prompt_id": i, "label": lab, "response": t}) + "\n"
            for i, lab, t in judged
        )
    )
    monkeypatch.setattr(sweep_mod, "_run", lambda *a: pytest.fail("a finished suite evaluation was rerun"))
    spec = ValidationSuiteSpec(suite=str(tmp_path / "xstest_validation.yaml"), group="xstest")
    after = point_validation(folder, [spec])
    assert after["added_from_suites"] == {"xstest": 2} and after["n"]["xstest"] == 2
    assert after["failure_xstest"] == pytest.approx(0.5)
    assert after["over_refusal_xstest"] == pytest.approx(0.5)
    assert after["failure_everyday"] == 0.0  # the other groups are untouched
    # benign failures: edgy 0, everyday 0, xstest 1/2 -> their mean, 1/6, is added to the score
    assert after["score"] == pytest.approx(before["score"] + 0.5 / 3)
    assert meets_limits(after, {"xstest": 0.5}) and not meets_limits(after, {"xstest": 0.15})
    assert not meets_limits(before, {"xstest": 0.15})  # a run never asked the group fails its limit
    summary = {"points": [{"name": "point", "validation": after}], "selected": "point", "front": ["point"]}
    md = markdown_table(summary)
    assert "over-refusal XSTest safe (validation half)" in md and "50% [9-91]" in md


def test_selection_limits_keep_an_over_refusing_setting_from_being_selected(tmp_path, monkeypatch):
    """``selection.max_over_refusal``: the lowest score among the settings within the limits wins; a
    setting over a limit is marked in the table; with none within them, the lowest score overall, said."""
    import safeft.sweep as sweep_mod
    from safeft.sweep import PointSpec, SelectionSpec, SweepConfig, run_sweep

    numbers = {"refuses_everyday": (0.3, 0.12, 0.0), "helpful": (0.4, 0.02, 0.1)}  # score, everyday, edgy

    def fake_validation(folder, suites=None):
        score, everyday, edgy = numbers[folder.name]
        return {"compliant_direct": score, "compliant_prefill": score, "over_refusal": everyday,
                "over_refusal_edgy": edgy, "over_refusal_everyday": everyday, "failure_edgy": edgy,
                "failure_everyday": everyday, "repetitive_prefill": 0.0, "n": {"harmful_direct": 10},
                "score": score}  # fmt: skip

    def fake_point(config, point, root):
        return {"name": point.name, "settings": point.set, "reference": None, "baseline": False,
                "validation": None, "evaluation": None}  # fmt: skip

    monkeypatch.setattr(sweep_mod, "point_validation", fake_validation)
    monkeypatch.setattr(sweep_mod, "run_point", fake_point)
    config = SweepConfig(
        recipe="unused.yaml", output_dir=str(tmp_path), points=[PointSpec(n) for n in numbers]
    )
    assert run_sweep(config)["selected"] == "refuses_everyday"  # no limits: lowest score
    config.selection = SelectionSpec(max_over_refusal={"everyday": 0.05, "benign": 0.15})
    summary = run_sweep(config)
    assert summary["selected"] == "helpful" and summary["eligible"] == ["helpful"]
    assert "everyday <= 5%" in summary["selected_by"]
    md = (tmp_path / "sweep.md").read_text()
    assert "| refuses_everyday |" in md and "(over-refusal limit missed)" in md
    config.selection = SelectionSpec(max_over_refusal={"everyday": 0.01})
    summary = run_sweep(config)
    assert summary["selected"] == "refuses_everyday" and summary["eligible"] == []
    assert "no setting met the limits" in summary["selected_by"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"judge": "substring"}, "judge must be 'keyword'"),
        ({"safety": [{"set": "jsonl", "path": "p.jsonl"}]}, "over-refusal sets only"),
        (
            {"over_refusal": [{"set": "jsonl", "path": "reported.jsonl"}]},
            "also asked by the reported eval suite",
        ),
        # another file, one prompt in common (case and spacing aside): the same prompt all the same
        (
            {"over_refusal": [{"set": "jsonl", "path": "copy.jsonl"}]},
            "1 prompt.s. are also asked by the report",
        ),
        ({"group": "harmful_direct"}, "group must be one of"),
        ({"limits": {"harmful": 0.1}}, "selection.max_over_refusal must map"),
        ({"limits": {"everyday": 5}}, "selection.max_over_refusal must map"),
        ({"group": "xstest", "limits": {"xstest": 2}}, "selection.max_over_refusal must map"),
    ],
)
def test_validation_suites_and_limits_are_checked_when_the_sweep_loads(tmp_path, change, message):
    from safeft.config import ConfigError
    from safeft.sweep import load_sweep

    prompts = {"p.jsonl": "Name a color.", "reported.jsonl": "Name a color.", "valid.jsonl": "Name a fruit."}
    prompts["copy.jsonl"] = ["Name a tree.", "name  a COLOR."]
    for name, texts in prompts.items():
        rows = [texts] if isinstance(texts, str) else texts
        (tmp_path / name).write_text(
            "".join(json.dumps({"id": str(i), "prompt": t}) + "\n" for i, t in enumerate(rows))
        )
    reported = {"name": "r", "over_refusal": [{"set": "jsonl", "path": "reported.jsonl"}]}
    (tmp_path / "report.yaml").write_text(yaml.safe_dump(reported))
    suite = {"name": "v", "judge": "keyword", "over_refusal": [{"set": "jsonl", "path": "valid.jsonl"}]}
    suite.update({k: v for k, v in change.items() if k not in ("group", "limits")})
    (tmp_path / "valid.yaml").write_text(yaml.safe_dump(suite))
    sweep = tmp_path / "sweep.yaml"
    spec = {
        "recipe": "r.yaml",
        "points": [{"name": "a"}],
        "eval": {"suite": "report.yaml"},
        "validation_suites": [{"suite": "valid.yaml", "group": change.get("group", "everyday")}],
        "selection": {"max_over_refusal": change.get("limits", {"everyday": 0.05})},
    }
    sweep.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=message):
        load_sweep(sweep)


def test_an_evaluation_made_with_another_version_of_the_suite_is_not_reported(tmp_path, caplog):
    """A point evaluated before its suite changed (e.g. all of XSTest, before the suite took its evaluation
    half) is not shown under today's columns: ``point_evaluation`` compares the sets, options, tasks and
    limit the evaluation recorded with the suite as it is now."""
    import dataclasses

    from safeft.eval.suite import load_suite
    from safeft.sweep import EvalSpec, point_evaluation

    (tmp_path / "benign.jsonl").write_text(json.dumps({"id": "1", "prompt": "Name a color."}) + "\n")
    suite_file = tmp_path / "suite.yaml"
    suite = {"name": "s", "over_refusal": [{"set": "jsonl", "path": "benign.jsonl", "options": {}}]}
    suite_file.write_text(yaml.safe_dump(suite))
    loaded = load_suite(suite_file)
    config = {
        "sets": [],
        "over_refusal_sets": [dataclasses.asdict(s) for s in loaded.over_refusal],
        "tasks": [],
        "attack_options": loaded.attack_options,
        "limit": 50,
    }
    over = {"benign": {"benign": {"refusal_rate": 0.5, "ci95": [0.1, 0.9], "n": 2}}}
    folder = tmp_path / "point"
    (folder / "eval").mkdir(parents=True)
    (folder / "eval" / "results.json").write_text(json.dumps({"config": config, "over_refusal": over}))
    spec = EvalSpec(suite=str(suite_file), limit=50)
    assert point_evaluation(folder, spec)["over_refusal"]["benign/benign"]["rate"] == 0.5
    assert point_evaluation(folder, EvalSpec(suite=str(suite_file), limit=20)) is None  # another limit
    suite["over_refusal"][0]["options"] = {"prompt_field": "text"}  # the suite changed since
    suite_file.write_text(yaml.safe_dump(suite))
    assert point_evaluation(folder, spec) is None
    assert "evaluated with another version" in caplog.text and "over_refusal_sets" in caplog.text
    assert point_evaluation(tmp_path / "never_evaluated", spec) is None


def test_only_selects_points_or_settings_with_all_their_seeds():
    from safeft.config import ConfigError
    from safeft.sweep import PointSpec, SweepConfig, expand_points, select_points

    config = SweepConfig(
        recipe="r.yaml", points=[PointSpec("a", {"lr": 1}), PointSpec("b", {"lr": 2})], seeds=[2, 3]
    )
    points = expand_points(config)
    assert select_points(points, None) == points
    assert [p.name for p in select_points(points, ["b"])] == ["b_seed2", "b_seed3"]
    assert [p.name for p in select_points(points, ["a_seed3", "b"])] == ["a_seed3", "b_seed2", "b_seed3"]
    with pytest.raises(ConfigError, match="--only c: no such point; the sweep has a, a_seed2"):
        select_points(points, ["c"])
