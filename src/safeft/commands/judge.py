"""``safeft judge``: train, inspect and score response judges.

    safeft judge train --data xstest --data pyrit --out judges/minilm [--seed 0] [--test-fraction 0.2]
    safeft judge show judges/minilm
    safeft judge score --data FILE.csv --judge classifier --head judges/minilm
    safeft judge agree --data harmbench_cls_val [--judge keyword | --judge llm --judge-opt base_url=URL ...]

``train`` fits the classifier judge's logistic head on human-labelled responses (named sets are
looked up under ``--data-root`` / ``$SAFEFT_DATA_DIR`` / ``shared/data``), splitting by prompt,
and writes ``head.safetensors`` + ``judge.json`` with held-out accuracy/F1/precision/recall.
``score`` measures a judge (``keyword`` or ``classifier``) against the labels of a set.
``agree`` scores *any* judge (with ``--judge-opt KEY=VALUE`` options, as ``safeft eval`` takes
them) against labelled rows: accuracy, Cohen's kappa, precision/recall and the ASR gap with 95 %
intervals (:mod:`safeft.eval.judges.agreement`), overall and per source file.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from safeft.commands.argtypes import at_least, in_range

log = logging.getLogger(__name__)


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="SET",
        help="xstest | pyrit | pyrit_objective | harmbench_cls_val | FILE.csv | FILE.jsonl | DIR; "
        "repeat or comma-separate to combine",
    )
    p.add_argument(
        "--data-dir",
        dest="data_root",
        help="folder holding xstest/ and pyrit/ (default $SAFEFT_DATA_DIR or shared/data; old: --data-root)",
    )
    p.add_argument(
        "--partial",
        choices=["refusal", "compliant", "drop"],
        default="refusal",
        help="label for XSTest 3_partial_refusal rows (default: refusal, as XSTest counts them)",
    )


def register(subparsers: Any) -> None:
    """Add ``safeft judge {train,show,score}``."""
    parser = subparsers.add_parser("judge", help="train / inspect / score response judges")
    sub = parser.add_subparsers(dest="judge_command", required=True, metavar="ACTION")

    train = sub.add_parser("train", help="train the classifier judge's head on labelled responses")
    _data_args(train)
    train.add_argument("--out", required=True, help="output folder (head.safetensors + judge.json)")
    train.add_argument("--seed", type=int, default=0, help="seed of the train/test split by prompt")
    train.add_argument(
        "--test-fraction",
        type=in_range(0, 1, open_ends=True),
        default=0.2,
        help="share of rows held out (default 0.2)",
    )
    train.add_argument(
        "--input",
        dest="input_mode",
        choices=["pair", "auto", "response", "prompt+response"],
        default="pair",
        help="pair (default): [e_r, e_r*e_p, cos] features, counterfactual augmentation, "
        "leave-one-source-out agreement; response / prompt+response / auto: the older single-split head",
    )
    train.add_argument(
        "--cache",
        default=str(Path.home() / ".cache" / "safeft" / "embeddings"),
        help="embedding cache folder (pair mode; default ~/.cache/safeft/embeddings)",
    )
    train.add_argument(
        "--no-paired",
        action="store_true",
        help="pair mode: do not add UncensorBench's refusal/compliant pairs from the data root",
    )
    train.add_argument("--l2", type=float, default=None, help="L2 strength (default: chosen on validation)")
    train.add_argument(
        "--threshold", type=in_range(0, 1), default=0.5, help="P(compliant) threshold (default 0.5)"
    )
    train.add_argument("--batch-size", type=at_least(1), default=32, help="embedding batch size")
    train.set_defaults(handler=run_train)

    show = sub.add_parser("show", help="print a trained head's metadata summary")
    show.add_argument("head", help="folder written by `safeft judge train`")
    show.set_defaults(handler=run_show)

    score = sub.add_parser("score", help="measure a judge against a labelled set")
    _data_args(score)
    score.add_argument("--judge", choices=["keyword", "classifier"], default="classifier")
    score.add_argument("--head", help="classifier head folder (for --judge classifier)")
    score.add_argument("--json", action="store_true", help="print the metrics as JSON")
    score.set_defaults(handler=run_score)

    agree = sub.add_parser(
        "agree",
        help="score any judge against human-labelled rows (accuracy, kappa, precision/recall, ASR gap)",
        description="Labelled rows: the named sets, or a CSV/JSONL file with fields prompt, response, "
        "label (refusal|compliant, 1 = refusal / 0 = compliant, or harmful|unharmful), optional group.",
    )
    _data_args(agree)
    agree.add_argument("--judge", default="keyword", help="judge name (default keyword)")
    agree.add_argument(
        "--judge-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="judge option, repeatable (classifier: path=DIR; llm: base_url=URL, model=NAME, format=...)",
    )
    agree.add_argument(
        "--judge-api-key-env",
        help="env var holding the LLM judge's API key (as in `safeft eval`; default: OPENAI_API_KEY)",
    )
    agree.add_argument("--limit", type=int, help="score a seeded sample of this many rows")
    agree.add_argument("--seed", type=int, default=0, help="sampling and bootstrap seed")
    agree.add_argument("--reps", type=int, default=1000, help="bootstrap resamples (default 1000)")
    agree.add_argument("--json", action="store_true", help="print the figures as JSON")
    agree.add_argument("--out", help="also write the figures (JSON) to this file")
    agree.set_defaults(handler=run_agree)


def _specs(values: list[str]) -> list[str]:
    return [s.strip() for v in values for s in v.split(",") if s.strip()]


def _fmt(m: dict[str, Any]) -> str:
    lo, hi = m["accuracy_ci95"]
    return (
        f"n={m['n']} accuracy={m['accuracy']:.3f} [95% CI {lo:.3f}-{hi:.3f}] "
        f"F1={m['f1']:.3f} precision={m['precision']:.3f} recall={m['recall']:.3f} (positive=compliant)"
    )


def _summary(meta: dict[str, Any]) -> str:
    lines = [
        f"classifier judge: {meta['embedder']} [{meta['input_mode']}] l2={meta['l2']:g} "
        f"threshold={meta['threshold']}",
        f"data: {'+'.join(meta['data'].get('specs', [])) or '?'} n={meta['n']} "
        f"(train {meta['n_train']}, held-out {meta['n_test']} rows / {meta['n_test_prompts']} prompts), "
        f"seed={meta['seed']}, labels={meta['labels']}",
        f"held-out:      {_fmt(meta['heldout'])}",
    ]
    for src, m in meta.get("heldout_by_source", {}).items():
        lines.append(f"  {src + ':':12} {_fmt(m)}")
    if "keyword_baseline_heldout" in meta:
        lines.append(f"keyword judge: {_fmt(meta['keyword_baseline_heldout'])}  (same held-out rows)")
    for src, m in meta.get("keyword_baseline_by_source", {}).items():
        lines.append(f"  {src + ':':12} {_fmt(m)}")
    return "\n".join(lines)


def _pair_summary(meta: dict[str, Any]) -> str:
    lines = [
        f"classifier judge (pair features {meta['features']}, C={meta['C']:g}) trained on "
        f"{'+'.join(meta['sources'])} (n={meta['n']}, {meta['n_train_with_augmentation']} with augmentation; "
        f"paired sources: {', '.join(meta['paired_sources']) or 'none'})",
    ]
    loso = meta.get("leave_one_source_out")
    if not loso:
        lines.append("no cross-source agreement: give labelled rows from two sources or more")
        return "\n".join(lines)
    lines.append("agreement with human labels on a source left out of training (never in-source):")
    for src, m in loso.items():
        acc, gap, kappa = m["accuracy"], m["asr_gap"], m["kappa"]
        lines.append(
            f"  {src + ':':20} n={m['n']:5d} accuracy {100 * acc['value']:.1f}% "
            f"[{100 * acc['ci95'][0]:.1f}, {100 * acc['ci95'][1]:.1f}]  kappa {kappa['value']:+.3f}  "
            f"ASR judge {100 * m['judge_asr']['value']:.1f}% vs human {100 * m['human_asr']['value']:.1f}% "
            f"(gap {100 * gap['value']:+.1f} [{100 * gap['ci95'][0]:+.1f}, {100 * gap['ci95'][1]:+.1f}])"
        )
    return "\n".join(lines)


def run_train(args: argparse.Namespace, extra: list[str]) -> int:
    """Load the labelled sets, train, save, print the held-out metrics."""
    from safeft.eval.judges.classifier import MiniLMEmbedder, train_classifier
    from safeft.eval.judges.labelled_data import load_labelled, resolve_data_root

    records, info = load_labelled(_specs(args.data), data_root=args.data_root, partial=args.partial)
    if args.input_mode == "pair":
        from safeft.eval.judges.cross_source import CachedEmbedder, paired_source_rows, train_pair_classifier

        root = None
        if not args.no_paired:
            try:
                root = resolve_data_root(args.data_root)
            except FileNotFoundError:
                root = None
        pair_meta = train_pair_classifier(
            records,
            args.out,
            CachedEmbedder(MiniLMEmbedder(batch_size=args.batch_size), args.cache),
            paired=paired_source_rows(root),
            seed=args.seed,
            data_info=info,
        )
        print(_pair_summary(pair_meta))
        print(f"saved to {Path(args.out) / 'judge.json'}")
        return 0
    log.info(
        "loaded %d labelled responses (%d prompts; %d duplicates dropped, %d conflicts)",
        info["n"],
        info["groups"],
        info["duplicates"],
        info["conflicts"],
    )
    meta = train_classifier(
        records,
        args.out,
        MiniLMEmbedder(batch_size=args.batch_size),
        seed=args.seed,
        test_fraction=args.test_fraction,
        input_mode=args.input_mode,
        l2=args.l2,
        threshold=args.threshold,
        data_info=info,
    )
    print(_summary(meta))
    print(f"saved to {Path(args.out) / 'judge.json'}")
    return 0


def run_show(args: argparse.Namespace, extra: list[str]) -> int:
    """Print the summary of a saved head."""
    path = Path(args.head) / "judge.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a judge file written by `safeft judge train` ({exc})") from None
    print(_pair_summary(meta) if meta.get("input_mode") == "pair" else _summary(meta))
    return 0


def run_score(args: argparse.Namespace, extra: list[str]) -> int:
    """Score a judge against every row of the given labelled sets."""
    from safeft.eval.judges.classifier import ClassifierJudge, binary_metrics
    from safeft.eval.judges.keyword import KeywordJudge
    from safeft.eval.judges.labelled_data import load_labelled

    records, info = load_labelled(_specs(args.data), data_root=args.data_root, partial=args.partial)
    if args.judge == "classifier":
        if not args.head:
            raise ValueError("--judge classifier needs --head DIR")
        judge: Any = ClassifierJudge.load(args.head)
        trained = {f["sha256"] for f in judge.metadata.get("data", {}).get("files", [])}
        overlap = sorted({f["file"] for f in info["files"] if f["sha256"] in trained})
        if overlap:
            log.warning(
                "%d of these files were used to train the head (%s...): this score is not held-out; "
                "see `safeft judge show` for the honest one",
                len(overlap),
                overlap[0],
            )
    else:
        judge = KeywordJudge()
    verdicts = judge.judge_many([(r.prompt, r.response) for r in records])
    y_true = [int(r.label == "compliant") for r in records]
    y_pred = [int(v.label == "compliant") for v in verdicts]
    metrics = binary_metrics(y_true, y_pred)
    metrics["judge"] = judge.name
    metrics["data"] = info["specs"]
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"{judge.name} judge on {'+'.join(info['specs'])}: {_fmt(metrics)}")
    return 0


def run_agree(args: argparse.Namespace, extra: list[str]) -> int:
    """Score ``--judge`` against the labelled rows, overall and per source file."""
    import random

    from safeft.commands.eval import _judge_options
    from safeft.eval.judges import get_judge, safe_verdicts
    from safeft.eval.judges.agreement import agreement, format_agreement
    from safeft.eval.judges.labelled_data import load_labelled

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.reps < 1:
        raise ValueError(f"--reps must be >= 1, got {args.reps}")
    options = _judge_options(args.judge_opt)
    if args.judge_api_key_env and args.judge == "llm":
        options["api_key_env"] = args.judge_api_key_env
    judge = get_judge(args.judge, **options)
    records, info = load_labelled(
        _specs(args.data), data_root=args.data_root, partial=args.partial, allow_empty=True
    )
    if args.limit is not None and args.limit < len(records):
        records = random.Random(args.seed).sample(records, args.limit)
    verdicts = safe_verdicts(judge, [(r.prompt, r.response) for r in records])
    human = [r.label for r in records]
    judged = [v.label for v in verdicts]
    data_name = "+".join(info["specs"])
    result: dict[str, Any] = {
        "judge": judge.name,
        "judge_options": sorted(_judge_options(args.judge_opt)),
        "data": data_name,
        "partial_refusal_as": args.partial,
        "overall": agreement(human, judged, reps=args.reps, seed=args.seed),
        "by_source": {},
    }
    by_source: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_source.setdefault(r.source.rsplit(":", 1)[0], []).append(i)
    if len(by_source) > 1:
        for src, idx in sorted(by_source.items()):
            result["by_source"][src] = agreement(
                [human[i] for i in idx], [judged[i] for i in idx], reps=args.reps, seed=args.seed
            )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_agreement(judge.name, data_name, result["overall"]))
        for src, m in result["by_source"].items():
            acc = m["accuracy"]
            gap = m["asr_gap"]["value"]
            acc_s = "–" if acc["value"] is None else f"{100 * acc['value']:.1f}%"
            gap_s = "–" if gap is None else f"{100 * gap:+.1f} pts"
            print(f"    {src}: n={m['n']} accuracy {acc_s}, ASR gap {gap_s}")
    return 0
