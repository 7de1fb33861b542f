"""``safeft.evaluate``: the evaluation of ``safeft eval`` as one Python call, for notebooks.

It builds the same argument set as the command line (so defaults, validation and files written are
identical) and returns the ``results.json`` dictionary: per attack ``asr``, ``n``, ``ci95``,
``unjudged``...; ``over_refusal``; ``tasks``; ``incomplete`` (cells with no usable verdict).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any


def evaluate(
    model: Any,
    *,
    tokenizer: Any = None,
    prompts: str | Path | None = None,
    suite: str | Path | None = None,
    attacks: list[str] | str | None = None,
    judge: str | None = None,
    judge_options: dict[str, Any] | None = None,
    adapter: str | Path | None = None,
    out: str | Path | None = None,
    limit: int | None = None,
    seed: int | None = None,
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
    data_dir: str | Path | None = None,
    endpoint: str | None = None,
    report: bool = False,
    **flags: Any,
) -> dict:
    """Evaluate ``model`` and return the results dictionary (also written to ``out/results.json``).

    Args:
        model: an embedded name, a model folder, a hub id or a ``.gguf`` path (with ``endpoint``: the
            served model name), or an already loaded ``transformers`` model (then pass ``tokenizer``).
        prompts / suite: a prompt file (``.jsonl``/``.json``/``.csv`` with a ``prompt`` field) or a
            suite YAML; exactly one.
        attacks: names (list or comma-separated), e.g. ``["direct", "completion"]``.
        judge, judge_options: ``keyword`` | ``classifier`` | ``llm`` and its options.
        out: output folder (default: a new temporary folder).
        report: also write ``report.md``/``report.html``/plots.
        **flags: any other ``safeft eval`` flag by its Python name (``chat_template=...``,
            ``opener=...``, ``ks="0,5"``, ``api_key_env=...``).
    """
    from safeft.cli import build_parser
    from safeft.commands.eval import execute

    if (prompts is None) == (suite is None):
        raise ValueError("evaluate(): give exactly one of prompts= or suite=")
    loaded = not isinstance(model, str | Path)
    name = getattr(getattr(model, "config", None), "name_or_path", None) or type(model).__name__
    argv = ["eval", "--model", str(name) if loaded else str(model)]
    argv += ["--out", str(out or tempfile.mkdtemp(prefix="safeft-eval-"))]
    argv += ["--prompts", str(prompts)] if prompts is not None else ["--suite", str(suite)]
    if attacks:
        argv += ["--attacks", attacks if isinstance(attacks, str) else ",".join(attacks)]
    for key, value in (judge_options or {}).items():
        argv += ["--judge-opt", f"{key}={value}"]
    options = {
        "judge": judge,
        "adapter": adapter,
        "limit": limit,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "data_dir": data_dir,
        "endpoint": endpoint,
        **flags,
    }
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    if not report:
        argv.append("--no-report")
    args = build_parser().parse_args(argv)
    return execute(args, local_model=(model, tokenizer) if loaded else None)
