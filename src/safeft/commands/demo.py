"""``safeft demo [--out DIR] [--quick] [--data-dir ../shared/data] [--section.field value ...]``."""

from __future__ import annotations

import argparse
import shlex
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the whole story on the embedded default: DeRTa, then AsFT vs plain LoRA, evaluated",
        description=(
            "Load the embedded default model, build data from the installed packages (train/eval split by "
            "prompt), train DeRTa and the vanilla safety-SFT baseline, compute the alignment direction, "
            "fine-tune on a task with ~10% harmful rows (plain LoRA vs AsFT, plus Safe LoRA), "
            "evaluate every model and write results.json, report.md and report.html. "
            "Finished stages are skipped on rerun. "
            "Budgets: --data.n_train_triples 48, --eval.max_new_tokens 40, ... (see safeft.demo.config)."
        ),
    )
    p.add_argument("--out", help="output folder (default runs/demo, or runs/demo_quick with --quick)")
    p.add_argument("--quick", action="store_true", help="fewer rows, prompts and tokens (<= 5 minutes)")
    p.add_argument("--data-dir", help="shared data folder: larger public sets and SST-2 as the task")
    p.add_argument("--model", help="model to start from (default: the embedded smollm2-135m-instruct)")
    p.add_argument("--config", help="YAML file of budget overrides")
    p.set_defaults(handler=run, accepts_overrides=True)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from safeft.demo.config import load_demo_config
    from safeft.demo.pipeline import run_demo

    extra = list(overrides)
    for name in ("out", "data_dir", "model"):
        value = getattr(args, name)
        if value is not None:
            extra += [f"--{name}", value]
    config = load_demo_config(quick=args.quick, path=args.config, overrides=extra)
    argv = sys.argv[1:]
    command = "safeft " + " ".join(shlex.quote(a) for a in argv) if "demo" in argv else "safeft demo"
    run_demo(config, command)
    return 0
