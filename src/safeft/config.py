"""Recipes: YAML files parsed into dataclasses, with ``--key value`` overrides from the command line.

A recipe is a flat or nested YAML mapping whose keys are the fields of a config dataclass
(``DeRTaConfig``, ``AsFTConfig``...). Nested dataclass fields take nested mappings. Overrides use
dotted keys for nested fields: ``--data.rto_keep_ratio 0.1``. A training recipe may name its method
(``method: derta``); :data:`RECIPE_METHODS` maps each method to its config class. A field's one-line
help is its metadata (``field(default=..., metadata={"help": ...})``); :func:`describe_fields` and
:func:`format_fields` list the fields for ``safeft train --help``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

#: the config class of each training method (``module:Class``, imported only where needed)
RECIPE_METHODS: dict[str, str] = {
    "derta": "safeft.derta.trainer:DeRTaConfig",
    "asft": "safeft.asft.trainer:AsFTConfig",
}


class ConfigError(ValueError):
    """A recipe or override names an unknown field or holds a value of the wrong type."""


def _convert(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, where)
            except (ConfigError, ValueError, TypeError) as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} fits none of {annotation}")
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, where)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_convert(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from exc
    if annotation is float:
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from exc
    if annotation is str:
        if isinstance(value, dict | list):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def convert_value(value: Any, annotation: Any, where: str) -> Any:
    """``value`` converted to type hint ``annotation`` as recipe fields are (``"true"`` -> ``True``,
    ``"8"`` -> ``8``); a :class:`ConfigError` naming ``where`` when it does not fit."""
    return _convert(value, annotation, where)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, checking every key and converting types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; valid fields: {sorted(fields)}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a check in __post_init__: name the file
        raise ConfigError(f"{where}: {exc}") from None


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """``["--a.b", "1", "--c", "x"]`` -> ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML scalars).

    Also ``--key=value``. Dashes become underscores in the *key* only (``--output-dir=/x/my-run``
    keeps ``/x/my-run``); a value may start with a dash (``--learning_rate -1e-4``).
    """
    result: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"override {arg!r}: expected --key value or --key=value")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
            i += 1
        else:
            key = arg[2:]
            if i + 1 >= len(argv):
                raise ConfigError(f"override --{key} has no value")
            raw = argv[i + 1]
            i += 2
        key = key.replace("-", "_")
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {arg!r}: empty field name")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw  # not a YAML scalar (e.g. "a: b: c"): keep the text
        node = result
        *parents, leaf = key.split(".")
        for p in parents:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override --{key}: --{p} was already given a value")
            node = child
        node[leaf] = value
    return result


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in overrides.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def method_of(cls: type) -> str | None:
    """The training method whose config class ``cls`` is (or derives from), e.g. ``"derta"``."""
    names = {f"{k.__module__}:{k.__qualname__}" for k in cls.__mro__}
    return next((method for method, target in RECIPE_METHODS.items() if target in names), None)


def _take_method(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` without its ``method:`` key when that names ``cls``'s method; a clear error when it names
    another one. Left alone for classes with a ``method`` field or no method."""
    expected = method_of(cls)
    if "method" not in data or expected is None or "method" in {f.name for f in dataclasses.fields(cls)}:
        return data
    method = data["method"]
    if not isinstance(method, str) or method not in RECIPE_METHODS:
        raise ConfigError(f"{where}: method: unknown method {method!r}; valid: {', '.join(RECIPE_METHODS)}")
    if method != expected:
        raise ConfigError(
            f"{where}: method: {method!r} is not {cls.__name__}'s method ({expected!r}); load it with "
            f"{RECIPE_METHODS[method].split(':')[1]} or run `safeft train --config {where}`"
        )
    return {k: v for k, v in data.items() if k != "method"}


