"""bench/demo_task_tuning.py: the validation statements are disjoint from the demo's task rows."""

import importlib.util
import json
from pathlib import Path

import pytest


def _module():
    path = Path(__file__).resolve().parents[1] / "bench" / "demo_task_tuning.py"
    spec = importlib.util.spec_from_file_location("demo_task_tuning", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_demo(folder: Path, train: list[dict], eval_rows: list[dict]) -> None:
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "task_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (folder / "data" / "task_eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in eval_rows))


def test_validation_rows_skip_the_demo_split_and_refuse_an_overlap(tmp_path):
    from safeft.demo.task import subject_task

    tuning = _module()
    built = subject_task(20, 2, 10, [], seed=0)
    _write_demo(tmp_path / "demo", built.train, built.eval_rows)
    n_train_facts = built.n_facts_or_rows["facts_train"]
    rows = tuning.validation_rows(tmp_path / "demo", 0, 10, n_train_facts, 12)
    labels = {"science", "health", "history", "geography", "logic"}
    assert len(rows) == 12 and {r["label"] for r in rows} <= labels
    seen = {r["text"] for r in built.eval_rows} | {
        r["prompt"].rsplit("Statement:", 1)[-1].strip() for r in built.train
    }
    assert not seen & {r["text"] for r in rows}

    # a demo eval file that holds one of the validation statements is refused
    clash = [*built.eval_rows, {"id": "x", "text": rows[0]["text"], "label": rows[0]["label"]}]
    _write_demo(tmp_path / "bad", built.train, clash)
    with pytest.raises(SystemExit, match="overlap"):
        tuning.validation_rows(tmp_path / "bad", 0, 10, n_train_facts, 12)
