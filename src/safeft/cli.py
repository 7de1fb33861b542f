"""The ``safeft`` command line. Each sub-command lives in ``safeft.commands.<name>`` and exposes
``register(subparsers)``; heavy imports happen inside the command's handler so ``--help`` is fast.

Errors: the handler's own errors (``ValueError`` and subclasses such as ``ConfigError``,
``FileNotFoundError``, the endpoint and judge errors, YAML syntax errors, unreadable model files)
print one line ``safeft CMD: error: ...`` naming the file/row/field/flag and exit with code 2;
``-v`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys

DESCRIPTION = (
    "safeft makes chat models refuse harmful requests without becoming useless. "
    "Train with DeRTa (refusal at any position of an answer) or AsFT (LoRA anchored to the safety "
    "direction), then measure: attack success rates with confidence intervals, over-refusal and task "
    "accuracy. Everything runs offline on a CPU with the embedded SmolLM2 model."
)
EPILOG = (
    "start here: `safeft demo` (the whole story on the embedded model), "
    "`safeft COMMAND --help` for a command's options"
)

#: sub-command modules under safeft.commands, in the order ``safeft --help`` lists them
COMMANDS = ["train", "sweep", "direction", "safelora", "eval", "probe", "report", "judge", "demo"]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("safeft")
    except Exception:  # not installed as a distribution (e.g. run from a source tree)
        from safeft import __version__

        return __version__


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that appends ``(default: X)`` to options with a real default (not None/False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" not in text
            and default not in (None, False, argparse.SUPPRESS)
            and default != []
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


def _with_default_help(sub: argparse._SubParsersAction) -> None:
    """Make every sub-command's ``--help`` show defaults unless the command picks its own formatter."""
    add_parser = sub.add_parser

    def add_parser_with_defaults(name: str, **kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        return add_parser(name, **kwargs)

    sub.add_parser = add_parser_with_defaults  # type: ignore[method-assign]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safeft", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"safeft {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _with_default_help(sub)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"safeft.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"safeft.commands.{name}":
                raise
            continue  # command not built yet
        module.register(sub)
    return parser


#: renamed flags: old spelling -> the one every command now uses (applied where the command has the new one)
RENAMED = {"--output-dir": "--out", "--data-root": "--data-dir"}


def _selected(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The (sub-)command parser ``argv`` selects, e.g. ``judge agree``'s."""
    for token in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subs and token in subs[0].choices:
            parser = subs[0].choices[token]
    return parser


def normalize_flags(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """Rewrite old flag spellings to the canonical dashed ones; returns ``(argv, notes)``.

    ``--data_dir`` becomes ``--data-dir`` and ``--output-dir``/``--output_dir`` become ``--out`` when
    the selected command has that flag (recipe overrides such as ``--learning_rate`` or train's
    ``--output_dir`` are untouched: they are field names). Each rewrite gives one deprecation note.
    """
    selected = _selected(parser, argv)
    known = {s for p in (parser, selected) for a in p._actions for s in a.option_strings}
    fields = bool(selected.get_default("accepts_overrides"))  # --x_y may be a recipe field there
    out, notes = [], []
    for token in argv:
        if token == "--":
            break
        flag, eq, value = token.partition("=")
        if not flag.startswith("--") or flag in known:
            out.append(token)
            continue
        dashed = "--" + flag[2:].replace("_", "-")
        new = dashed if dashed in known else RENAMED.get(dashed if not (fields and "_" in flag) else "")
        if new is None or new not in known:
            out.append(token)
            continue
        notes.append(f"note: {flag} is deprecated, use {new}")
        out.append(new + eq + value)
    return out + argv[len(out) :], notes


def _error_types() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is shown as a one-line error (exit 2) instead of a traceback."""
    import yaml

    types: list[type[BaseException]] = [ValueError, FileNotFoundError, yaml.YAMLError, OSError]
    for module, name in (
        ("safeft.eval.judges.llm", "JudgeEndpointError"),
        ("safetensors", "SafetensorError"),
    ):
        with contextlib.suppress(ImportError, AttributeError):
            types.append(getattr(importlib.import_module(module), name))
    return tuple(types)


def _message(exc: BaseException, args: argparse.Namespace) -> str:
    """The one-line message; names the file for errors whose own text does not."""
    import yaml

    if isinstance(exc, yaml.YAMLError):
        mark = getattr(exc, "problem_mark", None)
        name = getattr(mark, "name", None)
        if not name or name.startswith("<"):
            name = getattr(args, "config", None) or getattr(args, "suite", None) or "a YAML file"
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(name)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return f"{where}: YAML syntax error ({problem})"
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv, notes = normalize_flags(parser, list(sys.argv[1:] if argv is None else argv))
    for note in dict.fromkeys(notes):
        print(f"safeft: {note}", file=sys.stderr)
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
    except _error_types() as exc:
        # Our own errors name the file/row/field; show them without a traceback.
        if args.verbose:
            raise
        print(f"safeft {args.command}: error: {_message(exc, args)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
