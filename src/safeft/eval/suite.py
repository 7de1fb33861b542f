"""Evaluation suites: a YAML file naming prompt sets, attacks, over-refusal sets and tasks.

```yaml
name: default
data_dir: ../../shared/data      # relative to this file; $SAFEFT_DATA_DIR or --data-dir override it
judge: keyword
limit: 50                        # per set, unless the set gives its own; --limit overrides all
seed: 0
generation: {max_new_tokens: 96, batch_size: 16}
attack_options: {ks: [0, 5, 10, 20, 40], opener: "Sure, here is"}
safety:                          # ASR per attack
  - {set: advbench, path: advbench/harmful_behaviors.csv, attacks: [direct, completion]}
over_refusal:                    # refusal rate per category (XSTest: safe / unsafe)
  - {set: xstest, path: xstest/xstest_prompts.csv}
tasks:                           # accuracy with exact parsers
  - {task: gsm8k, path: gsm8k_openai/test.jsonl, limit: 20, shots: 0}
```
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from safeft.config import ConfigError, from_dict
from safeft.data.records import read_utf8
from safeft.eval.attacks import check_attack_names
from safeft.eval.generation import GenerationConfig
from safeft.eval.prompts import PROMPT_SETS, expand_path
from safeft.eval.tasks import get_task


@dataclass
class SetSpec:
    set: str
    path: str | None = None
    name: str | None = None  # label in results; defaults to the set name (or the file stem)
    attacks: list[str] = field(default_factory=lambda: ["direct"])
    limit: int | None = None
    options: dict = field(default_factory=dict)  # loader options: prompt_field, id_field, split...
    optional: bool = False  # skipped (with a warning, listed in results) when its file is missing

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.set in ("jsonl", "json", "csv", "derta") and self.path:
            return Path(self.path).stem
        return self.set


@dataclass
class TaskSpec:
    task: str
    path: str
    limit: int | None = None
    shots: int = 0
    optional: bool = False  # skipped (with a warning, listed in results) when its file is missing


@dataclass
class EvalSuite:
    name: str = "custom"
    data_dir: str | None = None
    judge: str = "keyword"
    judge_options: dict = field(default_factory=dict)
    limit: int | None = None
    seed: int = 0
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    attack_options: dict = field(default_factory=dict)
    safety: list[SetSpec] = field(default_factory=list)
    over_refusal: list[SetSpec] = field(default_factory=list)
    tasks: list[TaskSpec] = field(default_factory=list)
    #: folder that relative paths start from (set by the loader, not read from YAML)
    base_dir: str = "."
    #: optional sets / tasks left out because their files are missing (set by the loader)
    skipped: list[str] = field(default_factory=list)

    def asked(self, limit: int | None = None) -> dict[str, Any]:
        """What a run of this suite asks, as ``results.json`` records it under ``config``: the sets, the
        over-refusal sets and the tasks with their options, the attack options, and the prompts per set
        (``limit``, a run's ``--limit``, else the suite's)."""
        return {
            "limit": limit if limit is not None else self.limit,
            "attack_options": self.attack_options,
            "sets": [asdict(s) for s in self.safety],
            "over_refusal_sets": [asdict(s) for s in self.over_refusal],
            "tasks": [asdict(t) for t in self.tasks],
        }

    def drop_missing_optional(self) -> None:
        """Leave out ``optional: true`` sets and tasks whose file is missing and has no installed
        copy (:func:`safeft.eval.prompts.wheel_fallback`), with a warning; record them in
        :attr:`skipped`. A missing file of a set that is not optional still fails when loaded."""
        import logging

        from safeft.eval.prompts import wheel_fallback

        def missing(set_name: str, path: str | None) -> bool:
            if not path or set_name in ("hub", "safeft"):
                return False
            resolved = self.resolve(path)
            return not resolved.exists() and wheel_fallback(set_name, resolved) is None

        for group in (self.safety, self.over_refusal):
            for spec in list(group):
                if spec.optional and missing(spec.set, spec.path):
                    group.remove(spec)
                    self.skipped.append(f"{spec.label} ({self.resolve(spec.path or '')} not found)")
        for task in list(self.tasks):
            if task.optional and not self.resolve(task.path).exists():
                self.tasks.remove(task)
                self.skipped.append(f"task {task.task} ({self.resolve(task.path)} not found)")
        for item in self.skipped:
            logging.getLogger(__name__).warning("suite %s: skipped optional %s", self.name, item)

    def validate(self) -> None:
        for spec in [*self.safety, *self.over_refusal]:
            if spec.set not in PROMPT_SETS:
                raise ConfigError(
                    f"unknown prompt set {spec.set!r}; valid sets: {', '.join(sorted(PROMPT_SETS))}"
                )
            check_attack_names(spec.attacks)
        for task in self.tasks:
            get_task(task.task)
        labels = [s.label for s in self.safety]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ConfigError(f"safety sets share the label(s) {dupes}; give each a distinct 'name:'")

    def data_folder(self) -> str | None:
        """The resolved ``data_dir`` (where the ``safeft`` set finds sources that only the data folder
        holds, e.g. ``derta_malicious``), or None."""
        return str(expand_path(self.data_dir, Path(self.base_dir))) if self.data_dir else None

    def resolve(self, path: str) -> Path:
        """A set/task path: ``$VARS`` expanded, relative to ``data_dir`` (itself relative to the suite)."""
        return expand_path(path, Path(self.data_folder() or self.base_dir))


def load_suite(path: str | Path, data_dir: str | None = None) -> EvalSuite:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"suite file not found: {path}")
    try:
        data: Any = yaml.safe_load(read_utf8(path, "a suite YAML"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a suite must be a YAML mapping")
    data.pop("base_dir", None)
    data.pop("skipped", None)
    suite = from_dict(EvalSuite, data, where=str(path))
    suite.base_dir = str(path.parent.resolve())
    templates = suite.attack_options.get("templates")
    if templates:  # attack files live next to the suite, not in the data folder
        suite.attack_options["templates"] = str(expand_path(str(templates), path.parent.resolve()))
    data_dir = data_dir or os.environ.get("SAFEFT_DATA_DIR")
    if data_dir:
        suite.data_dir = str(Path(data_dir).expanduser().resolve())
    suite.validate()
    suite.drop_missing_optional()
    return suite


def prompts_suite(
    path: str, prompt_field: str = "prompt", attacks: list[str] | None = None, kind: str = "harmful"
) -> EvalSuite:
    """The one-set suite behind ``--prompts FILE``: a bare JSONL/JSON/CSV file of prompts. ``kind``
    ``harmful`` asks them under ``attacks`` and reports the share answered (attack success);
    ``benign`` asks them directly and reports the share refused (over-refusal)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in ("jsonl", "json", "csv"):
        raise ConfigError(f"--prompts {path}: expected a .jsonl, .json or .csv file")
    if kind not in ("harmful", "benign"):
        raise ConfigError(f"--prompts-kind must be 'harmful' or 'benign', got {kind!r}")
    if kind == "benign" and attacks:
        raise ConfigError(
            "--attacks applies to harmful prompts; benign prompts (--prompts-kind benign) are asked directly"
        )
    options = {"prompt_field": prompt_field}
    spec = SetSpec(set=suffix, path=str(Path(path).resolve()), attacks=attacks or ["direct"], options=options)
    suite = EvalSuite(
        name=f"prompts:{Path(path).name}",
        safety=[spec] if kind == "harmful" else [],
        over_refusal=[spec] if kind == "benign" else [],
    )
    suite.validate()
    return suite
