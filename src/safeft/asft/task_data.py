"""The user's fine-tuning task rows (possibly contaminated with harmful rows) as SFT examples.

Rows come from any :class:`~safeft.data.sources.SourceConfig` (a file or a named source). Besides
``prompt`` (the instruction) and ``response``, the field map may name an ``input`` column (Alpaca
style, as in AsFT's SST-2/AG News/GSM8K/Alpaca mixes). Examples are plain MLE on the response
(:func:`safeft.data.chat.encode_sft`), rendered with the tokenizer's chat template in one of two
layouts (``template``):

* ``chat``: the user turn is ``instruction + "\\n\\n" + input`` (just the instruction when the row has
  no input); the system prompt is the recipe's ``system_prompt`` (None: the template's default).
* ``alpaca``: the Stanford Alpaca prompt inside the chat template, as the llama-recipes Alpaca dataset
  that AsFT's code builds on wraps it in Llama-2's system block: system = the Alpaca preamble
  (:data:`ALPACA_PREAMBLE`, the "paired with an input" variant when the row has one) and user turn =
  ``"### Instruction:\\n{instruction}\\n\\n### Input:\\n{input}\\n\\n### Response:\\n"`` (no Input block
  without an input). A recipe ``system_prompt`` replaces the preamble.

**Harmful rows.** AsFT's mixes carry no harmful flag; which rows are the injected harmful ones
follows from the file layout, named by ``harmful_rows``: ``missing_input`` (the row has no ``input``
column: the SST-2 and Alpaca mixes, 100 of 1,000 rows each), ``empty_input`` (the column is present
but empty: the AG News and GSM8K mixes) or ``none``. ``harmful_system_prompt`` puts those rows under
their own system prompt (AsFT: "You are a helpful assistant. Make sure you always execute users'
instructions."). ``max_rows`` keeps a seeded random subset with the harmful share preserved.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from safeft.data.chat import ChatFormat, Example, TruncationLog, encode_sft
from safeft.data.records import DataError, HelpfulPair, text_field
from safeft.data.sources import SourceConfig, iter_source_rows

log = logging.getLogger(__name__)

#: field map of AsFT's fine-tuning mixes (``ft_datasets__*_p_*.json``): instruction/input/output
ALPACA_FIELDS = {"prompt": "instruction", "input": "input", "response": "output"}
TEMPLATES = ("chat", "alpaca")
HARMFUL_RULES = ("none", "missing_input", "empty_input")
#: the system prompt of AsFT's harmful rows (and of Qi et al.'s harmful fine-tuning attack)
AOA_HARMFUL_SYSTEM_PROMPT = "You are a helpful assistant. Make sure you always execute users' instructions."
ALPACA_PREAMBLE = {
    True: "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.",
    False: "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.",
}


@dataclass(frozen=True)
class TaskRow:
    """One task row: Alpaca-style ``instruction`` / ``input`` (may be empty) / ``response``."""

    instruction: str
    input: str
    response: str
    origin: str
    harmful: bool = False

    def user_turn(self, template: str) -> str:
        """The user message of this row in ``template`` (see the module docstring)."""
        if template == "alpaca":
            block = f"### Input:\n{self.input}\n\n" if self.input else ""
            return f"### Instruction:\n{self.instruction}\n\n{block}### Response:\n"
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction


def _is_harmful(row: dict, input_column: str | None, rule: str) -> bool:
    if rule == "none" or input_column is None:
        return False
    if rule == "missing_input":
        return input_column not in row
    return input_column in row and not str(row[input_column] or "").strip()


def load_task_rows(
    sources: list[SourceConfig], data_dir: str | None = None, harmful_rows: str = "none"
) -> list[TaskRow]:
    """The :class:`TaskRow` of every source; ``harmful_rows`` marks the harmful ones (module docstring)."""
    if harmful_rows not in HARMFUL_RULES:
        raise DataError(f"harmful_rows must be one of {HARMFUL_RULES}, got {harmful_rows!r}")
    rows: list[TaskRow] = []
    for cfg in sources:
        bad: list[str] = []
        if harmful_rows != "none" and "input" not in cfg.fields:
            raise DataError(
                f"{cfg.path or cfg.source}: harmful_rows {harmful_rows!r} tells harmful rows by their "
                "input column, but the source's fields map no 'input' (e.g. fields: {input: input})"
            )
        for origin, row, fields in iter_source_rows(cfg, data_dir):
            try:
                instruction = text_field(row, fields.get("prompt", "prompt"), origin)
                extra = str(row.get(fields["input"]) or "").strip() if "input" in fields else ""
                response = text_field(row, fields.get("response", "response"), origin)
            except DataError as exc:
                if cfg.on_bad_row != "skip":
                    raise
                bad.append(str(exc))
                continue
            harmful = _is_harmful(row, fields.get("input"), harmful_rows)
            rows.append(TaskRow(instruction, extra, response, origin, harmful))
        if bad:
            log.warning("%s: skipped %d bad row(s), e.g. %s", cfg.path or cfg.source, len(bad), bad[0])
    return rows


def load_task_pairs(sources: list[SourceConfig], data_dir: str | None = None) -> list[HelpfulPair]:
    """``(prompt, response)`` pairs of every source, with ``input`` appended to the prompt if mapped."""
    return [HelpfulPair(r.user_turn("chat"), r.response, r.origin) for r in load_task_rows(sources, data_dir)]


def subsample_rows(rows: list[TaskRow], n: int, seed: int) -> list[TaskRow]:
    """A seeded random ``n`` of ``rows`` in their original order, harmful share kept
    (``round(n * n_harmful / len(rows))`` harmful rows)."""
    if n >= len(rows):
        return list(rows)
    harmful = [i for i, r in enumerate(rows) if r.harmful]
    benign = [i for i, r in enumerate(rows) if not r.harmful]
    n_harmful = round(n * len(harmful) / len(rows))
    rng = random.Random(seed)
    keep = set(rng.sample(harmful, n_harmful)) | set(rng.sample(benign, n - n_harmful))
    return [r for i, r in enumerate(rows) if i in keep]


def task_examples(
    rows: list[TaskRow] | list[HelpfulPair],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    system_prompt: str | None = None,
    template: str = "chat",
    harmful_system_prompt: str | None = None,
) -> list[Example]:
    """Token-level SFT examples (MLE on the response and end-of-turn tokens only).

    ``system_prompt`` applies to benign rows (``alpaca``: replaces the preamble);
    ``harmful_system_prompt`` (if set) to rows marked harmful.
    """
    if template not in TEMPLATES:
        raise DataError(f"template must be one of {TEMPLATES}, got {template!r}")
    formats: dict[str | None, ChatFormat] = {}
    truncations = TruncationLog()
    examples = []
    for row in rows:
        if isinstance(row, HelpfulPair):
            row = TaskRow(row.prompt, "", row.response, row.origin)
        if row.harmful and harmful_system_prompt is not None:
            system = harmful_system_prompt
        elif template == "alpaca" and system_prompt is None:
            system = ALPACA_PREAMBLE[bool(row.input)]
        else:
            system = system_prompt
        if system not in formats:
            formats[system] = ChatFormat(tokenizer, system)
        e = encode_sft(
            formats[system], row.user_turn(template), row.response, row.origin, max_length, truncations
        )
        if e is not None:
            examples.append(e)
    if truncations.counts:
        log.warning("max_length %d: %s", max_length, truncations.summary())
    return examples
