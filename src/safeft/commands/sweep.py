"""``safeft sweep --config SWEEP.yaml``: a grid of recipe settings, validated and evaluated, and the
trade-off front of attack success against over-refusal (see :mod:`safeft.sweep`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="train a grid of recipe settings and draw the safety / over-refusal front",
        description="Train every point of a sweep file (resumable: finished points are skipped), run "
        "each point's validation check and evaluation suite, and write sweep.json, sweep.md and "
        "front.png. The setting is chosen on the validation split only.",
    )
    p.add_argument("--config", required=True, help="sweep YAML (see sweeps/derta_smollm2.yaml)")
    p.add_argument("--out", dest="output_dir", help="override the file's output_dir (old: --output-dir)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="points trained at the same time (default 1; on a CPU set "
        "OMP_NUM_THREADS so that jobs x threads <= cores)",
    )
    p.add_argument(
        "--only",
        action="append",
        metavar="POINT",
        help="run and summarise only this point (a setting's name takes all its seeds); repeatable. "
        "The summary then selects among these points only",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from safeft.config import ConfigError, read_yaml
    from safeft.sweep import load_sweep, run_sweep

    if not Path(args.config).is_file():
        raise ConfigError(f"--config {args.config}: sweep file not found")
    read_yaml(args.config, "a sweep YAML")  # names the file on non-UTF-8 bytes or a syntax error
    config, _ = load_sweep(args.config, args.output_dir)
    run_sweep(config, jobs=args.jobs, only=args.only)
    return 0
