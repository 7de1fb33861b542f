"""safeft: safety-preserving fine-tuning of large language models.

The Python API (imported lazily, so ``import safeft`` stays fast)::

    import safeft
    results = safeft.evaluate("smollm2-135m-instruct", prompts="prompts.jsonl", attacks=["direct"])
    safeft.train_derta(safeft.DeRTaConfig(output_dir="runs/derta"))

* methods: :class:`DeRTaConfig` (a recipe), :class:`DeRTaArguments` (``TrainingArguments`` + the loss
  settings), :class:`DeRTaTrainer`, :func:`train_derta`; :class:`AsFTConfig`, :class:`AsFTArguments`,
  :class:`AsFTTrainer`, :func:`train_asft`; :class:`TrainConfig`, :func:`load_recipe`;
* evaluation: :func:`evaluate` (returns the ``results.json`` dictionary);
* models: :func:`load_model_and_tokenizer`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> module it lives in
_EXPORTS = {
    "DeRTaConfig": "safeft.derta.trainer",
    "DeRTaArguments": "safeft.derta.arguments",
    "DeRTaTrainer": "safeft.derta.trainer",
    "train_derta": "safeft.derta.trainer",
    "AsFTConfig": "safeft.asft.trainer",
    "AsFTArguments": "safeft.asft.arguments",
    "AsFTTrainer": "safeft.asft.trainer",
    "train_asft": "safeft.asft.trainer",
    "TrainConfig": "safeft.training.base",
    "load_recipe": "safeft.config",
    "ConfigError": "safeft.config",
    "evaluate": "safeft.api",
    "load_model_and_tokenizer": "safeft.models",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'safeft' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
