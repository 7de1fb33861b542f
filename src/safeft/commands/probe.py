"""``safeft probe``: does a model refuse at its first answer token, and is harm readable there?"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from safeft.commands.argtypes import at_least

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "probe",
        help="first-token refusal decision: AUROC of log p('Sorry') and of a linear harm read-out",
        description=(
            "One forward pass per prompt at the answer's first position. Reports, on held-out harmful "
            "and benign prompts: how often greedy decoding starts with the refusal word; how well "
            "log p(refusal word) separates harmful from benign (AUROC, 95% bootstrap interval); how well "
            "a linear read-out of the hidden state (difference of class means on training prompts, layer "
            "chosen on validation) separates them; and what each score would refuse at a threshold "
            "chosen on validation. One JSON per model in --out (a model already done is skipped: rerun "
            "to resume) and table.md."
        ),
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        help="LABEL=MODEL or MODEL (embedded name, .gguf, directory); repeat for several models",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--data-dir", help="folder of the public data files (e.g. ../shared/data)")
    p.add_argument("--refusal-word", default="Sorry", help="its first token is the refusal decision")
    p.add_argument(
        "--max-benign-refused",
        type=float,
        default=0.05,
        help="the validation threshold refuses at most this share of benign validation prompts",
    )
    p.add_argument("--batch-size", type=at_least(1), default=16, help="prompts per forward pass")
    p.set_defaults(handler=run)


def _label_and_model(spec: str) -> tuple[str, str]:
    label, sep, model = spec.partition("=")
    return (label, model) if sep and label and model else (Path(spec.rstrip("/")).name or spec, spec)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from safeft.eval.decision_probe import ProbeSets, format_table, probe_model
    from safeft.models import load_model_and_tokenizer

    if not 0 <= args.max_benign_refused < 1:
        raise ValueError(f"--max-benign-refused must be in [0, 1), got {args.max_benign_refused}")
    specs = [_label_and_model(s) for s in args.model]
    labels = [label for label, _ in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--model labels must differ, got {labels}; name them LABEL=MODEL")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = ProbeSets().load(args.data_dir)
    results: dict[str, dict] = {}
    for label, name in specs:
        path = out / f"{label}.json"
        if path.is_file():
            log.info("%s: done already (%s), skipped", label, path)
            results[label] = json.loads(path.read_text(encoding="utf-8"))["result"]
            continue
        model, tokenizer = load_model_and_tokenizer(name)
        model.eval()
        result = probe_model(
            model, tokenizer, sets, args.refusal_word, args.max_benign_refused, args.batch_size
        )
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"model": name, "result": result}, indent=1), encoding="utf-8")
        tmp.replace(path)
        results[label] = result
    table = format_table(results)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0
