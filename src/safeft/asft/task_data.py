"""The user's fine-tuning task rows (possibly contaminated with harmful rows) as SFT examples.

Rows come from any :class:`~safeft.data.sources.SourceConfig` (a file or a named source). Besides
``prompt`` and ``response``, the field map may name an ``input`` column (Alpaca style, as in AsFT's
SST-2/AG News/GSM8K mixes): the user turn is then ``instruction + "\\n\\n" + input`` when the row has
a non-empty input. Examples are plain MLE on the response (:func:`safeft.data.chat.encode_sft`).
"""

from __future__ import annotations

import logging

from transformers import PreTrainedTokenizerBase

from safeft.data.chat import ChatFormat, Example, TruncationLog, encode_sft
from safeft.data.records import DataError, HelpfulPair, text_field
from safeft.data.sources import SourceConfig, iter_source_rows

log = logging.getLogger(__name__)

#: field map of AsFT's fine-tuning mixes (``ft_datasets__*_p_*.json``): instruction/input/output
ALPACA_FIELDS = {"prompt": "instruction", "input": "input", "response": "output"}


def load_task_pairs(sources: list[SourceConfig], data_dir: str | None = None) -> list[HelpfulPair]:
    """``(prompt, response)`` pairs of every source, with ``input`` appended to the prompt if mapped."""
    pairs: list[HelpfulPair] = []
    for cfg in sources:
        bad: list[str] = []
        for origin, row, fields in iter_source_rows(cfg, data_dir):
            try:
                prompt = text_field(row, fields.get("prompt", "prompt"), origin)
                extra = str(row.get(fields["input"]) or "").strip() if "input" in fields else ""
                response = text_field(row, fields.get("response", "response"), origin)
            except DataError as exc:
                if cfg.on_bad_row != "skip":
                    raise
                bad.append(str(exc))
                continue
            pairs.append(HelpfulPair(f"{prompt}\n\n{extra}" if extra else prompt, response, origin))
        if bad:
            log.warning("%s: skipped %d bad row(s), e.g. %s", cfg.path or cfg.source, len(bad), bad[0])
    return pairs


def task_examples(
    pairs: list[HelpfulPair],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    system_prompt: str | None = None,
) -> list[Example]:
    """Token-level SFT examples (MLE on the response and end-of-turn tokens only)."""
    fmt = ChatFormat(tokenizer, system_prompt)
    truncations = TruncationLog()
    examples = [
        e for p in pairs if (e := encode_sft(fmt, p.prompt, p.response, p.origin, max_length, truncations))
    ]
    if truncations.counts:
        log.warning("max_length %d: %s", max_length, truncations.summary())
    return examples
