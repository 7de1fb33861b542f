"""Batched, deterministic generation with Hugging Face models.

A :class:`Conversation` is a list of chat messages plus an optional *prefill*: text placed at the
start of the assistant turn (the completion / prefill attacks). The prompt string is

    tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + prefill

tokenised with ``add_special_tokens=False`` (the template already holds any BOS). Generators return
only the newly generated continuation, never the prompt or the prefill.

:class:`HFGenerator` batches prompts sorted by token length (longest first, so each batch pads
little), pads on the left (so every row's last prompt token sits at the same position and the KV
cache grows in lock-step), decodes greedily by default under ``torch.inference_mode`` and puts the
answers back in input order. With greedy decoding in float32 the batched outputs equal the
one-at-a-time outputs (tested). ``bf16_autocast`` runs the forward passes under CPU bfloat16
autocast; it is off by default because bfloat16 rounding can flip near-tied greedy choices, so
outputs then differ from float32 ones (and from other batch shapes) — switch it on only for speed
where the CPU has native bf16 (AVX512-BF16 / AMX) and report it with the results.

On accelerators: ``device`` (default: this process's GPU if there is one, else the CPU) is where
:class:`HFGenerator` moves the model before generating (models already dispatched over devices with a
``device_map`` or loaded in 4 bits stay where they are); ``dtype`` (``auto`` = bf16 on a GPU that has
it, else fp32) is the dtype the loader (``safeft eval``) loads the weights in. A dtype other than fp32
changes outputs, so it is part of the cache key; the device is not.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

log = logging.getLogger(__name__)


@dataclass
class Conversation:
    """Chat messages (``{"role", "content"}``) and text pre-filled at the start of the reply."""

    messages: list[dict]
    prefill: str = ""

    def to_dict(self) -> dict:
        return {"messages": self.messages, "prefill": self.prefill}

    @classmethod
    def from_dict(cls, data: dict) -> Conversation:
        return cls(messages=list(data["messages"]), prefill=data.get("prefill", ""))

    @classmethod
    def user(cls, text: str, prefill: str = "", system: str | None = None) -> Conversation:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": text})
        return cls(messages, prefill)


@dataclass
class GenerationConfig:
    """Decoding settings. Everything but ``batch_size`` changes outputs, so it keys the cache."""

    max_new_tokens: int = 128
    batch_size: int = 16
    do_sample: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    bf16_autocast: bool = False
    stop: list[str] = field(default_factory=list)  # extra stop strings, cut from the output
    device: str | None = None  # cpu | cuda | cuda:N | mps; None: the GPU if there is one, else the CPU
    dtype: str = "auto"  # weights as loaded by safeft eval: auto | bf16 | fp16 | fp32

    def cache_key(self) -> dict[str, Any]:
        """The fields that change what is generated (batch size does not, by design)."""
        from safeft.models import dtype_name, resolve_dtype

        key = dataclasses.asdict(self)
        key.pop("batch_size")
        key.pop("device")
        dtype = resolve_dtype(key.pop("dtype"))
        if dtype != torch.float32:  # fp32 keys stay as they were before dtype existed
            key["dtype"] = dtype_name(dtype)
        if not self.do_sample:
            key.pop("temperature")
            key.pop("top_p")
            key.pop("seed")
        return key


class Generator(Protocol):
    """Anything that turns conversations into continuations, in order.

    ``on_batch(indices, texts)``, when given, is called as results become available (the runner
    appends them to its cache there, so an interrupted run loses at most one batch).
    """

    def generate(
        self,
        conversations: Sequence[Conversation],
        on_batch: Callable[[list[int], list[str]], None] | None = None,
    ) -> list[str]: ...


def render_prompt(tokenizer, conversation: Conversation) -> str:
    """Chat-template text of the conversation, ending with the generation prompt and the prefill."""
    text = tokenizer.apply_chat_template(conversation.messages, add_generation_prompt=True, tokenize=False)
    return text + conversation.prefill


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Truncate ``text`` at the earliest of the stop strings."""
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if s and 0 <= i < cut:
            cut = i
    return text[:cut]


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class HFGenerator:
    """Batched generation with a (possibly PEFT-wrapped) causal LM; see the module docstring."""

    def __init__(self, model, tokenizer, config: GenerationConfig | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or GenerationConfig()
        move_to_device(model, self.config.device)
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else tokenizer.eos_token_id
        if self.pad_token_id is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token")
        self.eos_token_ids = self._eos_ids()

    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        gen_cfg = getattr(self.model, "generation_config", None)
        eos = getattr(gen_cfg, "eos_token_id", None) if gen_cfg is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(int(e) for e in eos)
        return sorted(ids)

    def encode(self, conversations: Sequence[Conversation]) -> list[list[int]]:
        return [
            self.tokenizer(render_prompt(self.tokenizer, c), add_special_tokens=False)["input_ids"]
            for c in conversations
        ]

    def generate(
        self,
        conversations: Sequence[Conversation],
        on_batch: Callable[[list[int], list[str]], None] | None = None,
    ) -> list[str]:
        """Continuations of ``conversations`` in input order.

        ``on_batch(indices, texts)`` is called after each batch (used to append to the cache as
        generations are produced, so an interrupted run loses at most one batch).
        """
        if not conversations:
            return []
        encoded = self.encode(conversations)
        outputs: list[str | None] = [None] * len(conversations)
        for batch in length_sorted_batches([len(e) for e in encoded], self.config.batch_size):
            texts = self._generate_batch([encoded[i] for i in batch])
            for i, text in zip(batch, texts, strict=True):
                outputs[i] = text
            if on_batch is not None:
                on_batch(batch, texts)
        return [o or "" for o in outputs]

    def _generation_kwargs(self) -> dict[str, Any]:
        from transformers import GenerationConfig as HFGenerationConfig

        cfg = self.config
        sampling = cfg.do_sample and cfg.temperature > 0
        kwargs: dict[str, Any] = {
            "max_new_tokens": cfg.max_new_tokens,
            "do_sample": sampling,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_ids or None,
            "use_cache": True,
        }
        if sampling:
            kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p)
        # A fresh config so that sampling defaults saved with the model (temperature, top_k...)
        # neither warn nor leak into greedy decoding.
        return {"generation_config": HFGenerationConfig(**kwargs)}

    def _generate_batch(self, batch: list[list[int]]) -> list[str]:
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        device = _model_device(self.model)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        if self.config.do_sample:
            torch.manual_seed(self.config.seed)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.config.bf16_autocast)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), autocast:
                # synced_gpus=False: this process alone generates with a whole model (rank 0's check in a
                # ZeRO-3 run would otherwise wait forever for ranks that are not generating)
                out = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    synced_gpus=False,
                    **self._generation_kwargs(),
                )
        finally:
            if was_training:
                self.model.train()
        new_tokens = out[:, width:].tolist()
        texts = []
        for tokens in new_tokens:
            tokens = _strip_after_eos(tokens, self.eos_token_ids)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            texts.append(cut_at_stop(text, self.config.stop))
        return texts


def _strip_after_eos(tokens: list[int], eos_ids: Sequence[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return tokens[:i]
    return tokens


def move_to_device(model, device: str | torch.device | None = None) -> torch.device:
    """Move ``model`` to ``device`` (default: :func:`safeft.models.default_device`) unless it is spread
    over devices by a ``device_map`` or quantised (those cannot move); returns where its weights are."""
    from safeft.models import default_device

    target = _parse_device(device) if device else default_device()
    dispatched = bool(getattr(model, "hf_device_map", None))
    quantised = getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    if not dispatched and not quantised and _model_device(model) != target:
        log.info("moving the model to %s for generation", target)
        model.to(target)
    return _model_device(model)


def _parse_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device, or a ValueError saying what is accepted / missing."""
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r}: expected cpu, cuda, cuda:N, mps or xpu") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: torch sees no CUDA GPU on this machine (use cpu)")
    if target.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine (use cpu)")
    return target


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")
