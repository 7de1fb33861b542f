"""In-process vLLM generation: ``safeft eval --backend vllm`` (``pip install 'safeft[vllm]'``, CUDA GPUs).

The same :class:`~safeft.eval.generation.Generator` protocol as ``HFGenerator``: each conversation is
rendered with the model's chat template plus the pre-filled text (:func:`render_prompt`), decoded greedily
(``temperature 0``) or sampled as :class:`GenerationConfig` says, and cut at the extra stop strings. A LoRA
adapter folder (``--adapter``) is served by vLLM itself (``LoRARequest``, no merge). vLLM schedules its own
batches, so ``batch_size`` does not apply; prompts go in chunks of :data:`CHUNK` so that an interrupted
run loses at most one chunk (the runner caches every answer it is handed).

vLLM's kernels do not reproduce HF ``generate`` bit for bit, so the backend is part of the cache
fingerprint: answers of the two backends never mix. Models: a folder (a run's ``merged/``) or a hub id;
the embedded GGUF default is refused (serve a converted folder instead).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from safeft.eval.generation import Conversation, GenerationConfig, cut_at_stop, render_prompt

#: prompts handed to vLLM at once (it batches within them); the runner caches after each chunk
CHUNK = 256
#: safeft's dtype names -> vLLM's
VLLM_DTYPES = {"auto": "auto", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise ImportError(
            "--backend vllm needs vLLM, which runs on CUDA GPUs: pip install 'safeft[vllm]' "
            "(or use --backend hf, or serve the model with `vllm serve` and pass --endpoint)"
        ) from None
    return vllm


def lora_rank(adapter: str | Path) -> int:
    """The rank ``r`` in a PEFT adapter folder's ``adapter_config.json`` (vLLM sizes its slots by it)."""
    from safeft.asft.adapter import require_adapter_dir

    return int(require_adapter_dir(adapter).get("r", 16))


class VLLMGenerator:
    """Generation with ``vllm.LLM`` in this process (see the module docstring)."""

    def __init__(
        self,
        model: str,
        config: GenerationConfig,
        adapter: str | None = None,
        chat_template: str | None = None,
        **llm_kwargs: Any,
    ) -> None:
        from safeft.models import resolve_model

        source = resolve_model(model)
        if source.kind in ("embedded", "gguf"):
            raise ValueError(
                f"--backend vllm: {model!r} is a GGUF model; give a model folder (e.g. a run's merged/) "
                "or a hub id, or use --backend hf"
            )
        if config.dtype not in VLLM_DTYPES:
            raise ValueError(f"dtype {config.dtype!r}: expected one of {', '.join(VLLM_DTYPES)}")
        vllm = _import_vllm()
        self.config = config
        kwargs: dict[str, Any] = {"model": source.path, "dtype": VLLM_DTYPES[config.dtype]}
        kwargs["seed"] = config.seed
        if source.revision:
            kwargs["revision"] = source.revision
        self.lora_request = None
        if adapter:
            kwargs.update(enable_lora=True, max_lora_rank=lora_rank(adapter))
            from vllm.lora.request import LoRARequest

            self.lora_request = LoRARequest("adapter", 1, str(adapter))
        self.llm = vllm.LLM(**{**kwargs, **llm_kwargs})
        self.tokenizer = self.llm.get_tokenizer()
        if chat_template:
            self.tokenizer.chat_template = chat_template
        self.sampling = vllm.SamplingParams(**self.sampling_kwargs())

    def sampling_kwargs(self) -> dict[str, Any]:
        """vLLM ``SamplingParams`` for this config: greedy unless sampling with temperature > 0."""
        cfg = self.config
        kwargs: dict[str, Any] = {"max_tokens": cfg.max_new_tokens, "temperature": 0.0}
        if cfg.do_sample and cfg.temperature > 0:
            kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
        if cfg.stop:
            kwargs["stop"] = list(cfg.stop)
        return kwargs

    def generate(
        self,
        conversations: Sequence[Conversation],
        on_batch: Callable[[list[int], list[str]], None] | None = None,
    ) -> list[str]:
        """Continuations of ``conversations`` in input order."""
        prompts = [render_prompt(self.tokenizer, c) for c in conversations]
        texts: list[str] = []
        for start in range(0, len(prompts), CHUNK):
            outputs = self.llm.generate(
                prompts[start : start + CHUNK], self.sampling, lora_request=self.lora_request, use_tqdm=False
            )
            chunk = [cut_at_stop(o.outputs[0].text, self.config.stop) for o in outputs]
            texts += chunk
            if on_batch is not None:
                on_batch(list(range(start, start + len(chunk))), chunk)
        return texts


def vllm_fingerprint(model: str, adapter: str | None, chat_template: str | None) -> str:
    """The cache fingerprint of a vLLM-served model: the model's (as for HF) + the backend's name."""
    from safeft.models import model_fingerprint

    key = f"{model_fingerprint(model, adapter)}|vllm|{chat_template or ''}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]
