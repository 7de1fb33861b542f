"""The ``safeft`` command line. Each sub-command lives in ``safeft.commands.<name>`` and exposes
``register(subparsers)``; heavy imports happen inside the command's handler so ``--help`` is fast."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: sub-command modules under safeft.commands, in the order ``safeft --help`` lists them
COMMANDS = ["train", "sweep", "direction", "safelora", "eval", "report", "judge", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safeft", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"safeft.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"safeft.commands.{name}":
                raise
            continue  # command not built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.handler(args, extra) or 0)
    except (ValueError, FileNotFoundError) as exc:
        # Our own errors name the file/row/field; show them without a traceback.
        if args.verbose:
            raise
        print(f"safeft {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
