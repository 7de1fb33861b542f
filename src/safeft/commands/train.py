"""``safeft train --config RECIPE.yaml [--key value ...]``: run a training recipe.

``safeft train --help`` lists every recipe field (type, default, one-line help); with ``--method X`` or
``--config RECIPE`` before ``--help``, only that method's fields with its defaults.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from safeft.config import RECIPE_METHODS

METHODS = tuple(RECIPE_METHODS)


class FieldsHelp(argparse.Action):
    """``-h/--help``: argparse's help, then the recipe fields (imports torch/transformers, so only here)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, *_: Any) -> None:
        from safeft.config import recipe_fields_help

        parser.print_help()
        print(f"\n{recipe_fields_help(help_method(namespace))}")
        parser.exit()


def help_method(namespace: argparse.Namespace) -> str | None:
    """The method whose fields ``--help`` lists: ``--method``, else a readable ``--config``'s ``method:``,
    else None (all methods)."""
    from safeft.config import ConfigError, read_yaml

    if getattr(namespace, "method", None):
        return namespace.method
    config = getattr(namespace, "config", None)
    if not config or not Path(config).is_file():
        return None
    try:
        data = read_yaml(config, "a training recipe")
    except ConfigError:
        return None
    method = data.get("method") if isinstance(data, dict) else None
    return method if method in RECIPE_METHODS else None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train with a recipe (DeRTa or AsFT)",
        description="Train with a YAML recipe; any recipe field can be overridden with --field value "
        "(nested: --lora.r 16, --check.n 20; TrainingArguments under trainer: --trainer.optim adafactor). "
        "The recipe fields are listed below the options.",
        add_help=False,
    )
    p.add_argument("-h", "--help", action=FieldsHelp, help="show this help and every recipe field, then exit")
    p.add_argument("--config", required=True, help="recipe YAML (see recipes/)")
    p.add_argument("--out", help="output folder (the recipe's output_dir; --output_dir also works)")
    p.add_argument("--method", choices=METHODS, help="override the recipe's 'method' key")
    p.set_defaults(handler=run, accepts_overrides=True)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from safeft.config import ConfigError, from_dict, merge, parse_overrides, read_yaml, recipe_class

    path = Path(args.config)
    if not path.is_file():
        raise ConfigError(f"--config {path}: recipe file not found")
    data = read_yaml(path, "a training recipe") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping")
    method = args.method or data.pop("method", "derta")
    data.pop("method", None)
    if method not in METHODS:
        raise ConfigError(f"{path}: unknown method {method!r}; valid: {', '.join(METHODS)}")
    data = merge(data, parse_overrides(overrides))
    if args.out is not None:
        data["output_dir"] = args.out
    config = from_dict(recipe_class(method), data, where=str(path))
    try:
        config.validate()  # the recipe's own checks and its trainer: settings, before any data or model
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if method == "derta":
        from safeft.derta.trainer import train_derta

        train_derta(config)
    else:
        from safeft.asft.trainer import train_asft

        train_asft(config)
    return 0
