"""``safeft demo``: the whole story on one model, as resumable stages (see :mod:`safeft.demo`)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import yaml

from safeft.config import ConfigError
from safeft.demo import train
from safeft.demo.config import GEN_TOKENS_PER_S, TRAIN_TOKENS_PER_S, DemoConfig, as_dict, config_diff
from safeft.demo.data import build_data
from safeft.demo.evaluate import ModelSpec, evaluate_model
from safeft.demo.resources import environment, fmt_bytes, peak_rss_bytes
from safeft.demo.stages import Stage, StageRunner, fmt_seconds
from safeft.demo.table import (
    comparisons,
    header,
    metrics_of,
    n_per_cell,
    summary_html,
    summary_markdown,
    table_rows,
)
from safeft.models import EMBEDDED_MODELS

log = logging.getLogger(__name__)

CONFIG_FILE = "demo_config.yaml"


def model_specs(out: Path) -> list[ModelSpec]:
    """The seven rows of the table, in order."""
    return [
        ModelSpec("original", "original", out / "original" / "model"),
        ModelSpec("vanilla_sft", "vanilla safety SFT", out / "vanilla_sft" / "merged"),
        ModelSpec("derta", "DeRTa", out / "derta" / "merged"),
        ModelSpec("task_lora", "DeRTa -> LoRA on contaminated task", out / "task_lora" / "merged"),
        ModelSpec("safelora", "DeRTa -> Safe LoRA", out / "derta" / "merged", out / "safelora" / "adapter"),
        ModelSpec("task_asft", "DeRTa -> AsFT on contaminated task", out / "task_asft" / "merged"),
        ModelSpec(
            "task_l2",
            "DeRTa -> L2 penalty, no direction (AsFT's control)",
            out / "task_l2" / "merged",
        ),
    ]


def task_name(out: Path) -> str:
    return json.loads((out / "data" / "split.json").read_text())["task"]["name"]


def estimates(c: DemoConfig) -> dict[str, float]:
    """Planned seconds per stage from the token budgets (see :mod:`safeft.demo.config`)."""
    d, a, t, e = c.data, c.align, c.task, c.eval
    triple_tokens = 2 * min(a.max_length, 170) + 110  # prefix row + RTO row + one helpful row
    n_safety = d.n_train_triples + d.n_train_questions  # at most: questions the model refuses are dropped
    task_tokens = 0.9 * 75 + 0.1 * t.max_length
    gens = d.n_eval_harmful * (len(e.ks) + 1) + d.n_overrefusal
    task_run = 8 + t.epochs * t.n_train * task_tokens / TRAIN_TOKENS_PER_S  # plain LoRA, AsFT, control
    return {
        "original": 25.0 if c.model in EMBEDDED_MODELS or c.model.endswith(".gguf") else 3.0,
        "data": 3.0,
        "self_distill": 4 + d.n_self_distill * d.self_distill_max_new_tokens / GEN_TOKENS_PER_S,
        "derta": 8 + a.epochs * n_safety * triple_tokens / TRAIN_TOKENS_PER_S,
        "vanilla_sft": 8 + a.epochs * n_safety * 180 / TRAIN_TOKENS_PER_S,
        "direction": 5.0,
        "task_lora": task_run,
        "task_asft": task_run,
        "task_l2": task_run,
        "safelora": 2.0,
        "eval": 4 + (gens * e.max_new_tokens + t.n_eval * 4) / GEN_TOKENS_PER_S,
    }


def build_stages(config: DemoConfig, out: Path) -> list[Stage]:
    est = estimates(config)
    data, original = out / "data", out / "original" / "model"
    derta = out / "derta" / "merged"
    direction = out / "direction"
    stages = [
        Stage(
            "original",
            f"load {config.model} and save it as a model folder",
            lambda f: train.save_original(config, f),
            est["original"],
        ),
        Stage(
            "data",
            "build train/eval splits from the installed data packages",
            lambda f: build_data(config, f),
            est["data"],
        ),
        Stage(
            "self_distill",
            "the original model answers benign prompts (helpful rows)",
            lambda f: train.self_distill(config, f, original, data),
            est["self_distill"],
        ),
        Stage(
            "derta",
            "stage 1: DeRTa LoRA (harmful-prefix MLE + RTO) -> aligned model",
            lambda f: train.train_alignment(config, f, original, data, out / "self_distill", True),
            est["derta"],
        ),
        Stage(
            "vanilla_sft",
            "stage 1 baseline: vanilla safety SFT (refusal at position 0) on the same triples",
            lambda f: train.train_alignment(config, f, original, data, out / "self_distill", False),
            est["vanilla_sft"],
        ),
        Stage(
            "direction",
            "stage 2: alignment direction V = W_DeRTa - W_original (q_proj, v_proj)",
            lambda f: train.compute_alignment_direction(config, f, derta, original),
            est["direction"],
        ),
        Stage(
            "task_lora",
            "stage 2: plain LoRA on the contaminated task",
            lambda f: train.train_task(config, f, derta, data, direction, 0.0),
            est["task_lora"],
        ),
        Stage(
            "task_asft",
            "stage 2: AsFT on the contaminated task",
            lambda f: train.train_task(config, f, derta, data, direction, config.task.asft_lambda),
            est["task_asft"],
        ),
        Stage(
            "task_l2",
            "stage 2: AsFT's control, the same lambda on ||s B A||^2 (C = 0: no direction)",
            lambda f: train.train_task(
                config, f, derta, data, direction, config.task.asft_lambda, projector="none"
            ),
            est["task_l2"],
        ),
        Stage(
            "safelora",
            "stage 2: Safe LoRA projection of the plain LoRA adapter",
            lambda f: train.safe_lora(config, f, out / "task_lora" / "adapter", direction),
            est["safelora"],
        ),
    ]
    for spec in model_specs(out):
        stages.append(
            Stage(
                f"eval_{spec.key}",
                f"evaluate '{spec.label}'",
                lambda f, s=spec: evaluate_model(config, s, f, data, task_name(out)),
                est["eval"],
            )
        )
    return stages


#: fields that change how fast answers are generated, not what they are (batch sizes are not cache keys)
RESULT_NEUTRAL = frozenset({"eval.batch_size", "data.self_distill_batch_size"})


def check_config(config: DemoConfig, out: Path) -> None:
    """Refuse to resume a folder made with other budgets (its finished stages would be mixed in)."""
    path = out / CONFIG_FILE
    current = {k: v for k, v in as_dict(config).items() if k != "out"}
    if path.is_file():
        saved = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k != "out"}
        diff = [k for k in config_diff(saved, current) if k not in RESULT_NEUTRAL]
        if diff:
            raise ConfigError(
                f"{out} holds a demo run with another config (differs in {', '.join(diff)}); "
                "use another --out, or delete the stage folders you want redone and the file "
                f"{path.name}"
            )
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(as_dict(config), sort_keys=False))


def run_demo(config: DemoConfig, command: str = "safeft demo") -> dict[str, Any]:
    """Run (or resume) every stage, then write and print the summary; returns ``results.json``."""
    out = Path(config.out)
    check_config(config, out)
    started = time.time()
    records = StageRunner(out, build_stages(config, out)).run()
    wall = time.time() - started
    return write_summary(config, out, command, wall, [r.__dict__ for r in records])


def write_summary(
    config: DemoConfig, out: Path, command: str, wall: float, records: list[dict]
) -> dict[str, Any]:
    from safeft.eval.report import write_report

    task = task_name(out)
    runs, rows = [], []
    for spec in model_specs(out):
        results = json.loads((out / f"eval_{spec.key}" / "results.json").read_text())
        runs.append(results)
        rows.append((spec.key, spec.label, metrics_of(results, config.eval.ks, task)))
    split = json.loads((out / "data" / "split.json").read_text())
    peak = peak_rss_bytes()
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command,
        "judge": runs[0]["judge"]["name"],
        "model": config.model,
        "task": task,
        "task_source": split["task"]["source"],
        "n_per_cell": n_per_cell(rows),
        "wall_time": fmt_seconds(wall)
        + (
            " (this call; finished stages were skipped)"
            if any(r["status"] == "skipped" for r in records)
            else ""
        ),
        "peak_memory": fmt_bytes(peak) + " (this call)",
        "peak_rss_bytes": peak,
        "stage_seconds": _stage_seconds(out, records),
        "environment": environment(),
        "config": as_dict(config),
        "split_counts": split["counts"],
    }
    head, cells = header(config.eval.ks, task), table_rows(rows, config.eval.ks)
    verdicts = comparisons(rows)
    results = {
        "demo": meta,
        "table": {
            "header": head,
            "rows": cells,
            "metrics": {key: {"label": label, **m} for key, label, m in rows},
        },
        "comparisons": verdicts,
        "runs": {key: r for (key, _, _), r in zip(rows, runs, strict=True)},
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False, default=str))
    md, page = write_report(
        runs,
        out,
        names=[label for _, label, _ in rows],
        title="safeft demo: DeRTa, then AsFT vs plain LoRA on a contaminated task",
    )
    summary_md = summary_markdown(meta, head, cells, verdicts)
    text = md.read_text(encoding="utf-8")
    title, _, rest = text.partition("\n")
    md.write_text(f"{title}\n\n{summary_md}\n{rest}", encoding="utf-8")
    page_text = page.read_text(encoding="utf-8")
    cut = page_text.find("</h1>") + len("</h1>")
    page.write_text(
        page_text[:cut] + summary_html(meta, head, cells, verdicts) + page_text[cut:], encoding="utf-8"
    )
    print("\n" + summary_md)
    print(
        f"results: {out / 'results.json'}\nreport:  {page} (and {md.name})\n"
        f"peak memory: {meta['peak_memory']}"
    )
    return results


def _stage_seconds(out: Path, records: list[dict]) -> dict[str, float]:
    """Seconds each stage took when it ran (from its marker, so resumed runs keep the original time)."""
    seconds = {}
    for r in records:
        marker = out / r["name"] / "stage.json"
        if marker.is_file():
            seconds[r["name"]] = json.loads(marker.read_text())["seconds"]
    return seconds
