"""Token-level training examples built on the tokenizer's chat template.

An :class:`Example` stores, for every input position ``t``, the token the model must predict from
there (``targets[t]``, already shifted: it is compared with the logits at ``t``) and what kind of
supervision that is (``kinds[t]``): none, MLE (ordinary next token), or RTO (the refusal token at a
harmful position). Keeping targets explicit, rather than HF-style labels, is what lets one sequence
carry targets that are *not* its own next tokens, and lets the loss compute the LM head only where a
target exists.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from safeft.data.records import DataError

IGNORE = -100
KIND_NONE, KIND_MLE, KIND_RTO = 0, 1, 2
_SENTINEL = "\u2063SAFEFT\u2063"


@dataclass
class Example:
    input_ids: list[int]
    targets: list[int]
    kinds: list[int]
    origin: str = ""
    row_type: str = "helpful"  # helpful | prefix | rto
    # a token to push *down* at each position (IGNORE elsewhere): the refusal token inside helpful
    # answers, for DeRTa's guard term (``safeft.derta.loss``); None = no such column
    avoid: list[int] | None = None
    # the same inside refusals, after their first token (DeRTa's refusal guard); None = no such column
    avoid_in_refusal: list[int] | None = None

    def as_features(self) -> dict:
        features = {
            "input_ids": self.input_ids,
            "targets": self.targets,
            "kinds": self.kinds,
            "length": len(self.input_ids),
        }
        if self.avoid is not None:
            features["avoid"] = self.avoid
        if self.avoid_in_refusal is not None:
            features["avoid_in_refusal"] = self.avoid_in_refusal
        return features


@dataclass
class TruncationLog:
    """Counts what ``max_length`` cut, with a few row origins per reason, for one summary warning."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, origin: str) -> None:
        self.counts[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(origin)

    def summary(self) -> str:
        return "; ".join(
            f"{n} x {reason} (e.g. {', '.join(self.examples[reason])})" for reason, n in self.counts.items()
        )


class ChatFormat:
    """Turns (prompt, assistant text) into token ids with the tokenizer's own chat template."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, system_prompt: str | None = None) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise DataError("the tokenizer has no chat template; pass --chat_template")
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        prompt_text = self._render([{"role": "user", "content": "x"}], generation_prompt=True)
        full_text = self._render(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": _SENTINEL}],
            generation_prompt=False,
        )
        start = full_text.find(_SENTINEL)
        if start < 0 or not full_text.startswith(prompt_text):
            raise DataError(
                "the chat template does not render an assistant turn as prompt + answer + end-of-turn; "
                "pass a standard template with --chat_template"
            )
        self.end_of_turn_ids = self.encode(full_text[start + len(_SENTINEL) :])
        if not self.end_of_turn_ids:
            self.end_of_turn_ids = [tokenizer.eos_token_id]

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        if self.system_prompt is not None:
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=False
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def prompt_ids(self, prompt: str) -> list[int]:
        """The conversation up to the start of the assistant's answer."""
        return self.encode(self._render([{"role": "user", "content": prompt}], generation_prompt=True))

    def single_token(self, text: str) -> int:
        ids = self.encode(text)
        if not ids:
            raise DataError(f"refusal token {text!r} tokenizes to nothing")
        return ids[0]


def supervised_example(
    prompt_ids: list[int],
    context_ids: list[int],
    answer_ids: list[int],
    origin: str,
    row_type: str,
) -> Example:
    """``prompt + context + answer`` with MLE targets on ``answer`` only (context is not trained)."""
    input_ids = prompt_ids + context_ids + answer_ids
    targets = [IGNORE] * len(input_ids)
    kinds = [KIND_NONE] * len(input_ids)
    first = len(prompt_ids) + len(context_ids) - 1  # position whose next token is answer[0]
    for j, token in enumerate(answer_ids):
        targets[first + j] = token
        kinds[first + j] = KIND_MLE
    # The last input token's target would be beyond the sequence: drop that input token.
    return Example(input_ids[:-1], targets[:-1], kinds[:-1], origin, row_type)


def encode_sft(
    fmt: ChatFormat, prompt: str, response: str, origin: str, max_length: int, truncations: TruncationLog
) -> Example | None:
    """A helpful row: plain MLE on the response and the end-of-turn tokens."""
    prompt_ids = fmt.prompt_ids(prompt)
    answer_ids = fmt.encode(response) + fmt.end_of_turn_ids
    if len(prompt_ids) + 1 > max_length:
        truncations.add("dropped: prompt longer than max_length", origin)
        return None
    room = max_length + 1 - len(prompt_ids)  # input length = prompt + answer - 1
    if len(answer_ids) > room:
        truncations.add("helpful response truncated", origin)
        answer_ids = answer_ids[:room]
    return supervised_example(prompt_ids, [], answer_ids, origin, "helpful")
