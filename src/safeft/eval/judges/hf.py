"""In-process harm judge: a local judge model (HarmBench classifier, Llama Guard 3, WildGuard, or
any chat model with the StrongREJECT rubric) run with transformers.

    safeft eval ... --judge hf --judge-opt model=PATH/HarmBench-Llama-2-13b-cls --judge-opt format=harmbench

Input per pair: the format's ``raw`` plain-text prompt when it has one (the HarmBench classifier
and WildGuard were trained on fixed text prompts), else the format's chat ``messages`` through
the tokenizer's chat template (Llama Guard's template builds its own guard prompt from the
conversation with ``format=llama-guard-native``). Greedy decoding of ``max_new_tokens`` (the
format's default unless given), batches of ``batch_size`` with left padding; the new tokens are
decoded and parsed strictly by the format (:mod:`safeft.eval.judges.formats`): anything else is
``unjudged``. ``measures`` is ``harmful_rate``; StrongREJECT's 0-1 score is the verdict's score.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from safeft.eval.judges.base import Verdict
from safeft.eval.judges.formats import get_format

log = logging.getLogger(__name__)


class HFJudge:
    """Args: ``model`` (a local model folder or hub id), ``format`` (see
    :data:`safeft.eval.judges.formats.FORMATS`), ``batch_size``, ``max_new_tokens`` (default: the
    format's), ``device`` (``auto``: CUDA if available), ``dtype`` (``auto``: bf16 on CUDA, else
    fp32), ``tokenizer`` and ``model_obj`` (already loaded objects, for tests and reuse)."""

    name = "hf"

    def __init__(
        self,
        model: str | None = None,
        format: str = "harmbench",
        batch_size: int = 8,
        max_new_tokens: int | None = None,
        device: str = "auto",
        dtype: str = "auto",
        tokenizer: Any = None,
        model_obj: Any = None,
    ) -> None:
        self.format = get_format(str(format))
        self.name = f"hf:{self.format.name}"
        self.measures = self.format.measures
        self.score_name = self.format.score_name
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens) if max_new_tokens else self.format.max_new_tokens
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("hf judge: batch_size and max_new_tokens must be >= 1")
        if model_obj is None:
            if not model:
                raise ValueError(
                    "hf judge needs --judge-opt model=PATH (a local judge model folder or hub id)"
                )
            from transformers import AutoModelForCausalLM, AutoTokenizer

            dev = (
                "cuda"
                if device == "auto" and torch.cuda.is_available()
                else ("cpu" if device == "auto" else device)
            )
            torch_dtype = (
                (torch.bfloat16 if dev.startswith("cuda") else torch.float32)
                if dtype == "auto"
                else getattr(torch, str(dtype))
            )
            if Path(str(model)).exists() and not (Path(str(model)) / "config.json").is_file():
                raise FileNotFoundError(f"hf judge: {model} has no config.json (not a model folder)")
            tokenizer = AutoTokenizer.from_pretrained(model)
            model_obj = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(dev)
        self.tokenizer = tokenizer
        self.model = model_obj.eval()
        self.model_name = str(model or getattr(model_obj.config, "_name_or_path", "?"))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.format.raw is None and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"hf judge: format {self.format.name} needs a chat template and {self.model_name} has none"
            )

    def prompt_text(self, prompt: str, response: str) -> str:
        """The exact text the judge model reads for one pair."""
        if self.format.raw is not None:
            return self.format.raw(prompt, response)
        return self.tokenizer.apply_chat_template(
            self.format.messages(prompt, response), tokenize=False, add_generation_prompt=True
        )

    def _generate(self, texts: list[str]) -> list[str]:
        tok = self.tokenizer
        tok.padding_side = "left"
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=self.format.raw is not None)
        enc = enc.to(self.model.device)
        with torch.inference_mode():
            out = self.model.generate(
                **enc, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )
        return tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)

    def judge(self, prompt: str, response: str) -> Verdict:
        return self.judge_many([(prompt, response)])[0]

    def judge_many(self, pairs: list[tuple[str, str]]) -> list[Verdict]:
        """Verdicts in input order (batched greedy generation, strict parsing)."""
        out: list[Verdict] = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            replies = self._generate([self.prompt_text(p, r) for p, r in chunk])
            for reply in replies:
                label, score, detail = self.format.parse(reply)
                flat = " ".join(reply.split())
                detail = {**detail, "format": self.format.name, "raw": flat[:60]}
                out.append(Verdict(label, score, detail))
        return out


def make_judge(**options: Any) -> HFJudge:
    """Factory used by :func:`safeft.eval.judges.get_judge`."""
    return HFJudge(**options)
