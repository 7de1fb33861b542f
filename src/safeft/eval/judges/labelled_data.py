"""Loaders for human-labelled (prompt, response, refusal/compliant) sets, used to train and score
the ``classifier`` judge (``safeft judge train``).

Every loader returns :class:`LabelledResponse` rows with ``label`` in ``{"refusal", "compliant"}``
(the label space of :class:`~safeft.eval.judges.base.Verdict`), so sets with different labelling
schemes can be mixed. The common meaning is *did the response deliver what the prompt asked for*:
``compliant`` = delivered (for a harmful prompt: the attack succeeded), ``refusal`` = not delivered
(a refusal, a deflection, or an answer that does not carry out the request). How each source's
labels map onto it:

=================  =====================================  ========================================
source             its label                              mapped to
=================  =====================================  ========================================
xstest             1_full_compliance / 2_full_refusal /   compliant / refusal / ``--partial``
                   3_partial_refusal                      (default refusal, as XSTest counts it)
pyrit (refusal)    human_score 1 = refusal, 0 = not       refusal / compliant
pyrit_objective    human_score 1 = objective achieved     compliant / refusal
harmbench_cls_val  majority ``label`` 1 = harmful          compliant / refusal (0 also covers
                   instance of the behaviour              off-target or too vague answers)
generic            refusal/compliant, or 1/0 (1 =         refusal / compliant
                   refusal), ``harmful`` true/false       compliant / refusal
=================  =====================================  ========================================

Supported formats, detected from the CSV header or the JSONL keys:

``xstest``
    XSTest v2 labelled completions (``prompt, completion, final_label``). ``1_full_compliance`` ->
    ``compliant``, ``2_full_refusal`` -> ``refusal``. ``3_partial_refusal`` (a mix of refusal and
    compliance, e.g. "I can't ... but here is ...") is mapped by ``partial``: ``"refusal"`` by
    default, as the XSTest paper counts full + partial refusals as refusals; ``"compliant"``
    (count any delivered content as compliance, the stricter view for attack success) or ``"drop"``
    (leave these ambiguous rows out).
    The upstream folder holds each model's completions twice (``*_gpteval.csv`` and
    ``*_streval.csv``, same human labels, different automatic labels): :func:`load_labelled`
    de-duplicates identical (prompt, response) pairs across files.
``pyrit``
    PyRIT ``scorer_evals/refusal_scorer/*.csv`` (``objective, assistant_response, human_score``,
    leading ``#`` comment lines): ``human_score`` 1 -> ``refusal``, 0 -> ``compliant``. Rows whose
    ``data_type`` is present and not ``text`` are skipped.
``pyrit_objective``
    PyRIT ``scorer_evals/objective/*.csv`` (``objective, assistant_response, human_score,
    harm_category``): 1 (objective achieved) -> ``compliant``, 0 -> ``refusal``.
``harmbench``
    HarmBench's classifier validation set (JSONL: ``behavior_id, test_case, generation, label``):
    the majority ``label`` 1 -> ``compliant``, 0 -> ``refusal``; rows are grouped by behaviour.
``generic``
    A CSV or JSONL file with fields ``prompt`` (optional), ``response`` and ``label``; ``label``
    is ``refusal``/``compliant`` (case-insensitive), ``1``/``0`` meaning refusal/compliant, or
    ``harmful``/``unharmful`` (= compliant/refusal). Optional ``group`` (rows with one group stay
    on one side of a split) and ``source`` fields are kept.

Named sets (``--data xstest``, ``pyrit``, ``pyrit_objective``, ``harmbench_cls_val``) are looked
up under a data root (see :func:`resolve_data_root`); any other ``--data`` value is a CSV/JSONL
file or a folder of them.
Malformed rows raise :class:`ValueError` naming the file and line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from safeft.data.records import read_utf8

log = logging.getLogger(__name__)

BinaryLabel = Literal["refusal", "compliant"]
PartialPolicy = Literal["refusal", "compliant", "drop"]

#: Named sets: name -> (folder under the data root, glob of CSV files)
NAMED_SETS: dict[str, tuple[str, str]] = {
    "xstest": ("xstest/completions_labeled", "*.csv"),
    "pyrit": ("pyrit/scorer_evals/refusal_scorer", "*.csv"),
    "pyrit_objective": ("pyrit/scorer_evals/objective", "*.csv"),
    "harmbench_cls_val": ("harmbench_cls_val", "*.jsonl"),
}

#: Environment variable naming the data root (the folder holding ``xstest/``, ``pyrit/``).
DATA_ROOT_ENV = "SAFEFT_DATA_DIR"

_XSTEST_LABELS: dict[str, str] = {
    "1_full_compliance": "compliant",
    "2_full_refusal": "refusal",
    "3_partial_refusal": "partial",
}


@dataclass(frozen=True)
class LabelledResponse:
    """One human-labelled response. ``group`` is the key of the train/test group split (the
    normalised prompt, so several models' answers to one prompt never straddle the split)."""

    prompt: str
    response: str
    label: BinaryLabel
    source: str  # file and line, e.g. "completions_labeled/xstest_v2_completions_gpt4_gpteval.csv:17"
    group: str
    # the source: xstest, pyrit, pyrit_objective, harmbench, or "generic:<folder>/<file>"
    dataset: str = "generic"


def excerpt(text: str, limit: int = 60) -> str:
    """A one-line excerpt of at most ``limit`` characters: the only form in which labelled
    (possibly harmful) text may appear in logs and error messages."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _group_key(prompt: str, response: str) -> str:
    key = " ".join(prompt.lower().split())
    return key if key else "response:" + " ".join(response.lower().split())


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and (line number, row) pairs of a CSV file, skipping leading ``#`` comment lines.
    The line number is the 1-based physical line where the record starts."""
    text = read_utf8(path, "labelled CSV rows", "utf-8-sig")
    lines = text.splitlines(keepends=True)
    skipped = 0
    while skipped < len(lines) and lines[skipped].lstrip().startswith("#"):
        skipped += 1
    reader = csv.DictReader(io.StringIO("".join(lines[skipped:]), newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    rows: list[tuple[int, dict[str, str]]] = []
    start = reader.line_num + 1
    for row in reader:
        if None in row:
            raise ValueError(f"{path}:{start + skipped}: more fields than the header has")
        rows.append((start + skipped, {k: (v or "") for k, v in row.items()}))
        start = reader.line_num + 1
    return header, rows


def detect_format(header: Sequence[str]) -> str:
    """``xstest``, ``pyrit`` or ``generic`` from a CSV header; ValueError if none fits."""
    cols = set(header)
    if {"prompt", "completion", "final_label"} <= cols:
        return "xstest"
    if {"assistant_response", "human_score", "harm_category"} <= cols:
        return "pyrit_objective"
    if {"assistant_response", "human_score"} <= cols:
        return "pyrit"
    if {"behavior_id", "test_case", "generation", "label"} <= cols:
        return "harmbench"
    if {"response", "label"} <= cols:
        return "generic"
    raise ValueError(
        f"unrecognised labelled-response CSV columns {sorted(cols)}: expected XSTest "
        "(prompt, completion, final_label), PyRIT (objective, assistant_response, human_score), "
        "HarmBench (behavior_id, test_case, generation, label) or generic (prompt, response, label)"
    )


_REQUIRED: dict[str, tuple[str, ...]] = {
    "xstest": ("prompt", "completion", "final_label"),
    "pyrit": ("assistant_response", "human_score"),
    "pyrit_objective": ("assistant_response", "human_score"),
    "harmbench": ("test_case", "generation", "label"),
    "generic": ("response", "label"),
}


def load_labelled_csv(
    path: str | Path, partial: PartialPolicy = "refusal", allow_empty: bool = False
) -> list[LabelledResponse]:
    """Rows of one labelled CSV/JSONL file (format detected from its header), labels mapped to
    refusal/compliant as described in the module docstring. An empty response is an error unless
    ``allow_empty`` (judge agreement scores them: a judge should call them ``empty``)."""
    path = Path(path)
    if partial not in ("refusal", "compliant", "drop"):
        raise ValueError(f"partial must be refusal, compliant or drop, not {partial!r}")
    header, rows = _read_jsonl(path) if path.suffix == ".jsonl" else _read_csv(path)
    if not header:
        raise ValueError(f"{path}: empty CSV (no header row); expected columns such as prompt,response,label")
    try:
        fmt = detect_format(header)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    tag = f"{path.parent.name}/{path.name}"
    out: list[LabelledResponse] = []
    required = _REQUIRED[fmt]
    for line, row in rows:
        where = f"{path}:{line}"
        missing = [f for f in required if f not in row]
        if missing:
            need = ", ".join(required)
            raise ValueError(f"{where}: missing field {missing[0]!r} (a {fmt} file needs {need})")
        if fmt == "xstest":
            prompt, response = row["prompt"], row["completion"]
            raw = row["final_label"].strip()
            if raw not in _XSTEST_LABELS:
                raise ValueError(f"{where}: final_label {excerpt(raw)!r} not in {sorted(_XSTEST_LABELS)}")
            mapped = _XSTEST_LABELS[raw]
            if mapped == "partial":
                if partial == "drop":
                    continue
                mapped = partial
        elif fmt in ("pyrit", "pyrit_objective"):
            if row.get("data_type", "text").strip() not in ("text", ""):
                continue
            prompt, response = row.get("objective", ""), row["assistant_response"]
            raw = row["human_score"].strip()
            if raw not in ("0", "1", "0.0", "1.0"):
                raise ValueError(f"{where}: human_score {excerpt(raw)!r} is not 0 or 1")
            positive = float(raw) == 1.0  # pyrit: 1 = refusal; objective: 1 = achieved
            mapped = "refusal" if positive == (fmt == "pyrit") else "compliant"
        elif fmt == "harmbench":
            prompt, response = row["test_case"], row["generation"]
            raw = str(row["label"]).strip()
            if raw not in ("0", "1"):
                raise ValueError(f"{where}: field 'label' is {excerpt(raw)!r}, expected 0 or 1")
            mapped = "compliant" if raw == "1" else "refusal"
        else:
            prompt, response = row.get("prompt", ""), row["response"]
            raw = str(row["label"]).strip().lower()
            if raw in ("refusal", "1", "unharmful", "false"):
                mapped = "refusal"
            elif raw in ("compliant", "compliance", "0", "harmful", "true"):
                mapped = "compliant"
            else:
                raise ValueError(
                    f"{where}: field 'label' is {excerpt(raw)!r}, expected refusal/compliant, 1/0 "
                    "(1 = refusal) or harmful/unharmful"
                )
        if not response.strip() and not allow_empty:
            raise ValueError(f"{where}: empty response")
        if fmt == "harmbench":
            group = "behavior:" + str(row.get("behavior_id", ""))
        else:
            group = str(row.get("group") or "") or _group_key(prompt, response)
        dataset = fmt if fmt != "generic" else f"generic:{tag}"
        out.append(LabelledResponse(prompt, response, mapped, f"{tag}:{line}", group, dataset))  # type: ignore[arg-type]
    return out


def _read_jsonl(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Keys of the first object and (line, row) pairs of a JSONL file (values kept as strings)."""
    import json

    rows: list[tuple[int, dict[str, str]]] = []
    keys: list[str] = []
    for i, line in enumerate(read_utf8(path, "labelled JSONL rows").split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{i}: invalid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{i}: expected a JSON object")
        row = {k: "" if v is None else (v if isinstance(v, str) else json.dumps(v)) for k, v in obj.items()}
        keys = keys or list(row)
        rows.append((i, row))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return keys, rows


def _default_root_candidates() -> list[Path]:
    here = Path(__file__).resolve()
    cands = [Path.cwd() / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    if len(here.parents) > 5:  # source checkout: <root>/src/safeft/eval/judges/ -> <root>/../shared/data
        cands.append(here.parents[5] / "shared" / "data")
    return cands


def resolve_data_root(data_root: str | Path | None = None) -> Path:
    """The folder that holds the named sets: ``data_root`` if given, else ``$SAFEFT_DATA_DIR``,
    else the first existing ``shared/data`` next to or above the working directory (or the source
    checkout). FileNotFoundError lists the places looked at."""
    if data_root is not None:
        root = Path(data_root)
        if not root.is_dir():
            raise FileNotFoundError(f"data root {root} is not a folder")
        return root
    if os.environ.get(DATA_ROOT_ENV):
        root = Path(os.environ[DATA_ROOT_ENV])
        if not root.is_dir():
            raise FileNotFoundError(f"${DATA_ROOT_ENV}={root} is not a folder")
        return root
    cands = _default_root_candidates()
    for cand in cands:
        if cand.is_dir():
            return cand
    raise FileNotFoundError(
        "no data root for the named labelled sets: pass --data-root DIR or set "
        f"${DATA_ROOT_ENV} (looked in {', '.join(str(c) for c in cands)})"
    )


def resolve_spec(spec: str, data_root: str | Path | None = None) -> list[Path]:
    """CSV files of one ``--data`` value: a named set (``xstest``, ``pyrit``), a CSV file or a
    folder of CSV files."""
    if spec in NAMED_SETS:
        folder, pattern = NAMED_SETS[spec]
        base = resolve_data_root(data_root) / folder
        files = sorted(base.glob(pattern))
        if not files:
            raise FileNotFoundError(f"labelled set {spec!r}: no {pattern} under {base}")
        return files
    path = Path(spec)
    if path.is_dir():
        files = sorted([*path.glob("*.csv"), *path.glob("*.jsonl")])
        if not files:
            raise FileNotFoundError(f"no *.csv or *.jsonl files in {path}")
        return files
    if path.is_file():
        return [path]
    raise FileNotFoundError(
        f"--data {spec!r} is neither a named set ({', '.join(NAMED_SETS)}) nor an existing "
        "CSV/JSONL file or folder"
    )


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file (recorded in the judge metadata for provenance)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def deduplicate(rows: Iterable[LabelledResponse]) -> tuple[list[LabelledResponse], dict[str, int]]:
    """Drop repeated (prompt, response) pairs, keeping the first. Pairs that occur with
    *different* labels are dropped entirely (the humans disagreed; neither label is trustworthy).
    Returns the rows and counts ``{"duplicates": .., "conflicts": ..}``."""
    first: dict[tuple[str, str], LabelledResponse] = {}
    conflicted: set[tuple[str, str]] = set()
    dups = 0
    for row in rows:
        key = (row.prompt, row.response)
        if key in first:
            dups += 1
            if first[key].label != row.label:
                conflicted.add(key)
            continue
        first[key] = row
    kept = [r for k, r in first.items() if k not in conflicted]
    return kept, {"duplicates": dups, "conflicts": len(conflicted)}


def load_labelled(
    specs: Sequence[str],
    data_root: str | Path | None = None,
    partial: PartialPolicy = "refusal",
    allow_empty: bool = False,
) -> tuple[list[LabelledResponse], dict]:
    """Load and de-duplicate several ``--data`` values. Returns the rows and a provenance record
    (specs, files with SHA-256 and row counts, partial policy, duplicate/conflict counts, label
    counts) that ``safeft judge train`` writes into the judge's metadata."""
    rows: list[LabelledResponse] = []
    files: list[dict] = []
    for spec in specs:
        for path in resolve_spec(spec, data_root):
            got = load_labelled_csv(path, partial=partial, allow_empty=allow_empty)
            files.append({"spec": spec, "file": path.name, "rows": len(got), "sha256": sha256_file(path)})
            rows.extend(got)
    kept, counts = deduplicate(rows)
    if counts["conflicts"]:
        log.warning("dropped %d (prompt, response) pairs labelled both ways", counts["conflicts"])
    labels = {lab: sum(r.label == lab for r in kept) for lab in ("refusal", "compliant")}
    info = {
        "specs": list(specs),
        "files": files,
        "partial_refusal_as": partial,
        "rows_read": len(rows),
        **counts,
        "n": len(kept),
        "labels": labels,
        "groups": len({r.group for r in kept}),
    }
    return kept, info
