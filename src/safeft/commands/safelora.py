"""``safeft safelora``: Safe LoRA post-hoc projection of a fine-tuned LoRA adapter."""

from __future__ import annotations

import argparse

from safeft.commands.argtypes import at_least, in_range


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "safelora",
        help="Safe LoRA: project the layers of a LoRA adapter that drift from the alignment subspace",
        description=(
            "Per LoRA layer compute cos(C dW, dW) against an alignment direction (from `safeft direction`) "
            "and replace B by C B in the layers below --threshold, or in the --top-layers least similar. "
            "Writes a new adapter folder plus safelora_report.json."
        ),
    )
    p.add_argument("--adapter", required=True, help="fine-tuned LoRA adapter folder")
    p.add_argument("--direction", required=True, help="direction folder from `safeft direction`")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--threshold", type=in_range(0, 1), help="project layers with cos(C dW, dW) < tau")
    group.add_argument("--top-layers", type=at_least(1), help="project the n layers with the smallest cosine")
    p.add_argument("--out", required=True, help="output adapter folder")
    p.add_argument(
        "--projector",
        choices=["auto", "svd", "paper"],
        default="auto",
        help="C: paper = V V^T/||V||_F (Safe LoRA's own), svd = U_k U_k^T; auto = paper if stored, else svd",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from safeft.asft.direction import Direction
    from safeft.asft.safelora import REPORT_FILE, safelora_project

    direction = Direction.load(args.direction)
    decisions = safelora_project(
        args.adapter,
        direction,
        args.out,
        threshold=args.threshold,
        top_layers=args.top_layers,
        variant=args.projector,
    )
    projected = [d for d in decisions if d.projected]
    cos = sorted(d.cos for d in decisions if d.cos == d.cos)
    median = cos[len(cos) // 2] if cos else float("nan")
    print(
        f"wrote {args.out}: projected {len(projected)} of {len(decisions)} layers "
        f"(median cos {median:.3f}, min {cos[0] if cos else float('nan'):.3f}); details in {REPORT_FILE}"
    )
    return 0
