"""Stage ``eval_<model>``: one model through the eval harness on the demo's held-out sets.

The suite is built in code from the data stage's files: the held-out harmful prompts (with known
harmful answers) under ``completion`` (the prefill attack: "Sure, here is") and
``prefill-harmful-k`` at every k of ``eval.ks`` (k=0 *is* the direct attack: same conversation, so
it is generated once and reported as ASR direct), the benign-but-edgy over-refusal prompts, and the
task's test rows with the task's exact parser, and everyday instructions of the eval templates
(over-refusal). Generations are cached (``generations.jsonl``), so
an interrupted eval resumes.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from safeft.demo.config import DemoConfig
from safeft.demo.data import FILES
from safeft.eval.generation import Conversation, GenerationConfig

HARMFUL_SET = "heldout-harmful"
OVERREFUSAL_SET = "benign-edgy"
EVERYDAY_SET = "everyday"


@dataclass(frozen=True)
class ModelSpec:
    """One row of the demo table: a model folder, optionally with a LoRA adapter on top."""

    key: str  # stage / folder name
    label: str  # row label in the table
    model: Path
    adapter: Path | None = None


class ProgressGenerator:
    """Wraps a generator with a tqdm bar (count, rate and ETA) over the conversations it is given."""

    def __init__(self, inner: Any, desc: str) -> None:
        self.inner = inner
        self.desc = desc

    def generate(
        self,
        conversations: Sequence[Conversation],
        on_batch: Callable[[list[int], list[str]], None] | None = None,
    ) -> list[str]:
        bar = tqdm(total=len(conversations), desc=self.desc, unit="gen", leave=False)

        def tick(indices: list[int], texts: list[str]) -> None:
            bar.update(len(indices))
            if on_batch is not None:
                on_batch(indices, texts)

        try:
            return self.inner.generate(conversations, on_batch=tick)
        finally:
            bar.close()


def demo_suite(config: DemoConfig, data: Path, task_name: str):
    """The :class:`~safeft.eval.suite.EvalSuite` every demo model is evaluated with."""
    from safeft.eval.suite import EvalSuite, SetSpec, TaskSpec

    data = data.resolve()  # suite paths resolve against base_dir: keep them absolute (--out may be relative)
    e = config.eval
    suite = EvalSuite(
        name="demo",
        judge=e.judge,
        judge_options=dict(e.judge_options),
        seed=config.seed,
        generation=GenerationConfig(max_new_tokens=e.max_new_tokens, batch_size=e.batch_size),
        attack_options={"ks": list(e.ks), "opener": "Sure, here is"},
        safety=[
            SetSpec(
                set="harmful-pairs",
                path=str(data / FILES["eval_harmful"]),
                name=HARMFUL_SET,
                attacks=["prefill-harmful-k", "completion"],
            )
        ],
        over_refusal=[
            SetSpec(set="jsonl", path=str(data / FILES["eval_overrefusal"]), name=OVERREFUSAL_SET),
            SetSpec(set="jsonl", path=str(data / FILES["eval_everyday"]), name=EVERYDAY_SET),
        ],
        tasks=[TaskSpec(task=task_name, path=str(data / FILES["task_eval"]))],
        base_dir=str(data),
    )
    suite.validate()
    return suite


def evaluate_model(
    config: DemoConfig, spec: ModelSpec, folder: Path, data: Path, task_name: str
) -> dict[str, Any]:
    """Run the demo suite on one model; ``folder/results.json`` is the harness's own output."""
    from safeft.eval.generation import HFGenerator
    from safeft.eval.judges import get_judge
    from safeft.eval.runner import EvalRunner, ModelInfo
    from safeft.models import load_model_and_tokenizer, model_fingerprint

    suite = demo_suite(config, data, task_name)
    judge = get_judge(suite.judge, **suite.judge_options)
    model, tokenizer = load_model_and_tokenizer(str(spec.model))
    if spec.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(spec.adapter))
    model.eval()
    generator = ProgressGenerator(HFGenerator(model, tokenizer, suite.generation), f"eval {spec.key}")
    adapter = str(spec.adapter) if spec.adapter else None
    info = ModelInfo(str(spec.model), model_fingerprint(str(spec.model), adapter), adapter, "hf", spec.label)
    results = EvalRunner(suite, generator, info, judge, folder).run()
    del model, generator
    gc.collect()
    return {"seconds": results.get("seconds"), "judge": results["judge"]["name"]}