def load_recipe(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Read a YAML recipe (optional) into ``cls`` and apply ``--key value`` overrides. A ``method:`` key
    must name ``cls``'s method (``DeRTaConfig``: ``derta``, ``AsFTConfig``: ``asft``)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"recipe not found: {p}")
        loaded = read_yaml(p, "a recipe") or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: a recipe must be a YAML mapping, got {type(loaded).__name__}")
        data = loaded
    data = merge(data, parse_overrides(overrides or []))
    where = str(path or "config")
    return from_dict(cls, _take_method(cls, data, where), where=where)


def read_yaml(path: str | Path, what: str = "a YAML file") -> Any:
    """Parse a YAML file; syntax errors and non-UTF-8 bytes become a :class:`ConfigError` naming the
    file, line and column."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}); expected {what} in UTF-8") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error ({problem}); expected {what}") from None


def save_recipe(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


# ------------------------------------------------------------------------- field listing for --help


def type_name(annotation: Any) -> str:
    """``list[SourceConfig]``, ``int | None``: a type hint as a recipe writer reads it."""
    if annotation is type(None):
        return "None"
    if annotation is Any:
        return "Any"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _plain(value: Any) -> Any:
    """``value`` as YAML data; a dataclass as a mapping of the fields that differ from its defaults."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if getattr(value, f.name) != _field_default(f)
        }
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _yaml_value(value: Any) -> str:
    """A default as it would be written in a recipe (flow-style YAML on one line)."""
    text = yaml.safe_dump(_plain(value), default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text[: -len("\n...")] if text.endswith("\n...") else text


@dataclasses.dataclass
class FieldDoc:
    """One recipe field for ``--help``: dotted name, type, default (as YAML) and one-line help."""

    name: str
    type: str
    default: str
    help: str


def describe_fields(config: Any, prefix: str = "") -> list[FieldDoc]:
    """The fields of dataclass instance ``config`` (its values as the defaults); a nested dataclass field
    is followed by its own fields under dotted names (``lora.r``, ``check.n``; one level deep)."""
    hints = typing.get_type_hints(type(config))
    docs = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        help_text = f.metadata.get("help", "")
        nested = not prefix and dataclasses.is_dataclass(value) and not isinstance(value, type)
        default = "" if nested else _yaml_value(value)  # a nested one: its fields follow
        docs.append(FieldDoc(prefix + f.name, type_name(hints[f.name]), default, help_text))
        if nested:
            docs += describe_fields(value, f"{f.name}.")
    return docs


def format_fields(docs: list[FieldDoc], column: int = 44, longest_default: int = 48) -> str:
    """``docs`` as indented help lines: ``name (type, default D)`` then the help, aligned at ``column``
    (on the next line when the first part is longer)."""
    lines = []
    for d in docs:
        default = d.default if len(d.default) <= longest_default else d.default[: longest_default - 3] + "..."
        head = f"  {d.name} ({d.type}, default {default})" if default else f"  {d.name} ({d.type})"
        if not d.help:
            lines.append(head)
        elif len(head) < column - 1:
            lines.append(f"{head:<{column}}{d.help}")
        else:
            lines += [head, " " * column + d.help]
    return "\n".join(lines)


def recipe_class(method: str) -> type:
    """The config class of training method ``method`` (imported here: torch and transformers load)."""
    import importlib

    if method not in RECIPE_METHODS:
        raise ConfigError(f"unknown method {method!r}; valid: {', '.join(RECIPE_METHODS)}")
    module, name = RECIPE_METHODS[method].split(":")
    return getattr(importlib.import_module(module), name)


def recipe_fields_help(method: str | None = None) -> str:
    """Every recipe field with its type, default and help: of ``method`` alone, or (``None``) the fields
    common to all methods followed by each method's own fields and the defaults it changes."""
    usage = (
        "(override any field with --FIELD VALUE, nested ones with --lora.r 16; any other\n"
        "transformers.TrainingArguments goes under trainer:, e.g. --trainer.optim adafactor)"
    )
    if method is not None:
        cls = recipe_class(method)
        docs = describe_fields(cls())
        return f"recipe fields of method {method} ({cls.__name__})\n{usage}\n{format_fields(docs)}"
    from safeft.training.base import TrainConfig

    common = describe_fields(TrainConfig())
    parts = [f"recipe fields common to every method (TrainConfig)\n{usage}", format_fields(common)]
    for name in RECIPE_METHODS:
        cls = recipe_class(name)
        own = [d for d in describe_fields(cls()) if d not in common]
        parts += [
            f"\nmethod {name} ({cls.__name__}): its own fields and the defaults it changes",
            format_fields(own),
        ]
    return "\n".join(parts)
