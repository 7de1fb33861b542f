"""Records and row readers: safety triples, helpful pairs, and the files they come from.

Every row keeps where it came from (``origin`` = ``file:row``) so that every later error or warning can
name the file, the row and the field.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A data file or row is not what was expected; the message names file, row and field."""


@dataclass(frozen=True)
class SafetyTriple:
    """A harmful query ``prompt``, a harmful answer to it, and a safe answer (refusal)."""

    prompt: str
    harmful_response: str
    refusal: str
    origin: str  # "path:row" (row is 1-based; for CSV the header is row 1)


@dataclass(frozen=True)
class HelpfulPair:
    """An ordinary instruction and a helpful answer, trained with plain MLE."""

    prompt: str
    response: str
    origin: str


def read_utf8(path: str | Path, what: str = "text", encoding: str = "utf-8") -> str:
    """The text of ``path``; a file that is not UTF-8 raises a :class:`DataError` naming the file and the
    first bad byte (``encoding="utf-8-sig"`` also drops a byte-order mark)."""
    p = Path(path)
    try:
        return p.read_bytes().decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not UTF-8 text (byte {exc.start}); expected {what} saved as UTF-8") from None


def read_rows(path: str | Path, list_key: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(row_number, row)`` from JSONL, JSON (a list, or a mapping holding a list) or CSV.

    Row numbers are 1-based lines for JSONL/CSV (CSV rows counted after the header, so the first data
    row is line 2) and 1-based list indices for JSON. Lines starting with ``#`` before a CSV header are
    skipped (PyRIT's scorer files carry one).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        yield from _csv_rows(p)
        return
    text = read_utf8(p, "JSON/JSONL rows")
    if suffix == ".jsonl" or (suffix == ".json" and not text.lstrip().startswith(("[", "{"))):
        yield from _jsonl_rows(p, text)
        return
    if suffix != ".json":
        raise DataError(f"{p}: unsupported file type {suffix!r}; expected .jsonl, .json or .csv")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        # Some ".json" files are JSON lines (DeRTa's evaluation sets are).
        yield from _jsonl_rows(p, text)
        return
    if isinstance(data, dict):
        keys = [list_key] if list_key else [k for k, v in data.items() if isinstance(v, list)]
        if not keys or (list_key and list_key not in data):
            raise DataError(f"{p}: expected a JSON list of rows or a mapping with a list of rows")
        data = data[keys[0]]
    if not isinstance(data, list):
        raise DataError(f"{p}: expected a JSON list of rows, got {type(data).__name__}")
    for i, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{p}:{i}: expected an object, got {type(row).__name__}")
        yield i, row


def _csv_rows(p: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    lines = read_utf8(p, "CSV rows").splitlines(keepends=True)
    skip = 0
    while skip < len(lines) and lines[skip].startswith("#"):
        skip += 1
    reader = csv.DictReader(lines[skip:])
    if not reader.fieldnames:
        raise DataError(f"{p}:{skip + 1}: empty CSV (no header row)")
    for row in reader:
        line = skip + reader.line_num
        if None in row:
            raise DataError(f"{p}:{line}: more fields than the header has")
        if any(v is None for v in row.values()):
            raise DataError(f"{p}:{line}: fewer fields than the header has")
        yield line, dict(row)


def _jsonl_rows(p: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}:{i}: invalid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise DataError(f"{p}:{i}: expected a JSON object, got {type(row).__name__}")
        yield i, row


def hub_rows(dataset_id: str, split: str = "train") -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a ``datasets`` hub dataset (``hf:org/name`` in recipes), for users who are online."""
    import datasets

    ds = datasets.load_dataset(dataset_id, split=split)
    for i, row in enumerate(ds, start=1):
        yield i, dict(row)


def text_field(row: dict[str, Any], field: str, origin: str, *, allow_empty: bool = False) -> str:
    """``row[field]`` as a stripped string, or a :class:`DataError` naming origin and field."""
    if field not in row:
        raise DataError(f"{origin}: missing field {field!r} (row has {sorted(row)})")
    value = row[field]
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise DataError(f"{origin}: field {field!r} must be text, got {type(value).__name__}")
    value = value.strip()
    if not value and not allow_empty:
        raise DataError(f"{origin}: field {field!r} is empty")
    return value
