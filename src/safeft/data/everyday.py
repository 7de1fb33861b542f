"""Everyday instructions and benign-but-edgy prompts, offline, in disjoint train/validation/eval splits.

The prompts come from ``safeft/resources/everyday.yaml`` (written for safeft): Alpaca-style templates
expanded with every filler of their slot, "contrast" prompts that use alarming words for benign requests
("How do I kill a Python process?"), how-to requests worded like harmful ones ("Explain step by step
how to ...", training only: ``howto_train``) and benign questions of XSTest's ten kinds (training only:
``lookalike_train``). Whole *templates* are assigned to a split (template ``i``
goes to eval when ``i % 5 == 4``, to validation when ``i % 5 == 3``, else to train, unless the template
names its ``split``), so an evaluation instruction never shares its wording with a training one; contrast
prompts are split by position the same way. A template added later names its split: appending one by
index alone would not move existing templates, but its split would follow from its position, not intent.
No answers ship with them: training uses the original model's own answers (self-distillation).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import yaml

from safeft.data.records import DataError

SPLITS = ("train", "validation", "eval")


def _split_of(index: int) -> str:
    return {4: "eval", 3: "validation"}.get(index % 5, "train")


def _template_split(index: int, template: dict) -> str:
    split = template.get("split", _split_of(index))
    if split not in SPLITS:
        raise DataError(
            f"safeft/resources/everyday.yaml: template {index} has split {split!r}; expected one of {SPLITS}"
        )
    return split


@cache
def _resource() -> dict:
    text = resources.files("safeft").joinpath("resources/everyday.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or not {"fillers", "templates", "contrast"} <= set(data):
        raise DataError("safeft/resources/everyday.yaml: expected keys fillers, templates, contrast")
    return data


def everyday_prompts(split: str) -> list[tuple[str, str]]:
    """``(id, prompt)`` of the everyday instructions of one split (ids: ``everyday:t<template>:<filler>``)."""
    if split not in SPLITS:
        raise DataError(f"everyday split must be one of {SPLITS}, got {split!r}")
    data = _resource()
    out = []
    for t, template in enumerate(data["templates"]):
        if _template_split(t, template) != split:
            continue
        slot = template["slot"]
        for f, filler in enumerate(data["fillers"][slot]):
            out.append((f"everyday:t{t}:{f}", template["text"].format(**{slot: filler})))
    return out


def contrast_prompts(split: str) -> list[tuple[str, str]]:
    """``(id, prompt)`` of the benign-but-edgy contrast prompts of one split."""
    if split not in SPLITS:
        raise DataError(f"contrast split must be one of {SPLITS}, got {split!r}")
    return [(f"contrast:{i}", p) for i, p in enumerate(_resource()["contrast"]) if _split_of(i) == split]


def howto_train_prompts() -> list[tuple[str, str]]:
    """``(id, prompt)`` of benign how-to requests worded like harmful ones ("step by step", "detailed
    instructions"): training data only, so a model answers instructions for everyday tasks instead of
    taking the wording for a harmful request. Validation asks for steps in its own template (t30)."""
    return [(f"howto:{i}", p) for i, p in enumerate(_resource().get("howto_train", []))]


def lookalike_train_prompts() -> list[tuple[str, str]]:
    """``(id, prompt)`` of benign questions of the ten kinds XSTest measures over-refusal with (a harmless
    second meaning, a figure of speech, a safe target, a game or fiction, a definition, history, a nonsense
    question about discrimination, public facts, a fictional character's private facts): training data
    only; XSTest's validation half measures what they change, its eval half is reported."""
    return [(f"lookalike:{i}", p) for i, p in enumerate(_resource().get("lookalike_train", []))]
