"""``safeft train --config RECIPE.yaml [--key value ...]``: run a training recipe."""

from __future__ import annotations

import argparse
from pathlib import Path

METHODS = ("derta", "asft")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train with a recipe (DeRTa or AsFT)",
        description="Train with a YAML recipe; any recipe field can be overridden with --field value "
        "(nested: --lora.r 16, --check.n 20).",
    )
    p.add_argument("--config", required=True, help="recipe YAML (see recipes/)")
    p.add_argument("--out", help="output folder (the recipe's output_dir; --output_dir also works)")
    p.add_argument("--method", choices=METHODS, help="override the recipe's 'method' key")
    p.set_defaults(handler=run, accepts_overrides=True)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from safeft.config import ConfigError, from_dict, merge, parse_overrides, read_yaml

    path = Path(args.config)
    if not path.is_file():
        raise ConfigError(f"--config {path}: recipe file not found")
    data = read_yaml(path, "a training recipe") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping")
    method = args.method or data.pop("method", "derta")
    data.pop("method", None)
    data = merge(data, parse_overrides(overrides))
    if args.out is not None:
        data["output_dir"] = args.out
    if method == "derta":
        from safeft.derta.trainer import DeRTaConfig, train_derta

        train_derta(from_dict(DeRTaConfig, data, where=str(path)))
    elif method == "asft":
        from safeft.asft.trainer import AsFTConfig, train_asft

        train_asft(from_dict(AsFTConfig, data, where=str(path)))
    else:
        raise ConfigError(f"{path}: unknown method {method!r}; valid: {', '.join(METHODS)}")
    return 0
